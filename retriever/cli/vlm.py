"""`retriever ask`, `retriever caption` and `retriever locate`: a vision-language model over the
index or a photo (retriever/vlm/)."""

from __future__ import annotations

import json
import sys
from typing import Callable

import click

from retriever.cli.options import EXIT_INTERRUPTED, device_option, filter_options, home_dir, index_options, pop_filters, reports_errors
from retriever.cli.output import ProgressReporter, duration, shown


def vlm_option(fn: Callable) -> Callable:
    return click.option(
        "--vlm", "vlm_spec", metavar="MODEL",
        help="Vision-language model: a local folder, or a Hugging Face id (SmolVLM, llava-hf/..., Qwen/Qwen2-VL-...) "
             "taken from the local cache, else downloaded if the hub answers within 3 s.  "
             "[default: HuggingFaceTB/SmolVLM-256M-Instruct on CPU, HuggingFaceTB/SmolVLM-Instruct on CUDA]",
    )(fn)


def no_vlm_adapter_option(fn: Callable) -> Callable:
    return click.option(
        "--no-vlm-adapter", "no_vlm_adapter", is_flag=True,
        help="Run the vision-language model as published, without the adapter `retriever finetune-vlm` "
             "trained for it in this index.",
    )(fn)


def load_vlm_for_command(vlm_spec: str | None, device: str, say: Callable[[str], None], boxes: bool = False,
                         adapter_from=None):
    """The model a command asked for, with one line on stderr while it loads (CPU loads take seconds).
    boxes: it must write boxes (a NoGroundingError before it loads, when its config says it cannot).
    adapter_from: an index folder whose fine-tuned adapter for this model is applied (finetune-vlm);
    a line says so, or why the index's adapters were not used."""
    from retriever.vlm.model import check_weights, load_vlm, resolve_device, resolve_model

    check_weights(vlm_spec, device)  # no weights: fail within seconds, before importing torch
    device = resolve_device(device)
    model_id, folder = resolve_model(vlm_spec, device)
    if boxes:
        check_boxes(model_id, device, folder)
    say(f"loading {model_id} on {device} ...")
    vlm = load_vlm(model_id, device, adapter_from=adapter_from)
    if vlm.adapter:
        say(f"with the fine-tuned adapter in {shown(vlm.adapter['folder'])} ({vlm.adapter.get('examples')} pairs, "
            f"{vlm.adapter.get('created_at')}; --no-vlm-adapter: without it)")
    if vlm.adapter_note:
        say(f"note: {vlm.adapter_note}")
    return vlm


def adapter_folder_of(vlm) -> str | None:
    """Where the fine-tuned adapter the model runs with lies (JSON's vlm_adapter), or None."""
    return vlm.adapter["folder"] if getattr(vlm, "adapter", None) else None


def check_boxes(vlm_spec: str | None, device: str, folder=None) -> None:
    """Refuse, before anything slow, a model that writes no boxes, when its config (a folder, the
    cache) or retriever's table of known models says what it is; else it is checked once loaded."""
    from retriever.vlm.grounding import require_grounding
    from retriever.vlm.model import locate_model, model_type_of
    from retriever.vlm.models import known

    model_id = vlm_spec
    if folder is None:
        model_id, folder = locate_model(vlm_spec, "cpu" if device == "auto" else device)
    model_type = model_type_of(folder) or getattr(known(model_id), "family", None)
    if model_type is not None:
        require_grounding(model_type, model_id)


# -- ask --------------------------------------------------------------------------------------------


@click.command()
@click.argument("question", nargs=-1, required=True)
@click.option("--image", "image_paths", multiple=True, metavar="PATH",
              help="Ask about this photo file instead of searching the index (repeatable: the photos are "
                   "numbered in the order given).")
@index_options
@click.option("-k", "--top", type=click.IntRange(1, 16), default=4, show_default=True,
              help="How many of the best-matching photos the model is shown.")
@filter_options
@vlm_option
@device_option
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="Longest answer, in tokens.")
@click.option("--boxes", is_flag=True,
              help="Also ask where: the boxes the model gives for what its answer mentions, each on its photo "
                   "(box: [x0, y0, x1, y1] in the photo's pixels, and label). Needs a model that writes boxes "
                   "(Qwen2-VL, Qwen2.5-VL, Qwen3-VL).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: question, answer, citations, cited_paths, photos (n, cited, path, score, "
                   "id, ..., with --boxes: boxes, width, height), model, prompt_tokens, seconds.")
@no_vlm_adapter_option
@click.option("-v", "--verbose", is_flag=True, help="Say which model ran, its image tokens per photo, and the time.")
@reports_errors
def ask(question, image_paths, home, index_name, top, vlm_spec, device, max_new_tokens, boxes, as_json, verbose,
        no_vlm_adapter, **kwargs):
    """Answer QUESTION from your photos: the k photos that match it best are shown to a
    vision-language model in one chat, numbered, and the answer cites them by number.

    Prints the answer, then the photos it was given (* = cited): `1* 0.2731 path`. Frames of
    one video are given together, in time order. With --image, no search: the question is
    about the given files (visual question answering). Filters are those of search.

    \b
      retriever ask "what colour was the car at the beach?"
      retriever ask "which receipt is from a restaurant?" -k 8 --after 2024-01
      retriever ask --image IMG_2041.jpg "what does the sign say?"
      retriever ask "where did we eat?" --json | jq -r .cited_paths[]
      retriever ask --boxes "where is the dog?" --vlm Qwen/Qwen2-VL-2B-Instruct

    With a fine-tuned adapter of the model in the index (`retriever finetune-vlm`), the model
    runs with it, also with --image; --no-vlm-adapter runs it as published.
    """
    from retriever.index import Index
    from retriever.vlm.ask import ask_about

    say = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    text = " ".join(question).strip()
    if not text:
        raise click.ClickException("empty question: say what to ask")
    filters = pop_filters(kwargs)
    if image_paths:
        if filters.describe():
            raise click.ClickException("--image asks about the given files: search filters do not apply")
        import os

        for path in image_paths:
            if not os.path.isfile(path):
                raise click.ClickException(f"no such image file: {path}")
        home_folder = home_dir(home)
        adapter_from = None if no_vlm_adapter or not Index.exists(home_folder, index_name) else home_folder / index_name
        vlm = load_vlm_for_command(vlm_spec, device, say, boxes, adapter_from)
        result = ask_about(vlm, text, list(image_paths), max_new_tokens, boxes=boxes)
    else:
        from retriever.api import open as open_collection

        with open_collection(home_dir(home), index_name, device=device) as collection:
            adapter_from = None if no_vlm_adapter else collection.folder
            from retriever.vlm.model import check_weights

            check_weights(vlm_spec, device)  # no weights: fail before loading the encoder and searching
            if boxes:
                check_boxes(vlm_spec, device)
            hits = collection.text(text, top, filters)
            if not hits:
                empty = collection.is_empty()
                reason = "the index is empty" if empty else "nothing passes " + "; ".join(filters.describe())
                raise click.ClickException(f"no photos to ask about: {reason}")
        vlm = load_vlm_for_command(vlm_spec, device, say, boxes, adapter_from)
        result = ask_about(vlm, text, hits, max_new_tokens, boxes=boxes)
    if as_json:
        out = {**result.as_dict(), "vlm_adapter": adapter_folder_of(vlm)}
        click.echo(shown(json.dumps(out, ensure_ascii=False)))
        return
    _print_answer(result, with_scores=not image_paths)
    for label, reason in result.skipped:
        click.echo(f"skipped {shown(label)}: {reason}", err=True)
    if verbose:
        click.echo(f"model {vlm.model_id} ({vlm.family}, {vlm.device}, {vlm.dtype}"
                   f"{', fine-tuned adapter' if vlm.adapter else ''}); "
                   f"{vlm.image_tokens_per_photo} image tokens per photo ({vlm.image_policy}); "
                   f"{result.prompt_tokens} prompt tokens; {result.seconds:.1f}s", err=True)


def _print_answer(result, with_scores: bool) -> None:
    from retriever.render.thumbnails import display_text

    lines = result.answer.splitlines() or ["(no answer)"]
    click.echo("\n".join(display_text(line) for line in lines))  # control characters shown as U+FFFD
    click.echo()
    for photo in result.photos:
        mark = "*" if photo.cited else " "
        score = f"{photo.hit.score:.4f}  " if with_scores and photo.hit is not None else ""
        click.echo(f"{photo.number:>3}{mark} {score}{display_text(photo.label)}")
        for b in photo.boxes or []:
            click.echo(f"       box: [{', '.join(f'{v:.0f}' for v in b.box)}]  {display_text(b.label)}")


# -- caption ----------------------------------------------------------------------------------------


@click.command()
@index_options
@vlm_option
@device_option
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Caption at most N photos this run.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Photos per forward pass.  [default: 4 on CPU, 16 on CUDA]")
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=60, show_default=True,
              help="Longest caption, in tokens.")
@click.option("--replace", is_flag=True,
              help="Also caption again the photos captioned by another model (or by this one without the "
                   "index's current fine-tuned adapter of it).")
@click.option("--frames", is_flag=True, help="Also caption every sampled video frame (one caption each).")
@click.option("--show", is_flag=True, help="Print the stored captions (path, then caption) and run nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="The summary as one JSON object (with --show: one object per caption).")
@no_vlm_adapter_option
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@reports_errors
def caption(home, index_name, vlm_spec, device, limit, batch_size, max_new_tokens, replace, frames, show, as_json,
            no_vlm_adapter, quiet):
    """Write a one-sentence caption of each photo into the index, with a vision-language model.

    Captions and file names are keyword-searchable (SQLite FTS5), so search can combine word
    matches with the embedding ranking. Runs are incremental: only photos without a caption
    are done (new ones, and edited ones: a caption goes with the content it describes); no
    model is loaded when there is nothing to do. Work is committed batch by batch: after
    Ctrl-C or a kill, run the same command again to resume. Indexing can run meanwhile.

    \b
      retriever caption
      retriever caption --vlm ~/models/SmolVLM-256M-Instruct --limit 100
      retriever caption --show | grep -i receipt

    With a fine-tuned adapter of the model in the index (`retriever finetune-vlm`), captions
    are written with it; --no-vlm-adapter writes them with the model as published.
    """
    from retriever.cli.options import stop_on_sigterm
    from retriever.index import Index
    from retriever.vlm.captions import caption_counts, pending_items, run_captions

    with Index.open(home_dir(home), index_name) as idx:
        if show:
            _show_captions(idx, as_json)
            return
        from retriever.vlm.model import check_weights, resolve_device, resolve_model

        check_weights(vlm_spec, device)
        device = resolve_device(device)
        model_id, folder = resolve_model(vlm_spec, device)
        recorded = model_id  # with the fine-tuned adapter: its date too, so that --replace redoes the others
        if not no_vlm_adapter:
            from retriever.vlm.adapters import recorded_model

            recorded = recorded_model(idx.folder, model_id, folder)
        todo = len(pending_items(idx.catalog, recorded, replace=replace, frames=frames, limit=limit))
        say = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
        if todo:
            say(f"{todo} photos to caption")
        stop_on_sigterm()
        progress = ProgressReporter(enabled=not quiet, verb="captioning", past="captioned", unit="photo")
        loaded = []  # the model, once run_captions loads it (only when there is work)

        def load():
            adapter_from = None if no_vlm_adapter else idx.folder
            loaded.append(load_vlm_for_command(model_id, device, say, adapter_from=adapter_from))
            return loaded[0]

        try:
            summary = run_captions(idx, load, model=recorded,
                                   replace=replace, frames=frames, limit=limit, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, on_progress=progress.callback)
        finally:
            progress.close()
        counts = caption_counts(idx.catalog, frames=frames)
    if as_json:
        adapter = adapter_folder_of(loaded[0]) if loaded else None
        click.echo(json.dumps({**summary.as_dict(), "model": recorded, "vlm_adapter": adapter, **counts}))
    else:
        rate = f", {summary.seconds / summary.captioned:.2f} s/photo" if summary.captioned else ""
        click.echo(f"captioned {summary.captioned}, failed {summary.failed} in {duration(summary.seconds)}{rate}; "
                   f"{counts['with_caption']} of {counts['items']} photos have captions (model {recorded})", err=True)
        for label, reason in summary.failures[:10]:
            click.echo(f"  failed: {shown(label)}: {reason}", err=True)
        for note in summary.notices:
            click.echo(f"  note: {note}", err=True)
    if summary.interrupted:
        click.echo(f"interrupted: {summary.captioned} captions from this run are saved; run the same command "
                   "again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _show_captions(idx, as_json: bool) -> None:
    from retriever.render.thumbnails import display_text
    from retriever.vlm.captions import all_captions

    count = 0
    for row in all_captions(idx.catalog):
        count += 1
        if as_json:
            click.echo(shown(json.dumps(row, ensure_ascii=False)))
        else:
            click.echo(f"{display_text(row['label'])}\t{display_text(row['caption'])}")
    if not count and not as_json:
        click.echo("no captions yet: run `retriever caption`", err=True)


# -- locate -----------------------------------------------------------------------------------------


@click.command()
@click.argument("query")
@click.argument("path")
@click.option("--vlm", "vlm_spec", metavar="MODEL",
              help="A vision-language model that writes boxes: Florence-2, PaliGemma, Qwen2-VL, Qwen2.5-VL or "
                   "Qwen3-VL (a local folder, or a Hugging Face id: the local cache, else downloaded if the hub "
                   "answers within 3 s).  [default: florence-community/Florence-2-base]")
@device_option
@click.option("--max-new-tokens", type=click.IntRange(1, 1024), default=128, show_default=True,
              help="Longest answer, in tokens (a box with its label is 10-25).")
@click.option("--draw", "draw_path", type=click.Path(dir_okay=False), metavar="OUT.jpg",
              help="Also write the photo with the boxes drawn and labelled (.jpg, .png or .webp).")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object: query, path, width, height, boxes ([{"box": [x0, y0, x1, y1], "label"}] in '
                   "the photo's pixels after EXIF orientation), answer (the model's text), model, seconds.")
@click.option("-v", "--verbose", is_flag=True, help="Also print the model's answer, the model and the time.")
@reports_errors
def locate(query, path, vlm_spec, device, max_new_tokens, draw_path, as_json, verbose):
    """Where QUERY is in the photo at PATH: the boxes a vision-language model that can point
    (Florence-2, PaliGemma, Qwen2-VL) gives for the phrase.

    Prints one box a line, x0 y0 x1 y1 in the photo's pixels (after EXIF orientation) and its
    label; none when the model finds nothing. A model whose family writes no boxes (SmolVLM,
    LLaVA) is refused with the list of those that do.

    \b
      retriever locate "the red car" IMG_2041.jpg
      retriever locate "dog ; ball" IMG_2041.jpg --vlm ~/models/paligemma2-3b-mix-224 --json
      retriever locate "the keys" IMG_2041.jpg --draw keys.jpg
    """
    from retriever.vlm.locate import check_query, draw_boxes, locate as locate_phrase
    from retriever.vlm.models import DEFAULT_LOCATE

    import os

    say = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    check_query(query)
    if not os.path.isfile(path):
        raise click.ClickException(f"no such image file: {path}")
    vlm = load_vlm_for_command(vlm_spec or DEFAULT_LOCATE, device, say, boxes=True)
    found = locate_phrase(vlm, query, path, max_new_tokens=max_new_tokens)
    if draw_path:
        draw_boxes(path, found.boxes, draw_path)
    if as_json:
        click.echo(shown(json.dumps(found.as_dict(), ensure_ascii=False)))
        return
    _print_boxes(found, verbose)
    if draw_path:
        click.echo(f"drew {len(found.boxes)} boxes: {shown(draw_path)}", err=True)


def _print_boxes(found, verbose: bool) -> None:
    from retriever.render.thumbnails import display_text

    if found.boxes:
        click.echo(f"{'x0':>7} {'y0':>7} {'x1':>7} {'y1':>7}  label")
    for b in found.boxes:
        x0, y0, x1, y1 = b.box
        click.echo(f"{x0:>7.0f} {y0:>7.0f} {x1:>7.0f} {y1:>7.0f}  {display_text(b.label)}")
    if not found.boxes:
        click.echo(f"no box for {display_text(found.query)!r} in {display_text(found.path)}", err=True)
    if verbose:
        answer = display_text(" ".join(found.answer.split()))[:500]
        click.echo(f"answer: {answer or '(empty)'}", err=True)
        click.echo(f"model {found.model} ({found.family}); photo {found.width}x{found.height}; "
                   f"{found.seconds:.1f}s", err=True)


COMMANDS = [ask, caption, locate]
