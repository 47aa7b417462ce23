"""`retriever cache list|prune`: the shared model cache (one ONNX export per model)."""

from __future__ import annotations

import json

import click

from retriever.cli.options import cache_option, reports_errors
from retriever.cli.output import shown


@click.group()
def cache() -> None:
    """The model cache: each model's ONNX export (and its measured indexing speed), made once per
    machine and shared by every index of the model. Entries are checked (sizes, hashes) before
    use; a damaged one is made again by the next `retriever index` of a new index or
    `retriever optimize`.
    """


@cache.command("list")
@cache_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
@reports_errors
def cache_list(cache_dir, as_json):
    """Entries with their model, size, and the indexes that use them."""
    from retriever.onnx.cache import ModelCache

    store = ModelCache(cache_dir)
    entries = store.entries()
    for e in entries:
        if as_json:
            click.echo(shown(json.dumps(e, ensure_ascii=False)))
            continue
        state = "" if e["intact"] else "  (damaged: made again when next needed)"
        refused = "" if e["ok"] or e["ok"] is None else "  (export refused for this model)"
        click.echo(f"{e['name']}  {e['model_id']}  {e['bytes'] / 1e6:.1f} MB{state}{refused}")
        for user in e["users"]:
            click.echo(f"  used by {shown(user)}")
        if not e["users"]:
            click.echo("  used by no index (retriever cache prune removes it)")
    if not entries and not as_json:
        click.echo(f"the model cache {shown(str(store.root))} is empty", err=True)


@cache.command("prune")
@cache_option
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the entries removed and the bytes freed.")
@reports_errors
def cache_prune(cache_dir, dry_run, as_json):
    """Remove the entries no index uses, damaged ones, and what killed exports left behind."""
    from retriever.onnx.cache import ModelCache

    removed = ModelCache(cache_dir).prune(dry_run=dry_run)
    freed = sum(e["bytes"] for e in removed)
    if as_json:
        click.echo(json.dumps({"removed": [e["name"] for e in removed], "bytes": freed, "dry_run": dry_run}))
        return
    verb = "would remove" if dry_run else "removed"
    for e in removed:
        click.echo(f"{verb} {e['name']} ({e['model_id']}, {e['bytes'] / 1e6:.1f} MB)", err=True)
    click.echo(f"{verb} {len(removed)} entries, {freed / 1e6:.1f} MB", err=True)


COMMANDS = [cache]
