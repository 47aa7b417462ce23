"""`retriever duplicates`: exact copies and near-duplicates across an index."""

from __future__ import annotations

import json

import click

from retriever.cli.options import home_dir, index_options, reports_errors
from retriever.cli.output import shown


@click.command()
@index_options
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=None, metavar="T",
              help="Cosine similarity two photos need to be near-duplicates.  "
                   "[default: by model family: 0.95 for the offline encoder, 0.94 for open_clip models]")
@click.option("--exact-only", is_flag=True,
              help="Only byte-identical copies (same fingerprint): loads no model and no vector index.")
@click.option("--min-size", type=click.IntRange(min=2), default=2, show_default=True, metavar="N",
              help="Only groups of at least N files.")
@click.option("--no-guard", is_flag=True,
              help="Plain connected components. By default every member of a group must be a "
                   "near-duplicate of the group's central photo, so chains A~B~C cannot join photos far apart.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per group: kind, size, members (path, score, size, width, height, ...), "
                   "pairs [i, j, score].")
@reports_errors
def duplicates(home, index_name, threshold, exact_only, min_size, no_guard, as_json):
    """Groups of duplicate photos: exact copies, and near-duplicates (resized, re-encoded,
    cropped or lightly edited copies) found from the stored vectors.

    Nothing is decoded and no model is loaded: exact copies come from the files' fingerprints,
    near-duplicates from a range search over the vectors the index already holds. Each member is
    shown with its best score inside its group, largest first (most pixels, then most bytes, then
    oldest): the first is the one to keep if you keep one. A video takes part as a whole file
    (never with its own frames, never with still images). Nothing is deleted.

    \b
      retriever duplicates
      retriever duplicates --threshold 0.95 --json | jq -r '.members[1:][].path'
      retriever duplicates --exact-only
    """
    from retriever.duplicates import find_duplicates
    from retriever.index import Index

    with Index.open(home_dir(home), index_name) as idx:
        report = find_duplicates(idx, threshold, exact_only=exact_only, min_size=min_size, guard=not no_guard)
    for n, group in enumerate(report.groups):
        if as_json:
            click.echo(shown(json.dumps(group.as_dict(), ensure_ascii=False)))
            continue
        if n:
            click.echo()
        _print_group(group)
    click.echo(_summary(report), err=True)


def _print_group(group) -> None:
    if group.kind == "exact":
        click.echo(f"exact copies: {len(group.members)} files, {_bytes(group.reclaimable_bytes)} reclaimable")
    else:
        click.echo(f"near-duplicates: {len(group.members)} files, best {group.best:.4f}")
    for m in group.members:
        w, h = m.meta.get("width"), m.meta.get("height")
        dims = f"{w}x{h}" if w and h else "?"
        extra = []
        if m.frames is not None:
            extra.append(f"video, {m.frames} frames")
        if m.copies:
            extra.append(f"+{len(m.copies)} exact {'copy' if len(m.copies) == 1 else 'copies'}")
        note = f"  ({'; '.join(extra)})" if extra else ""
        click.echo(f"  {m.score:.4f}  {dims:>11}  {_bytes(m.size):>9}  {shown(m.path)}{note}")


def _summary(report) -> str:
    if report.files == 0:
        return "the index is empty: run `retriever index PATH` first"
    threshold = "" if report.threshold is None else f" (threshold {report.threshold:g})"
    if not report.groups:
        what = "exact copies" if report.threshold is None else "duplicates"
        return f"no {what} among {report.files} files{threshold}"
    n = len(report.groups)
    text = (
        f"{n} {'group' if n == 1 else 'groups'} ({len(report.exact)} exact, {len(report.near)} near) "
        f"holding {report.files_in_groups} of {report.files} files"
    )
    if report.reclaimable_bytes:
        text += f"; removing the exact copies would free {_bytes(report.reclaimable_bytes)}"
    return text + threshold


def _bytes(n: int) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    size, i = float(n), 0
    while size >= 1000 and i < len(units) - 1:
        size, i = size / 1000, i + 1
    return f"{n} B" if i == 0 else f"{size:.1f} {units[i]}"


COMMANDS = [duplicates]
