"""`retriever adapt`: fit, show or remove the collection's adapter (retriever/adapter.py)."""

from __future__ import annotations

import json

import click

from retriever.cli.options import home_dir, index_options, reports_errors
from retriever.cli.output import shown
from retriever.errors import RetrieverError


@click.command("adapt")
@click.option("--folders-as-labels", is_flag=True,
              help="Folder names count as labels too: each folder's name, its photos (camera and download "
                   "folders, and names without letters, are skipped).")
@click.option("--no-concepts", is_flag=True, help="Leave the concepts out of the labels.")
@click.option("--no-tags", is_flag=True, help="Leave the tag labels out.")
@click.option("--no-captions", is_flag=True, help="Leave the captions out.")
@click.option("--status", "show_status", is_flag=True,
              help="Show the adapter in use (what it was fitted from, its check) instead of fitting one.")
@click.option("--remove", is_flag=True, help="Delete the adapter: searches are zero-shot again.")
@index_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@reports_errors
def adapt(folders_as_labels, no_concepts, no_tags, no_captions, show_status, remove, home, index_name, as_json,
          quiet):
    """Fit a small adapter that bends text queries toward what this collection's labels mean (concepts, confirmed tags, folder names): applied to queries on the fly, no photo re-encoded.

    \b
      retriever adapt                         from your concepts, tag labels and captions
      retriever adapt --folders-as-labels     folder names count as labels too
      retriever adapt --status                the adapter in use and what it was fitted from
      retriever adapt --remove                delete it: searches are zero-shot again
      retriever search "rex" --no-adapter     one search without it

    The labels: each concept (its name and the photos that show it), each tag label of your own
    (`retriever tag --labels`) or one you corrected with `retriever untag` (its photos, without
    the ones you removed it from), each caption (`retriever caption`) with its photo, and with
    --folders-as-labels each folder's name with its photos. Tags of the built-in vocabulary are
    not your labels and are left out.

    The adapter is a matrix stored beside the catalog. It moves a text query toward the photos
    of the labels it is close to and holds everyday queries where they are; no photo is
    re-encoded and the vector index is not rebuilt. Before it is saved, it is checked on labels
    and photos kept out of its fit (mAP of each label's query, before and after: shown). Searches
    use it from the next query; fit it again after adding labels. An adapter of another model
    is ignored (--status says so).
    """
    from retriever.adapter import adapter_status, fit_index, remove_adapter
    from retriever.index import Index

    fit_options = folders_as_labels or no_concepts or no_tags or no_captions
    if show_status and remove:
        raise RetrieverError("use --status or --remove, not both")
    if (show_status or remove) and fit_options:
        raise RetrieverError(f"--{'status' if show_status else 'remove'} takes no label options")
    with Index.open(home_dir(home), index_name) as idx:
        if show_status:
            _print_status(adapter_status(idx), as_json)
            return
        if remove:
            removed = remove_adapter(idx)
            if as_json:
                click.echo(json.dumps({"index": idx.name, "removed": removed}))
            else:
                click.echo("adapter removed: searches are zero-shot again" if removed else "no adapter to remove",
                           err=True)
            return
        sources = [name for name, off in (("concepts", no_concepts), ("tags", no_tags),
                                          ("folders", not folders_as_labels), ("captions", no_captions)) if not off]
        if not sources:
            raise RetrieverError("every label source is switched off: drop a --no-... option")
        say = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))

        def load_encoder():
            say(f"loading {idx.model_id} for the label texts ...")
            return idx.load_encoder("cpu")

        report = fit_index(idx, load_encoder, sources=sources, say=say)
    if as_json:
        click.echo(json.dumps({"index": idx.name, **report.as_dict()}))
        return
    _print_fit(idx.name, report.as_dict())


def _print_fit(name: str, fit: dict) -> None:
    click.echo(f"adapter v{fit['version']} for index {name!r} ({fit['model_id']}): {fit['labels']} labels, "
               f"{fit['photos']} photos, {fit['seconds']:.1f}s")
    click.echo("  from: " + ", ".join(f"{n} {source}" for source, n in fit["sources"].items()))
    if fit["skipped"]:
        click.echo("  left out: " + ", ".join(f"{n} {why}" for why, n in fit["skipped"].items()))
    _print_check(fit.get("check") or {})
    click.echo("searches use it from the next query (--no-adapter: one without it; `retriever adapt --remove` "
               "deletes it)")


def _print_check(check: dict) -> None:
    rows = [(title, check.get(key)) for title, key in (("fitted labels, photos kept back", "fitted"),
                                                       ("labels kept out of the fit", "held_out"))]
    rows = [(title, r) for title, r in rows if r]
    if not rows:
        click.echo("  held-out check: too few labels and photos to keep some back")
        return
    click.echo(f"  held-out check, mAP of each label's query among {check['pool']} photos, before -> after:")
    for title, r in rows:
        click.echo(f"    {title:34} {r['map_before']:.3f} -> {r['map_after']:.3f}  "
                   f"({r['labels']} labels, {r['photos']} photos)")


def _print_status(status: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(status))
        return
    if status["state"] == "none":
        click.echo(status["reason"])
        return
    version = f"adapter v{status['version']}" if "version" in status else "adapter"
    if status["state"] == "ignored":
        click.echo(f"{version} {shown(status['path'])}: {status['reason']}")
        return
    sources = ", ".join(f"{n} {source}" for source, n in (status.get("sources") or {}).items())
    click.echo(f"{version}: in use; fitted {status.get('fitted_at')} for {status.get('model_id')} from {sources} "
               f"({status.get('labels')} labels, {status.get('photos')} photos)")
    _print_check(status.get("check") or {})


COMMANDS = [adapt]
