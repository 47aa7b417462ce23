"""The command line: thin click commands over the library. The only module that prints or exits.

Heavy packages (torch, open_clip, faiss) are imported inside commands, never at start-up, so
`retriever --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from retriever import __version__
from retriever.errors import RetrieverError

EXIT_INTERRUPTED = 130


# -- option bundles ---------------------------------------------------------------------------------


def index_options(fn: Callable) -> Callable:
    fn = click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="RETRIEVER_HOME",
        show_envvar=True,
        help="Folder holding the indexes.  [default: ./indexes]",
    )(fn)
    fn = click.option(
        "--index", "index_name", default="default", show_default=True, metavar="NAME", help="Which index to use."
    )(fn)
    return fn


def device_option(fn: Callable) -> Callable:
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Where the model runs; auto = CUDA when available (fp16 autocast there).",
    )(fn)


def output_options(fn: Callable) -> Callable:
    fn = click.option("-k", "--top", "top", type=click.IntRange(min=1), default=10, show_default=True,
                      help="How many results.")(fn)
    fn = click.option("--json", "as_json", is_flag=True,
                      help="One JSON object per line: rank, score, id, path and the catalog's metadata.")(fn)
    fn = click.option("--paths", "paths_only", is_flag=True, help="Only the paths, one per line.")(fn)
    fn = click.option("-0", "--null", "null_sep", is_flag=True,
                      help="Paths separated by NUL instead of newlines (for xargs -0); implies --paths.")(fn)
    return fn


def filter_options(fn: Callable) -> Callable:
    """Catalog filters of search and similar (retriever.filters)."""
    options = [
        click.option("--after", metavar="DATE",
                     help="Taken on or after DATE: 2023, 2023-06, 2023-06-15, 2023-06-15T18:30, today, "
                          "yesterday, or an age (30d, 2w, 6m, 1y). The date is EXIF DateTimeOriginal, else "
                          "the file's modification time."),
        click.option("--before", metavar="DATE", help="Taken before DATE (exclusive): --before 2024 ends with 2023."),
        click.option("--in", "folders", multiple=True, metavar="FOLDER",
                     help="Only photos under FOLDER (repeatable: any of them)."),
        click.option("--camera", "cameras", multiple=True, metavar="TEXT",
                     help="Camera make or model contains TEXT, case-insensitive (repeatable: any)."),
        click.option("--near", metavar="LAT,LON", help="Only photos with GPS within --within km of LAT,LON."),
        click.option("--within", "within_km", type=float, metavar="KM",
                     help="Radius for --near in km.  [default: 1]"),
        click.option("--format", "formats", multiple=True, metavar="NAME",
                     help="File format: jpeg, png, heif, webp, tiff, gif, avif, a RAW extension (cr2, nef, ...) "
                          "or video (repeatable: any)."),
        click.option("--min-size", metavar="N|WxH",
                     help="At least N pixels on both sides, or WxH in either orientation (1920x1080)."),
        click.option("--tag", "tags", multiple=True, metavar="LABEL",
                     help="Only photos tagged LABEL by `retriever tag` (repeatable: all of them)."),
        click.option("--min-score", type=float, metavar="S",
                     help="Drop results scoring below S (cosine similarity); may return fewer than -k."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _filters(kwargs: dict[str, Any]):
    """Pops the filter_options values from a command's kwargs; a Filters value."""
    from retriever.filters import build

    values = {name: kwargs.pop(name) for name in FILTER_NAMES}
    return build(**values)


FILTER_NAMES = ("after", "before", "folders", "cameras", "near", "within_km", "formats", "min_size", "tags", "min_score")


def _ask_server(home, index_name, top, keywords, verbose, kind, words, filter_values):
    """Hits from a `retriever serve` running for this index, or None to search here: no server,
    one that does not answer, or a query it cannot take (image terms in search). A server's
    refusal of the query itself (a bad date...) is the same error a local search gives."""
    from retriever.serve.client import RemoteError, RemoteUnsupported, find_server, hits_from_dicts, index_folder, remote_query

    info = find_server(index_folder(home, index_name))
    if info is None:
        return None
    try:
        hits = hits_from_dicts(remote_query(info, words, top, filter_values, kind=kind, keywords=keywords))
    except RemoteUnsupported as exc:
        if verbose:
            click.echo(f"server not used: {exc}; searching here", err=True)
        return None
    except RemoteError as exc:
        if exc.status is not None and exc.status not in (401, 500, 501):
            raise
        if exc.status == 401 or verbose:
            click.echo(f"the server at {info.url} did not answer ({exc}); searching here", err=True)
        return None
    if verbose:
        click.echo(f"answered by the server at {info.url} (pid {info.pid})", err=True)
    return hits


def _rerank(hits, terms, rerank_with, device, top):
    from retriever.cli.vlm import load_vlm_for_command
    from retriever.query import keyword_text_of
    from retriever.vlm.rerank import rerank

    vlm_spec, rerank_top = rerank_with
    vlm = load_vlm_for_command(vlm_spec, device, lambda m: click.echo(m, err=True))
    progress = ProgressReporter(verb="reranking", past="reranked", unit="photo")
    try:
        reranked = rerank(vlm, keyword_text_of(terms), hits, top_n=rerank_top, on_progress=progress.callback)
    finally:
        progress.close()
    from dataclasses import replace

    return [replace(r.as_hit(), rank=i) for i, r in enumerate(reranked[:top], start=1)]


def view_options(fn: Callable) -> Callable:
    """-v, --preview and --html of search and similar."""
    fn = click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
                      help="Also write the results as a self-contained HTML page (thumbnails, scores, metadata).")(fn)
    fn = click.option("--preview-protocol", type=click.Choice(["auto", "kitty", "iterm2", "sixel", "off"]),
                      help="Force the terminal image protocol of --preview (implies --preview).  "
                           "[default: $RETRIEVER_PREVIEW, else detected]")(fn)
    fn = click.option("--preview", is_flag=True,
                      help="Show thumbnails inline in terminals that can (kitty, Ghostty, iTerm2, WezTerm, "
                           "foot, Konsole, sixel terminals); plain lines elsewhere and when piped.")(fn)
    fn = click.option("-v", "--verbose", is_flag=True,
                      help="Say how the query was read and filtered (on stderr).")(fn)
    return fn


def daemon_options(fn: Callable) -> Callable:
    """--daemon/--no-daemon and --daemon-idle of search and similar (retriever.daemon.server)."""
    fn = click.option("--daemon-idle", type=click.FloatRange(min=1), envvar="RETRIEVER_DAEMON_IDLE", show_envvar=True,
                      metavar="SECONDS",
                      help="Seconds the warm daemon waits for the next query before it exits.  [default: 300]")(fn)
    fn = click.option("--daemon/--no-daemon", "daemon", default=None,
                      help="Answer through a warm background process for this index (started after the first "
                           "local search, gone after --daemon-idle seconds without queries).  "
                           "[default: on, unless RETRIEVER_NO_DAEMON=1]")(fn)
    return fn


# Set only inside a warm daemon (retriever.daemon.server): (index folder, device, idle seconds) -> its
# loaded Searcher, so that a search or similar run there uses the warm model and index. It raises
# what the daemon turns into "run this locally" when the command names another index or device.
warm_searcher: Callable[..., Any] | None = None


def reports_errors(fn: Callable) -> Callable:
    """Library errors become one-line messages and exit 1; Ctrl-C exits 130 without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RetrieverError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


# -- the group --------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="retriever")
def main() -> None:
    """Search your photos by text or by example, locally.

    \b
      retriever index ~/Pictures              embed every photo, remember it
      retriever search "a dog on the beach"   text -> image
      retriever similar ~/Downloads/x.jpg     image -> image
      retriever search beach - people --after 2023 --in ~/Pictures/trips
      retriever duplicates                    exact copies and near-duplicates
      retriever tag --labels "cat,dog,beach"  zero-shot tags, then search --tag
      retriever status                        where the index lives, its model, counts

    Indexes live in ./indexes (or --home / $RETRIEVER_HOME), one folder per --index NAME.
    """
    import warnings

    # Huge images are refused by retriever's own pixel limit, with a recorded reason.
    warnings.filterwarnings("ignore", message=".*decompression bomb.*")


def _home(home: Path | None) -> Path:
    from retriever.index import resolve_home

    return resolve_home(home)


# -- index ------------------------------------------------------------------------------------------


@main.command()
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
              help="When creating an index, export its model to ONNX (checked against PyTorch) so that "
                   "searches never import torch; skipped without pip install 'retriever[onnx]'.")
@click.option("--backend", type=click.Choice(["auto", "onnx", "pytorch"]), default="auto", show_default=True,
              help="What runs the model on the CPU. auto: ONNX Runtime when the ONNX export measured it "
                   "faster than PyTorch for this model (`retriever status` shows the figures), else "
                   "PyTorch; PyTorch always on CUDA.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where files are decoded and encoded: this machine's pools, or a Ray cluster "
                   "(pip install 'retriever[distributed]'); the catalog and checkpoints stay here.")
@click.option("--address", metavar="ADDRESS",
              help="With --engine ray: the cluster to join ('auto': the one `ray start` runs here; "
                   "ray://HOST:10001).  [default: start Ray on this machine]")
@click.option("--ray-actors", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="With --engine ray: encoder actors; 0 = one per GPU, or one per 8 CPUs without GPUs.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@reports_errors
def index(paths, home, index_name, model, pretrained, device, batch_size, workers, pool, retry_failed,
          video_every, exclude, include_hidden, onnx, backend, engine, address, ray_actors, as_json, quiet):
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
    from retriever.index import open_for_writing
    from retriever.indexer import IndexOptions, run_index
    from retriever.remote import is_url

    home_dir = _home(home)
    if engine != "ray" and (address or ray_actors):
        raise RetrieverError("--address and --ray-actors go with --engine ray")
    if engine == "ray":
        from retriever.distributed import import_ray

        import_ray()  # before any model is loaded: a missing extra is said at once
    for p in paths:
        if not is_url(p) and not Path(p).expanduser().exists():
            raise RetrieverError(f"no such file or folder: {p}")
    _stop_on_sigterm()
    from retriever.index import Index

    say = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    if not Index.exists(home_dir, index_name):
        say(f"creating index {index_name!r} in {home_dir}: loading the model ...")
    idx, encoder, note = open_for_writing(
        home_dir, index_name, model=model, pretrained=pretrained, device=device, batch_size=batch_size,
        onnx_export=onnx, backend=backend, on_backend=lambda why: say(f"image encoder: {why}"),
    )
    if note:
        click.echo(note, err=True)
    if callable(encoder) and not hasattr(encoder, "embed_texts"):
        load = encoder

        def encoder():
            say(f"files to read: loading {idx.model_id} ...")
            return load()

    with idx:
        reporter = ProgressReporter(enabled=not quiet)
        options = IndexOptions(include_hidden=include_hidden, exclude=exclude, workers=workers, pool=pool,
                               retry_failed=retry_failed, video_every_s=video_every)
        try:
            if engine == "ray":
                from retriever.distributed import RayOptions, run_index_ray

                ray_options = RayOptions(address=address, actors=ray_actors)
                summary = reporter.run(lambda cb: run_index_ray(idx, encoder, list(paths), options, ray_options,
                                                                on_progress=cb, device=device,
                                                                batch_size=batch_size))
            else:
                summary = reporter.run(lambda cb: run_index(idx, encoder, list(paths), options, on_progress=cb))
        finally:
            reporter.close()
        status = idx.status()
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


def _stop_on_sigterm() -> None:
    """cron, systemd and `kill` send SIGTERM: stop at a checkpoint, as for Ctrl-C."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


class ProgressReporter:
    """Progress of a long job on stderr (indexing, captioning, reranking): a bar with the rate and
    ETA on a terminal, a plain log line every few seconds otherwise. `update` takes a
    retriever.indexer.Progress (done, total, failed, rate)."""

    LOG_EVERY_S = 5.0

    def __init__(self, enabled: bool = True, *, verb: str = "indexing", past: str = "indexed", unit: str = "img"):
        self.enabled = enabled
        self.verb, self.past, self.unit = verb, past, unit
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.last_log = 0.0
        self.last_done = 0

    @property
    def callback(self):
        return self.update if self.enabled else None

    def run(self, job):
        return job(self.callback)

    def update(self, p) -> None:
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=p.total, unit=self.unit, desc=self.verb, file=sys.stderr, dynamic_ncols=True)
            self.bar.update(p.done - self.last_done)
            if p.failed:
                self.bar.set_postfix(failed=p.failed)
            self.last_done = p.done
            return
        now = time.monotonic()
        if now - self.last_log >= self.LOG_EVERY_S or p.done == p.total:
            self.last_log = now
            eta = (p.total - p.done) / p.rate if p.rate > 0 else float("nan")
            click.echo(
                f"{self.past} {p.done}/{p.total} ({100 * p.done / max(p.total, 1):.0f}%), {p.failed} failed, "
                f"{p.rate:.1f} {self.unit}/s, ETA {_duration(eta)}",
                err=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _print_index_summary(summary, status: dict[str, Any]) -> None:
    rate = f", {summary.indexed / summary.seconds:.1f} img/s" if summary.seconds > 0 and summary.indexed else ""
    if rate and summary.backend:
        rate += f" on {summary.backend}"
    click.echo(
        f"indexed {summary.indexed} (added {summary.added}, updated {summary.updated}), "
        f"moved {summary.moved}, unchanged {summary.unchanged}, removed {summary.removed}, "
        f"failed {summary.failed} in {_duration(summary.seconds)}{rate}",
        err=True,
    )
    for path, reason in summary.failures[:10]:
        click.echo(f"  failed: {_shown(path)}: {reason}", err=True)
    for warning in summary.warnings[:10]:
        click.echo(f"  warning: {_shown(warning)}", err=True)
    if len(summary.failures) > 10:
        click.echo(f"  ... and {len(summary.failures) - 10} more (retriever errors)", err=True)
    click.echo(f"index {status['index']!r}: {status['images']} images, model {status['model_id']}", err=True)


@main.command()
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

    with Index.open(_home(home), index_name) as idx:
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


# -- search / similar -------------------------------------------------------------------------------


def _open_searcher(home, index_name, device, daemon_idle=None):
    """(a context manager giving the Index, its Searcher): the warm daemon's when this runs in one
    (the index stays open), else opened here."""
    from retriever.index import Index, check_name

    if warm_searcher is not None:
        import contextlib

        searcher = warm_searcher(_home(home) / check_name(index_name), device, daemon_idle)
        return contextlib.nullcontext(searcher.index), searcher
    from retriever.search import Searcher

    # one query, then exit: the catalog read without SQLAlchemy, ONNX sessions that start fast
    idx = Index.open(_home(home), index_name, read_only=True)
    return idx, Searcher(idx, device=device, one_shot=True)


def _start_daemon(home, index_name, idle) -> None:
    """After a local search: a warm daemon for the next one (unless one runs, or this is one)."""
    from retriever.daemon.client import start_daemon
    from retriever.locations import index_folder

    start_daemon(index_folder(home, index_name), idle)


def _shown(text: str) -> str:
    """For a terminal or a log: a name that is not valid UTF-8 shows replacement characters."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _print_hits(hits, as_json: bool, paths_only: bool, null_sep: bool) -> None:
    from retriever.render.terminal import hit_line  # the standard library only

    if null_sep or paths_only:
        # The exact bytes of each name, so that xargs opens the very file whatever its name.
        out = sys.stdout.buffer
        out.write(b"".join(os.fsencode(h.path) + (b"\0" if null_sep else b"\n") for h in hits))
        out.flush()
        return
    for hit in hits:
        if as_json:
            click.echo(_shown(json.dumps(hit.as_dict(), ensure_ascii=False)))
        else:
            click.echo(hit_line(hit))


QUERY_SYNTAX = """
    \b
    Combine terms with + and - (separate words), weight them with N*TERM:
      retriever search beach + ~/ref.jpg - people
      retriever search "red car" - 0.5*night
    A term naming an existing image file is an image (its look); force one
    with text:WORD or image:PATH. The query is the normalised weighted sum.
"""


@main.command()
@click.argument("query", nargs=-1, required=True)
@index_options
@output_options
@filter_options
@device_option
@click.option("--keywords/--no-keywords", default=True, show_default=True,
              help="Also match the query's words in file names and captions (SQLite FTS5), fused with the "
                   "embedding ranking; with no match the order is the embedding's.")
@click.option("--rerank", is_flag=True,
              help="Let a vision-language model rescore the best --rerank-top results: log P(yes) - log P(no) "
                   "for 'Does this photo show: QUERY?'. Needs pip install 'retriever[vlm]'.")
@click.option("--rerank-top", type=click.IntRange(1, 500), default=20, show_default=True, metavar="N",
              help="How many results --rerank rescores.")
@click.option("--vlm", "vlm_spec", metavar="MODEL",
              help="Vision-language model for --rerank: a local folder or a Hugging Face id.  "
                   "[default: HuggingFaceTB/SmolVLM-256M-Instruct on CPU, HuggingFaceTB/SmolVLM-Instruct on CUDA]")
@view_options
@daemon_options
@reports_errors
def search(query, home, index_name, top, as_json, paths_only, null_sep, device, verbose, keywords, rerank,
           rerank_top, vlm_spec, **kwargs):
    """Photos that match QUERY, best first: text, images, or both, combined.

    \b
      retriever search "a dog on the beach"
      retriever search receipt -k 50 --paths
      retriever search sunset --after 2023-06 --before 2023-09 --camera pixel
      retriever search beach + ~/ref.jpg - people --json | jq .path
    """
    from retriever.query import keyword_text_of, parse

    filter_values = {name: kwargs[name] for name in FILTER_NAMES}
    filters = _filters(kwargs)
    terms = parse(query, default="auto")
    if rerank:
        if not keyword_text_of(terms):
            raise RetrieverError("--rerank needs text in the query: the model is asked whether each photo shows it")
        from retriever.vlm.model import check_weights

        check_weights(vlm_spec, device)  # no weights: fail within seconds, before loading anything
    rerank_with = (vlm_spec, rerank_top) if rerank else None
    _run_query(terms, filters, home, index_name, top, as_json, paths_only, null_sep, device, verbose,
               keywords=keywords, rerank_with=rerank_with, remote=("search", query, filter_values), **kwargs)


search.help += QUERY_SYNTAX


@main.command()
@click.argument("images", nargs=-1, required=True)
@index_options
@output_options
@filter_options
@device_option
@view_options
@daemon_options
@reports_errors
def similar(images, home, index_name, top, as_json, paths_only, null_sep, device, verbose, **kwargs):
    """Photos that look like IMAGES (files inside or outside the collection).

    Several images are averaged; images of the collection are left out of
    the results. Terms combine as in search (here a bare word is an image):

    \b
      retriever similar a.jpg b.jpg
      retriever similar beach.jpg - text:people --in ~/Pictures/2024
    """
    from retriever.query import parse

    filter_values = {name: kwargs[name] for name in FILTER_NAMES}
    filters = _filters(kwargs)
    terms = parse(images, default="image")
    _run_query(terms, filters, home, index_name, top, as_json, paths_only, null_sep, device, verbose,
               remote=("similar", images, filter_values), **kwargs)


def _run_query(terms, filters, home, index_name, top, as_json, paths_only, null_sep, device, verbose,
               preview, preview_protocol, html_file, keywords=False, rerank_with=None, remote=None,
               daemon=None, daemon_idle=None) -> None:
    from retriever.query import describe

    if verbose:
        click.echo(f"query: {_shown(describe(terms))}", err=True)
        for condition in filters.describe():
            click.echo(f"filter: {_shown(condition)}", err=True)
    in_daemon = warm_searcher is not None
    if in_daemon and (rerank_with or preview or preview_protocol or html_file):
        from retriever.daemon.client import RunLocally

        raise RunLocally("--rerank, --preview and --html run in the client's process")
    asked_server = not (rerank_with or remote is None or in_daemon)
    hits = _ask_server(home, index_name, top, keywords, verbose, *remote) if asked_server else None
    empty_index = False
    searched_here = hits is None and not in_daemon
    if hits is None:
        idx, searcher = _open_searcher(home, index_name, device, daemon_idle)
        with idx as idx:
            fetch = max(top, rerank_with[1]) if rerank_with else top
            hits = (searcher.hybrid(terms, fetch, filters=filters) if keywords
                    else searcher.query(terms, fetch, filters=filters))
            if rerank_with:
                hits = _rerank(hits, terms, rerank_with, device, top)
            if verbose and searcher.last_strategy:
                click.echo(f"filtered search: {searcher.last_strategy}", err=True)
            if verbose and searcher.loaded_query_encoder is not None:
                encoder = searcher.loaded_query_encoder
                kind = getattr(encoder, "text_backend", None) or type(encoder).__name__
                click.echo("query encoder: " + ("ONNX Runtime, no torch" if kind == "OnnxEncoder" else f"PyTorch ({kind})"),
                           err=True)
            if verbose and in_daemon:
                click.echo(f"answered by the warm daemon (pid {os.getpid()})", err=True)
            empty_index = not hits and idx.catalog.counts()["images"] == 0
    if html_file:
        from retriever.render import html_page, write_html

        title = f"retriever: {describe(terms)}"
        conditions = "; ".join(filters.describe())
        write_html(html_file, html_page(
            hits, title=title,
            query_description=f"{describe(terms)}" + (f" ({conditions})" if conditions else "")
            + f", index {index_name!r}: {len(hits)} results",
        ))
        click.echo(f"wrote {_shown(str(html_file))} ({len(hits)} results)", err=True)
    protocol = None
    if (preview or preview_protocol) and not (as_json or paths_only or null_sep):
        from retriever.render import choose_protocol, probe_sixel

        protocol = choose_protocol(preview_protocol or "auto", os.environ, sys.stdout.isatty(), probe=probe_sixel)
    if protocol is not None:
        from retriever.render import multiplexer, preview_lines

        tmux = multiplexer(os.environ) == "tmux"
        for hit in hits:
            click.echo(preview_lines(hit, protocol, tmux=tmux))
    else:
        _print_hits(hits, as_json, paths_only, null_sep)
    if not hits and not as_json and not paths_only:
        if empty_index:
            click.echo("no results: the index is empty", err=True)
        elif filters.describe():
            click.echo("no results: nothing passes " + "; ".join(filters.describe()), err=True)
        else:
            click.echo("no results", err=True)
    if searched_here and not rerank_with:
        from retriever.daemon.client import daemon_disabled

        if daemon or (daemon is None and not daemon_disabled()):
            _start_daemon(home, index_name, daemon_idle)


# -- daemon -----------------------------------------------------------------------------------------


@main.group()
def daemon() -> None:
    """The warm query daemon of an index (see `retriever search --help`).

    The first `retriever search` or `similar` of an index starts a background process that keeps
    its model and vectors loaded; the next queries are sent to it over a Unix socket in the index
    folder and answer in a few tens of milliseconds, with the same output. It exits after
    --daemon-idle seconds without a query (default 300). Turn it off with --no-daemon or
    RETRIEVER_NO_DAEMON=1.
    """


def _daemon_info(folder) -> dict[str, Any] | None:
    from retriever.daemon.client import DaemonUnavailable, ask

    try:
        info = ask(folder, {"op": "status"}, timeout=10)
    except DaemonUnavailable:
        return None
    return info if info.get("status") == "ok" else None


@daemon.command("status")
@index_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@reports_errors
def daemon_status(home, index_name, as_json):
    """Whether a daemon runs for the index: pid, socket, uptime, queries answered."""
    from retriever.daemon.client import build_id, socket_path
    from retriever.locations import index_folder

    folder = index_folder(home, index_name)
    info = _daemon_info(folder)
    if as_json:
        out = {"running": info is not None, "folder": str(folder), "socket": socket_path(folder)}
        if info is not None:
            out.update({k: v for k, v in info.items() if k != "status"}, current_build=info.get("build") == build_id())
        click.echo(json.dumps(out))
        return
    if info is None:
        click.echo(f"no daemon runs for index {index_name!r} ({folder})")
        return
    same = info.get("build") == build_id()
    rows = [
        ("pid", info["pid"]),
        ("index", info["folder"]),
        ("socket", info["socket"]),
        ("model id", info.get("model_id")),
        ("encoder", "ONNX Runtime, no torch" if info.get("query_encoder") == "OnnxEncoder"
         else f"PyTorch ({info.get('query_encoder')})"),
        ("version", info["version"] + ("" if same else " (another build: replaced at the next search)")),
        ("started", f"{info['started_at']} ({_duration(info['uptime_s'])} ago)"),
        ("queries", info["requests"]),
        ("idle", f"{_duration(info['idle_s'])} of {_duration(info['idle_timeout_s'])}"),
        ("memory", f"{info['rss_mb']:.0f} MB resident" if info.get("rss_mb") else "?"),
    ]
    for key, value in rows:
        click.echo(f"{key:<9} {value}")


@daemon.command("stop")
@index_options
@reports_errors
def daemon_stop(home, index_name):
    """Stop the daemon of the index (the next search starts a new one)."""
    from retriever.daemon.client import DaemonUnavailable, ask, is_running
    from retriever.locations import index_folder

    folder = index_folder(home, index_name)
    try:
        answer = ask(folder, {"op": "stop"}, timeout=30)
    except DaemonUnavailable:
        click.echo(f"no daemon runs for index {index_name!r}", err=True)
        return
    deadline = time.monotonic() + 10
    while is_running(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    click.echo(f"stopped the daemon of index {index_name!r} (pid {answer.get('pid')})", err=True)


@daemon.command("start")
@index_options
@click.option("--idle", "idle_s", type=click.FloatRange(min=1), envvar="RETRIEVER_DAEMON_IDLE", show_envvar=True,
              metavar="SECONDS", help="Exit after SECONDS without a query.  [default: 300]")
@click.option("--foreground", is_flag=True, help="Run in this process until stopped (for a service manager).")
@reports_errors
def daemon_start(home, index_name, idle_s, foreground):
    """Start the daemon of the index now (searches start it by themselves)."""
    from retriever.daemon.client import DEFAULT_IDLE_S, start_daemon
    from retriever.index import Index, check_name

    home_dir = _home(home)
    Index.open(home_dir, index_name).close()  # a missing index fails here, with its message
    folder = home_dir / check_name(index_name)
    if foreground:
        from retriever.daemon.server import run_daemon

        reason = run_daemon(folder, idle_s or DEFAULT_IDLE_S, log=lambda m: click.echo(m, err=True))
        click.echo(f"stopped: {reason}", err=True)
        return
    if not start_daemon(folder, idle_s):
        info = _daemon_info(folder)
        click.echo(f"a daemon runs already for index {index_name!r}" + (f" (pid {info['pid']})" if info else ""),
                   err=True)
        return
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = _daemon_info(folder)
        if info is not None:
            click.echo(f"started the daemon of index {index_name!r} (pid {info['pid']})", err=True)
            return
        time.sleep(0.1)
    raise RetrieverError(f"the daemon did not start in 2 minutes: see {folder / 'daemon.log'}")


# -- status / errors / models -----------------------------------------------------------------------


@main.command()
@index_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@reports_errors
def status(home, index_name, as_json):
    """Where the index lives, its model, and its counts (images, vectors, failed, last run)."""
    from retriever.index import Index

    from retriever.daemon.client import is_running

    with Index.open(_home(home), index_name) as idx:
        info = idx.status()
        info["daemon"] = is_running(idx.folder)  # a warm query daemon listens for this index
    if as_json:
        click.echo(json.dumps(info))
        return
    last = info["last_run"]
    last_text = "never"
    if last:
        summary = last.get("summary") or {}
        last_text = (
            f"{last.get('finished_at') or last['started_at']} ({last['status']}: "
            f"{summary.get('indexed', 0)} indexed, {summary.get('failed', 0)} failed)"
        )
    rows = [
        ("home", info["home"]),
        ("index", info["index"]),
        ("model", " ".join(x for x in (info["model"], info["pretrained"] or "") if x)),
        ("model id", info["model_id"]),
        ("dim", info["dim"]),
        ("images", info["images"]),
        ("vectors", info["vectors"]),
        ("search", _index_kind_text(info)),
        ("tags", (f"{info['tags']['labels']} labels, {info['tags']['tagged']} images tagged, "
                  f"{info['tags']['untagged']} not yet (retriever tag)") if info.get("tags") else "none (retriever tag)"),
        ("onnx", _onnx_text(info.get("onnx"))),
        ("daemon", "running (retriever daemon status)" if info["daemon"] else "not running"),
        ("failed", f"{info['failed']}" + (" (retriever errors)" if info["failed"] else "")),
        ("created", info["created_at"]),
        ("last run", last_text),
    ]
    for key, value in rows:
        click.echo(f"{key:<10} {value}")


def _onnx_text(onnx: dict[str, Any] | None) -> str:
    if not onnx:
        return "none: queries use PyTorch (retriever optimize exports)"
    if not onnx.get("ok"):
        return f"refused: {onnx.get('reason')}; queries use PyTorch"
    diffs = ", ".join(f"{name} {d:.1e}" for name, d in (onnx.get("max_abs_diff") or {}).items() if d is not None)
    usable = "" if onnx.get("usable") else " (files missing or another model: not used)"
    text = f"text and image towers, max |diff| against PyTorch {diffs} (opset {onnx.get('opset')}){usable}"
    measured = onnx.get("indexing")
    if measured:
        text += (f"; indexing on the CPU: {'ONNX Runtime' if measured['backend'] == 'onnx' else 'PyTorch'} "
                 f"({measured['onnx_images_per_s']} against PyTorch's {measured['pytorch_images_per_s']} images/s "
                 f"at export)")
    return text


def _index_kind_text(info: dict[str, Any]) -> str:
    kind = info.get("index_type") or "flat"
    if kind == "flat":
        return "exact (flat)"
    params = info.get("index_params") or {}
    shown = kind + (" (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
    recall = info.get("index_recall_at_10")
    if recall is not None:
        shown += f", recall@10 {recall:.3f} against exact search"
    return shown


@main.command()
@index_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per failed file.")
@reports_errors
def errors(home, index_name, as_json):
    """Files that could not be indexed, with the reason. They are retried when they change."""
    from retriever.index import Index

    with Index.open(_home(home), index_name) as idx:
        failures = idx.catalog.failures()
    for f in failures:
        if as_json:
            click.echo(_shown(json.dumps({"path": f["path"], "error": f["error"], "at": f["indexed_at"]},
                                         ensure_ascii=False)))
        else:
            click.echo(f"{_shown(f['path'])}: {f['error']}")
    if not failures and not as_json:
        click.echo("no failed files", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
@reports_errors
def models(as_json):
    """Encoders available: the offline one, and every open_clip architecture with its pretrained tags."""
    from retriever.encoders import list_available_models

    for row in list_available_models():
        if as_json:
            click.echo(json.dumps(row))
        else:
            tags = ", ".join(row["pretrained"]) if row["pretrained"] else ""
            click.echo(f"{row['name']:<40} {tags or row['note']}")


# -- commands defined in their own modules ----------------------------------------------------------

from retriever.cli import duplicates as _duplicates, optimize as _optimize, serve as _serve, tags as _tags, vlm as _vlm  # noqa: E402

for _module in (_duplicates, _optimize, _serve, _tags, _vlm):
    for _command in _module.COMMANDS:
        main.add_command(_command)
