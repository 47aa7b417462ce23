"""`retriever ocr` and `retriever text`: text in photos (retriever/ocr/)."""

from __future__ import annotations

import json
import sys

import click

from retriever.cli.options import EXIT_INTERRUPTED, home_dir, index_options, reports_errors
from retriever.cli.output import ProgressReporter, duration, shown


@click.command()
@index_options
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Read at most N photos this run.")
@click.option("--frames", is_flag=True, help="Also read every sampled video frame.")
@click.option("--json", "as_json", is_flag=True, help="The summary as one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@reports_errors
def ocr(home, index_name, limit, frames, as_json, quiet):
    """Read the text in each photo of the index (OCR): signs, receipts, screenshots, documents.

    The text is stored in the index with where each line is, and becomes searchable: by word
    (`retriever search invoice` finds a receipt that says INVOICE) and by any part of it
    (`retriever search --text 0471` finds "2023-0471", ignoring case, spaces and punctuation).
    The models ship inside the rapidocr package (`pip install 'retriever[ocr]'`): nothing is
    downloaded. Runs are incremental: only photos never read, edited since, or read by another
    model are read. Work is committed in batches: after Ctrl-C or a kill, run the same command
    again to resume. Indexing can run meanwhile; `retriever index --ocr` reads new photos as it
    indexes them.

    \b
      retriever ocr
      retriever search --text 0471
      retriever text receipts/IMG_2041.jpg
    """
    from retriever.cli.options import stop_on_sigterm
    from retriever.index import Index
    from retriever.ocr.run import run_ocr, text_counts

    with Index.open(home_dir(home), index_name) as idx:
        stop_on_sigterm()
        progress = ProgressReporter(enabled=not quiet, verb="reading text", past="read text of", unit="photo")
        try:
            summary = run_ocr(idx, frames=frames, limit=limit, on_progress=progress.callback)
        finally:
            progress.close()
        counts = text_counts(idx.catalog, frames=frames)
    if as_json:
        click.echo(json.dumps({**summary.as_dict(), **counts}))
    else:
        rate = f", {summary.seconds / summary.read:.2f} s/photo" if summary.read else ""
        click.echo(f"read {summary.read} photos ({summary.with_text} with text, {summary.lines} lines), "
                   f"failed {summary.failed} in {duration(summary.seconds)}{rate}; {counts['items_read']} of "
                   f"{counts['items']} photos read, {counts['items_with_text']} with text", err=True)
        for label, reason in summary.failures[:10]:
            click.echo(f"  failed: {shown(label)}: {reason}", err=True)
    if summary.interrupted:
        click.echo(f"interrupted: the text of {summary.read} photos from this run is saved; run the same command "
                   "again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)


@click.command()
@index_options
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object: {"path", "id", "text", "lines": [{"text", "score", "box", "quad"}], "engine"}; '
                   "boxes are [x0, y0, x1, y1] in the photo's pixels (after EXIF orientation).")
@click.option("--boxes", is_flag=True, help="Each line with its box and confidence, tab-separated.")
@reports_errors
def text(home, index_name, path, as_json, boxes):
    """Print the text read in the photo at PATH (one line per text line, top to bottom).

    PATH must be indexed, and its text read (`retriever ocr`, or `retriever index --ocr`).

    \b
      retriever text receipts/IMG_2041.jpg
      retriever text --boxes screenshot.png
    """
    from retriever.errors import RetrieverError
    from retriever.files import absolute
    from retriever.index import Index
    from retriever.ocr.run import photo_text
    from retriever.render.thumbnails import display_text

    with Index.open(home_dir(home), index_name) as idx:
        full = absolute(path)
        row = idx.catalog.find_by_path(full)
        if row is None:
            raise RetrieverError(f"{shown(full)} is not in index {idx.name!r}: index it first")
        found = photo_text(idx.catalog, row["id"])
    if found is None:
        raise RetrieverError(f"the text of {shown(full)} has not been read yet: run `retriever ocr`")
    if as_json:
        click.echo(shown(json.dumps({"path": full, "id": row["id"], **found}, ensure_ascii=False)))
        return
    if not found["lines"]:
        click.echo("no text found in this photo", err=True)
    for line in found["lines"]:
        if boxes:
            box = ",".join(f"{v:g}" for v in line["box"])
            click.echo(f"{display_text(line['text'])}\t{box}\t{line['score']:.2f}")
        else:
            click.echo(display_text(line["text"]))


COMMANDS = [ocr, text]
