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
    "added": "adding to the label set (was: {previous}): tagging every image again, since a label's "
             "probability depends on the others",
    "threshold": "new threshold {threshold:g}: tagging every image again",
    "templates": "new prompt templates: tagging every image again",
    "model": "the label set was computed with another model: tagging every image again",
}


@click.command("tag")
@click.option("--labels", "labels_text", metavar="'A, B, ...'",
              help="Comma-separated labels: they replace the stored label set (or extend it, with --add).")
@click.option("--labels-file", type=click.Path(path_type=Path), metavar="FILE",
              help="Labels from a file, one a line (or comma-separated); lines starting with # are skipped.")
@click.option("--add", is_flag=True, help="Add the labels to the stored set instead of replacing it.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, metavar="P",
              help="Keep a label when its probability among the labels is at least P (the best label "
                   "is always kept); remembered with the set.  [default: 0.25]")
@index_options
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@reports_errors
def tag(labels_text, labels_file, add, threshold, home, index_name, device, as_json, quiet):
    """Tag every image with the labels it shows, by zero-shot classification.

    \b
      retriever tag --labels "cat, dog, beach, receipt"
      retriever tag --labels-file labels.txt --threshold 0.4
      retriever tag                     after `retriever index`: tags only the new images
      retriever tag --add --labels "mountain"

    Each label is scored against every image's stored vector (no photo is read again) through an
    ensemble of prompts ("a photo of a {}.", ...); the probabilities over the label set come from
    the model's own softmax scale. An image keeps each label whose probability reaches the
    threshold, and always its best one. Labels are stored lower-case. The label set is stored
    with the index: without --labels, the stored set tags the images that have no tags yet (new
    or changed since the last run). New labels, --add or a new --threshold tag every image again.
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
    elif add:
        raise RetrieverError("--add needs --labels or --labels-file")

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
            run = tag_index(idx, labels=labels, add=add, threshold=threshold, encoder=load_encoder,
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
        click.echo(_CHANGE_NOTES[run.change].format(previous=previous, threshold=run.threshold), err=True)
    click.echo(
        f"tagged {run.scored} image{'' if run.scored == 1 else 's'} in {run.seconds:.1f}s; "
        f"index {idx.name!r}: {run.tagged} tagged images, {len(run.labels)} labels, threshold {run.threshold:g}",
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

    With --image PATH: that image's tags, each with its probability, best first.
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
        click.echo("no tags yet: run `retriever tag --labels 'cat, dog, beach'`", err=True)
        return
    _print_counts({row["label"]: row["images"] for row in overview["labels"]})
    click.echo(
        f"{len(tag_set['labels'])} labels, threshold {tag_set['threshold']:g}, "
        f"{len(tag_set['templates'])} prompt templates, scale {tag_set['logit_scale']:g}, "
        f"model {tag_set['model_id']}, set {tag_set['created_at']}"
    )
    untagged = overview["untagged"]
    not_yet = f", {untagged} not yet (run `retriever tag`)" if untagged else ""
    click.echo(f"{overview['tagged']} images tagged{not_yet}")


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
            why = "it failed to index" if item["status"] != "indexed" else "not tagged yet (run `retriever tag`)"
            click.echo(f"{shown(name)}: no tags: {why}", err=True)
            continue
        if len(items) > 1:
            click.echo(shown(name))
        width = max(len(t["label"]) for t in item["tags"])
        for t in item["tags"]:
            click.echo(f"  {shown(t['label']):<{width}}  {t['score']:.3f}")


COMMANDS = [tag, tags]
