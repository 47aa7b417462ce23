"""Option bundles the commands share, and how a command's errors reach the user."""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import Any, Callable

import click

from retriever.errors import RetrieverError

EXIT_INTERRUPTED = 130


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


class DeviceType(click.ParamType):
    """auto, cpu, cuda, or cuda:N (the Nth GPU)."""

    name = "[auto|cpu|cuda|cuda:N]"

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]{1,3}", text):
            return text
        self.fail(f"{value!r} is not auto, cpu, cuda or cuda:N (N: a GPU's number, from 0)", param, ctx)


def device_option(fn: Callable) -> Callable:
    return click.option(
        "--device",
        type=DeviceType(),
        default="auto",
        show_default=True,
        help="Where the model runs: auto = CUDA when available, else the CPU; cuda:N = the Nth GPU. "
             "On CUDA in half precision: bf16 where the GPU runs it natively, else fp16.",
    )(fn)


def output_options(fn: Callable) -> Callable:
    fn = click.option("-k", "--top", "top", type=click.IntRange(min=1, max=2**31 - 1), default=10, show_default=True,
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
                     help="Only photos tagged LABEL by `retriever tag` (repeatable or comma-separated: all of them)."),
        click.option("--tag-any", "tags_any", multiple=True, metavar="A,B",
                     help="Only photos tagged with at least one of these labels (repeatable: any of all given)."),
        click.option("--no-tag", "no_tags", multiple=True, metavar="LABEL",
                     help="Leave out photos tagged LABEL (repeatable or comma-separated: none of them)."),
        click.option("--text", "texts", multiple=True, metavar="TEXT",
                     help="Only photos whose text (read by `retriever ocr`) contains TEXT: any part of a word or "
                          "number, ignoring case, accents, spaces and punctuation (--text 0471 finds 2023-0471; "
                          "repeatable: all of them)."),
        click.option("--concept", "concepts", multiple=True, metavar="NAME",
                     help="Only photos that concept NAME says yes to (`retriever concept add`; repeatable or "
                          "comma-separated: all of them). Alone, without a QUERY: those photos, ranked by the concept."),
        click.option("--min-score", type=float, metavar="S",
                     help="Drop results scoring below S (cosine similarity); may return fewer than -k."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def pop_filters(kwargs: dict[str, Any]):
    """Pops the filter_options values from a command's kwargs; a Filters value."""
    from retriever.filters import build

    values = {name: kwargs.pop(name) for name in FILTER_NAMES}
    return build(**values)


FILTER_NAMES = ("after", "before", "folders", "cameras", "near", "within_km", "formats", "min_size", "tags", "tags_any", "no_tags",
                "texts", "concepts", "min_score")


def adapter_option(fn: Callable) -> Callable:
    """--no-adapter of search and similar."""
    return click.option("--no-adapter", is_flag=True,
                        help="Text terms as the encoder reads them, without the index's adapter (`retriever adapt`).")(fn)


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


def cache_option(fn: Callable) -> Callable:
    """--cache-dir: the shared model cache (retriever.onnx.cache)."""
    return click.option(
        "--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="RETRIEVER_CACHE_DIR",
        show_envvar=True,
        help="The model cache: one ONNX export per model, shared by every index.  [default: the user's "
             "cache folder, ~/.cache/retriever]")(fn)


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



def home_dir(home: Path | None) -> Path:
    from retriever.index import resolve_home

    return resolve_home(home)


def stop_on_sigterm() -> None:
    """cron, systemd and `kill` send SIGTERM: stop at a checkpoint, as for Ctrl-C."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
