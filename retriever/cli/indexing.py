"""`retriever index` and `retriever remove`: what goes into an index."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from retriever.cli.options import (
    EXIT_INTERRUPTED,
    cache_option,
    device_option,
    home_dir,
    index_options,
    reports_errors,
    stop_on_sigterm,
)
from retriever.cli.output import ProgressReporter, duration, shown
from retriever.errors import RetrieverError


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@index_options
@click.option("--model", metavar="NAME",
              help="Encoder for a new index: 'offline', an open_clip architecture (ViT-B-32, ...), "
                   "hf-hub:ORG/REPO, local-dir:PATH, or an open_clip config .json.  "
                   "[default: ViT-B-32 if its weights are cached or the hub answers, else offline]")
@click.option("--pretrained", metavar="TAG_OR_FILE",
              help="open_clip weights: a tag (laion2b_s34b_b79k) or a local .safetensors/.bin/.pt file.")
@device_option
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward pass.  [default: 32 on CPU, 256 on CUDA]")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Decoding workers; 0 = one per core (at most 8).")
@click.option("--pool", type=click.Choice(["auto", "process", "thread"]), default="auto", show_default=True,
              help="Decode in worker processes (a crashing decoder costs only its file) or in threads "
                   "(faster when the model runs on the CPU). auto: processes on CUDA and after a run "
                   "that died, threads otherwise.")
@click.option("--retry-failed", is_flag=True, help="Read files that failed before again, even if unchanged.")
@click.option("--video-every", type=click.FloatRange(min=0.1), default=5.0, show_default=True, metavar="SECONDS",
              help="Seconds between the frames sampled from a video (at most 120 frames a video).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths matching GLOB (repeatable).")
@click.option("--include-hidden", is_flag=True, help="Also index hidden files/folders and system litter.")
@click.option("--onnx/--no-onnx", "onnx", default=True, show_default=True,
              help="When creating an index, take its model's ONNX export (checked against PyTorch) from the "
                   "model cache, exporting it there once per model, so that searches never import torch.")
@cache_option
@click.option("--backend", type=click.Choice(["auto", "onnx", "pytorch"]), default="auto", show_default=True,
              help="What runs the model on the CPU. auto: ONNX Runtime when the ONNX export measured it "
                   "faster than PyTorch for this model (`retriever status` shows the figures), else "
                   "PyTorch; PyTorch always on CUDA.")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default=None,
              help="A new index's image vectors: fp32, or int8 (the image tower's matrix products "
                   "quantized by ONNX Runtime: a transformer such as ViT-B-32 indexes 2-3x as fast on a "
                   "CPU with VNNI, a CNN such as the offline encoder no faster; vectors within a cosine "
                   "of 0.99 of fp32's, measured when the model is first quantized, see `retriever "
                   "status`). Kept for good by the index.  [default: fp32]")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where files are decoded and encoded: this machine's pools, or a Ray cluster "
                   "(pip install 'retriever[distributed]'); the catalog and checkpoints stay here.")
@click.option("--address", metavar="ADDRESS",
              help="With --engine ray: the cluster to join ('auto': the one `ray start` runs here; "
                   "ray://HOST:10001).  [default: start Ray on this machine]")
@click.option("--ray-actors", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="With --engine ray: encoder actors; 0 = one per GPU, or one per 8 CPUs without GPUs.")
@click.option("--ocr", is_flag=True,
              help="Also read the text in each photo (signs, receipts, screenshots), from the image decoded "
                   "for encoding, and then in the indexed photos not read yet: see `retriever ocr` "
                   "(pip install 'retriever[ocr]').")
@click.option("--regions", is_flag=True,
              help="Also encode region vectors, boxes on a grid over each photo, so that searches find small "
                   "things in wide shots and say where (`box`). The offline encoder pools them from one more pass "
                   "over the photo; other models encode each box's crop (about 17 more passes a photo). "
                   "`retriever optimize --regions` adds them later.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@reports_errors
def index(paths, home, index_name, model, pretrained, device, batch_size, workers, pool, retry_failed,
          video_every, exclude, include_hidden, onnx, cache_dir, backend, precision, engine, address, ray_actors,
          ocr, regions, as_json, quiet):
    """Add the photos under PATHS (folders, walked recursively, or files) to an index.

    Runs are incremental: unchanged files are not read again (no model is even loaded when
    nothing changed), changed files are re-embedded, moved, renamed and copied files reuse their
    stored vectors (found by a fingerprint of the whole file), and files that are gone are
    dropped. Files that cannot be decoded are skipped and recorded (see `retriever errors`);
    they are retried when they change, or with --retry-failed.

    Work is committed in checkpoints: after Ctrl-C, a kill or a crash, run the same command
    again to resume. The model is chosen when the index is created and kept for good.
    Formats: JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF, AVIF; camera RAW with the [raw]
    extra; videos (mp4, mov, webm, mkv, ...) with the [video] extra, as frames every few seconds.

    PATHS may be URLs (s3://bucket/photos, gs://..., file:///mnt/share) read through fsspec
    (the [distributed] extra, plus s3fs or gcsfs); the catalog keeps each file's URL as its path.
    --engine ray decodes and encodes on a Ray cluster (see the README's scaling section).
    """
    from retriever.api import NewIndex, open as open_collection
    from retriever.remote import is_url

    if engine != "ray" and (address or ray_actors):
        raise RetrieverError("--address and --ray-actors go with --engine ray")
    ray_options = None
    if engine == "ray":
        from retriever.distributed import RayOptions, import_ray

        import_ray()  # before any model is loaded: a missing extra is said at once
        ray_options = RayOptions(address=address, actors=ray_actors)
    for p in paths:
        if not p.strip():
            raise RetrieverError("an empty path was given: name the folders or files to index")
        if not is_url(p) and not Path(p).expanduser().exists():
            raise RetrieverError(f"no such file or folder: {p}")
    if ocr:
        from retriever.ocr.reader import engine_version

        engine_version()  # no rapidocr: one line naming the extra, before anything is read
    stop_on_sigterm()
    say = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    new = NewIndex(model=model, pretrained=pretrained, batch_size=batch_size, onnx_export=onnx, backend=backend,
                   precision=precision,
                   cache_dir=str(cache_dir) if cache_dir else None)
    collection = open_collection(home_dir(home), index_name, writable=True, device=device, new=new, on_message=say)
    if collection.note:
        click.echo(collection.note, err=True)
    with collection:
        reporter = ProgressReporter(enabled=not quiet)
        try:
            summary = collection.index(
                list(paths), progress=reporter.callback, engine=engine, ray=ray_options, include_hidden=include_hidden,
                exclude=exclude, workers=workers, pool=pool, retry_failed=retry_failed, video_every_s=video_every,
                ocr=ocr, regions=regions)
        finally:
            reporter.close()
        status = collection.status()
    result = {**summary.as_dict(), "index": status["index"], "model_id": status["model_id"],
              "images": status["images"], "vectors": status["vectors"]}
    if as_json:
        click.echo(json.dumps(result))
    else:
        _print_index_summary(summary, status)
    if summary.interrupted:
        click.echo(
            f"interrupted: {summary.indexed} images from this run are saved; run the same command again to resume",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)



def _print_index_summary(summary, status: dict[str, Any]) -> None:
    rate = f", {summary.indexed / summary.seconds:.1f} img/s" if summary.seconds > 0 and summary.indexed else ""
    if rate and summary.backend:
        rate += f" on {summary.backend}"
    click.echo(
        f"indexed {summary.indexed} (added {summary.added}, updated {summary.updated}), "
        f"moved {summary.moved}, unchanged {summary.unchanged}, removed {summary.removed}, "
        f"failed {summary.failed} in {duration(summary.seconds)}{rate}",
        err=True,
    )
    if summary.preparation:
        click.echo(summary.preparation, err=True)
    if summary.text_read:
        click.echo(f"read the text of {summary.text_read} photos: {summary.text_found} with text", err=True)
    if summary.region_photos:
        click.echo(f"encoded the regions of {summary.region_photos} photos: {summary.regions} regions "
                   f"({summary.regions / summary.region_photos:.1f} a photo)", err=True)
    for path, reason in summary.failures[:10]:
        click.echo(f"  failed: {shown(path)}: {reason}", err=True)
    for warning in summary.warnings[:10]:
        click.echo(f"  warning: {shown(warning)}", err=True)
    for note in summary.notices:  # a batch halved for GPU memory, a Ray cluster without GPUs
        click.echo(f"  note: {note}", err=True)
    if len(summary.failures) > 10:
        click.echo(f"  ... and {len(summary.failures) - 10} more (retriever errors)", err=True)
    click.echo(f"index {status['index']!r}: {status['images']} images, model {status['model_id']}", err=True)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@index_options
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
@reports_errors
def remove(paths, home, index_name, as_json):
    """Drop files, or whole folders, from an index (the files on disk are not touched).

    A folder that is still under an indexed root comes back at the next `retriever index` of
    that root; use --exclude there to keep it out.
    """
    from retriever.files import absolute
    from retriever.index import Index

    if any(not p.strip() for p in paths):  # absolute("") is the working directory: all of it
        raise RetrieverError("an empty path was given: name the files or folders to drop")
    with Index.open(home_dir(home), index_name) as idx:
        idx.acquire_lock()
        per_path = {p: idx.catalog.ids_under(absolute(p)) for p in paths}
        ids = sorted({i for found in per_path.values() for i in found})
        idx.remove_images(ids)
        status = idx.status()
    if as_json:
        click.echo(json.dumps({"removed": len(ids), "images": status["images"], "vectors": status["vectors"]}))
        return
    for p, found in per_path.items():
        if not found:
            click.echo(f"not in the index: {p}", err=True)
    click.echo(f"removed {len(ids)} from index {status['index']!r}; {status['images']} images left", err=True)



COMMANDS = [index, remove]
