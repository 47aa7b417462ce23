"""`retriever tag` (zero-shot tags from a label set) and `retriever tags` (what is tagged)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from retriever.cli.options import device_option, home_dir, index_options, reports_errors
from retriever.cli.output import ProgressReporter, shown
from retriever.errors import RetrieverError
from retriever.progress import Progress

_CHANGE_NOTES = {
    "new": "new label set: tagging every image",
    "labels": "replacing the label set (was: {previous}): tagging every image again",
    "added": "adding to the label set (was: {previous}): scoring every image for the new labels "
             "(the other labels' tags come out the same)",
    "threshold": "new threshold {threshold:g}: tagging every image again",
    "templates": "new prompt templates: tagging every image again",
    "calibration": "the tag rule of this model has changed since the last run: tagging every image again",
    "model": "the label set was computed with another model: tagging every image again",
}


@click.command("tag")
@click.option("--labels", "labels_text", metavar="'A, B, ...'",
              help="Comma-separated labels, added to the built-in vocabulary (alone with --only); "
                   "they replace the stored label set (or extend it, with --add).")
@click.option("--labels-file", type=click.Path(path_type=Path), metavar="FILE",
              help="Labels from a file, one a line (or comma-separated); lines starting with # are skipped.")
@click.option("--only", is_flag=True, help="Tag with the given labels alone, without the built-in vocabulary.")
@click.option("--add", is_flag=True, help="Add the labels to the stored set instead of replacing it.")
@click.option("--vocabulary", "vocabulary_only", is_flag=True,
              help="Tag with the built-in vocabulary alone, replacing the stored label set.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None, metavar="C",
              help="Keep a label when its confidence is at least C: 0.5 is the fitted decision, higher keeps "
                   "fewer and surer tags; remembered with the set.  [default: 0.5]")
@index_options
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@reports_errors
def tag(labels_text, labels_file, only, add, vocabulary_only, threshold, home, index_name, device, as_json, quiet):
    """Tag every image with the labels it shows (a built-in vocabulary, or your labels).

    \b
      retriever tag                     the built-in vocabulary: a few hundred everyday concepts
      retriever tag --labels "Rex, grandma's house"      the vocabulary and these labels
      retriever tag --labels "cat, receipt" --only       these labels alone
      retriever tag                     after `retriever index`: tags only the new images
      retriever tag --add --labels "lighthouse"
      retriever tag --vocabulary        back to the built-in vocabulary alone

    Each label is judged on its own, against a fixed background of everyday concepts: a photo
    gets a label only when the label describes it better than what photos usually show, so a
    photo may get no tag, and one label alone works. Image vectors come from the index (no photo
    is read again). Labels are stored lower-case, and the label set with the index: without
    --labels, the stored set tags the images not tagged yet (new or changed). New labels or a new
    --threshold tag every image again; tags removed with `retriever untag` stay removed.
    See the tags with `retriever tags`, filter with `retriever search ... --tag LABEL`.
    """
    from retriever.index import Index
    from retriever.tags import parse_labels, read_labels_file, tag_index

    if labels_text is not None and labels_file is not None:
        raise RetrieverError("use --labels or --labels-file, not both")
    labels = None
    if labels_text is not None:
        labels = parse_labels(labels_text)
    elif labels_file is not None:
        labels = read_labels_file(labels_file)
    elif add or only:
        raise RetrieverError(f"{'--add' if add else '--only'} needs --labels or --labels-file")
    if vocabulary_only:
        if labels is not None or add or only:
            raise RetrieverError("--vocabulary takes no labels, --add or --only")
        labels = []

    say = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    with Index.open(home_dir(home), index_name) as idx:
        idx.acquire_lock()

        def load_encoder():
            say(f"loading {idx.model_id} for the label texts ...")
            return idx.load_encoder(device)

        progress = ProgressReporter(enabled=not quiet, verb="tagging", past="tagged", log_ends=False)
        started = time.monotonic()

        def on_progress(done: int, total: int) -> None:
            progress.update(Progress(done, total, 0, time.monotonic() - started))

        try:
            run = tag_index(idx, labels=labels, only=only, add=add, threshold=threshold, encoder=load_encoder,
                            on_progress=on_progress if progress.enabled else None)
        except KeyboardInterrupt:
            progress.close()
            click.echo("interrupted: the images tagged so far are saved; run `retriever tag` again to finish",
                       err=True)
            sys.exit(130)
        progress.close()
    if as_json:
        click.echo(json.dumps({"index": idx.name, **run.as_dict()}))
        return
    if run.change is not None:
        previous = ", ".join(run.previous_labels or [])
        if len(previous) > 200:
            previous = previous[:200] + " ..."
        click.echo(_CHANGE_NOTES[run.change].format(previous=previous, threshold=run.threshold), err=True)
    vocab = " (built-in vocabulary included)" if run.vocabulary else ""
    click.echo(
        f"tagged {run.scored} image{'' if run.scored == 1 else 's'} in {run.seconds:.1f}s; "
        f"index {idx.name!r}: {run.tagged} images scored, {run.with_tags} with a tag, "
        f"{len(run.labels)} labels{vocab}, threshold {run.threshold:g}",
        err=True,
    )
    _print_counts(run.counts, err=True)


@click.command("tags")
@index_options
@click.option("--image", "image_path", metavar="PATH", help="Show the tags of this image instead, with their scores.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object (with --image: one per item, a video's frames each).")
@reports_errors
def tags(home, index_name, image_path, as_json):
    """The labels of the index with how many images have each, and the label set's settings.

    Labels that no image has are left out. With --image PATH: that image's tags, each with its
    confidence, best first.
    """
    from retriever.index import Index
    from retriever.tags import tags_of_file, tags_overview

    with Index.open(home_dir(home), index_name) as idx:
        if image_path is not None:
            _print_file_tags(tags_of_file(idx.catalog, image_path), as_json)
            return
        overview = tags_overview(idx.catalog)
    if as_json:
        click.echo(json.dumps(overview))
        return
    tag_set = overview["tag_set"]
    if tag_set is None:
        click.echo("no tags yet: run `retriever tag`", err=True)
        return
    _print_counts({row["label"]: row["images"] for row in overview["labels"]})
    vocab = ", built-in vocabulary" if tag_set["vocabulary"] else ""
    click.echo(
        f"{len(tag_set['labels'])} labels{vocab}, threshold {tag_set['threshold']:g}, "
        f"rule {tag_set['calibration']['name']}, model {tag_set['model_id']}, set {tag_set['created_at']}"
    )
    untagged = overview["untagged"]
    not_yet = f", {untagged} not yet (run `retriever tag`)" if untagged else ""
    click.echo(f"{overview['tagged']} images tagged, {overview['with_tags']} with a tag{not_yet}")


@click.command("untag")
@click.argument("path")
@click.argument("label")
@index_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@reports_errors
def untag(path, label, home, index_name, as_json):
    """Remove a wrong tag from a photo; later tagging runs never give it back.

    \b
      retriever untag ~/photos/IMG_0042.jpg cat

    PATH is an indexed file (every frame of a video). The removal is stored with the index and
    survives `retriever tag` runs, new label sets and thresholds.
    """
    from retriever.index import Index
    from retriever.tags import normalize_label, untag_in_index

    with Index.open(home_dir(home), index_name) as idx:  # one transaction: no writer lock needed
        removed = untag_in_index(idx, path, label)
    if as_json:
        click.echo(json.dumps({"path": path, "label": normalize_label(label), "removed": removed}))
        return
    what = "removed" if removed else "it had no such tag; remembered anyway:"
    click.echo(f"{what} {shown(normalize_label(label))!r} on {shown(path)}; later runs will not tag it again",
               err=True)


def _print_counts(counts: dict[str, int], err: bool = False) -> None:
    width = max((len(label) for label in counts), default=0)
    for label, n in counts.items():
        click.echo(f"  {shown(label):<{width}}  {n:>6}", err=err)


def _print_file_tags(items, as_json: bool) -> None:
    from retriever.video import format_timestamp

    for item in items:
        name = item["path"] if item["frame_ms"] is None else f"{item['path']}@{format_timestamp(item['frame_ms'])}"
        if as_json:
            click.echo(shown(json.dumps(item, ensure_ascii=False)))
            continue
        if not item["tags"]:
            why = ("it failed to index" if item["status"] != "indexed"
                   else "it shows none of the labels" if item["scored"] else "not tagged yet (run `retriever tag`)")
            click.echo(f"{shown(name)}: no tags: {why}", err=True)
            continue
        if len(items) > 1:
            click.echo(shown(name))
        width = max(len(t["label"]) for t in item["tags"])
        for t in item["tags"]:
            click.echo(f"  {shown(t['label']):<{width}}  {t['score']:.3f}")


COMMANDS = [tag, tags, untag]
