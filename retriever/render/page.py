"""A self-contained HTML page of search results: one file, no network. Thumbnails are inlined as
JPEG data URIs, the style sheet is inline, there is no script at all, and a Content-Security-Policy
forbids loading anything but those data URIs, so the page can be mailed, archived, or opened
offline, and a hostile file name cannot make it run or fetch anything. Every text from the
catalogue (paths, camera names) is escaped; bytes that are not UTF-8 show as U+FFFD. Each card
links to the original file (file://, percent-encoded from the name's exact bytes). Where a part of
the photo matched (region search), that part's box is drawn over the thumbnail by CSS alone, in
percent of the photo."""

from __future__ import annotations

import base64
import html
import io
import os
import urllib.parse
from datetime import datetime
from typing import Iterable

from retriever import __version__
from retriever.video import format_timestamp
from retriever.render.thumbnails import (DEFAULT_SIDE, RenderError, ThumbnailError, display_text, region_box,
                                         thumbnail)

JPEG_QUALITY = 85


def html_page(hits: Iterable, *, title: str, query_description: str, thumbnail_side: int = DEFAULT_SIDE) -> str:
    """The whole page as a str. hits: retriever.search.Hit objects, in rank order. A hit whose
    thumbnail cannot be made (file gone, undecodable) gets a placeholder card with the reason."""
    hits = list(hits)
    cards = "\n".join(_card(hit, thumbnail_side) for hit in hits)
    count = f"{len(hits)} result{'' if len(hits) == 1 else 's'}"
    return _PAGE.format(
        title=_text(title),
        query=_text(query_description),
        count=count,
        cards=cards or '<p class="empty">No results.</p>',
        version=_text(__version__),
        style=_STYLE,
    )


def write_html(path: str | os.PathLike, page: str) -> None:
    """Write the page to path atomically: a temporary file beside it, then a rename, so that a
    reader (a browser reloading it) never sees half a page, and an old page survives a failure.
    The new file's permissions follow the umask, as for any new file. Raises RenderError."""
    target = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(target)
    if os.path.isdir(target):
        raise RenderError(f"cannot write {display_text(target)}: it is a folder")
    data = page.encode("utf-8", "replace")
    temp = os.path.join(folder, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with open(fd, "wb", closefd=True) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, target)
        except BaseException:
            _remove_quietly(temp)
            raise
    except OSError as exc:
        raise RenderError(f"cannot write {display_text(target)}: {exc.strerror or exc}") from None


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- one card ---------------------------------------------------------------------------------------


def _card(hit, side: int) -> str:
    meta = hit.meta or {}
    frame_ms = meta.get("frame_ms")
    url = file_url(hit.path, frame_ms)
    shown_path = display_text(hit.path)
    folder, name = _split(shown_path)
    badge = "" if frame_ms is None else f'<span class="badge">&#9654; {format_timestamp(int(frame_ms))}</span>'
    try:
        image = thumbnail(hit.path, frame_ms, side)
    except ThumbnailError as exc:
        figure = (f'<div class="thumb missing" role="img" aria-label="no preview">{badge}'
                  f'<span>No preview</span><small>{_text(exc.reason)}</small></div>')
        classes = "card placeholder"
    else:
        img = (f'<img src="{jpeg_data_uri(image)}" width="{image.width}" height="{image.height}" '
               f'alt="{_text(name)}">')
        tag = f'a class="thumb" href="{_attr(url)}"' if url else 'div class="thumb"'
        figure = f"<{tag}>{_framed(img, image.size, meta)}{badge}</{tag.split()[0]}>"
        classes = "card"
    label = f'<span class="dir">{_text(folder)}</span><span class="name">{_text(name)}</span>'
    path = f'<a href="{_attr(url)}" title="{_text(shown_path)}">{label}</a>' if url else label
    return (
        f'<article class="{classes}" id="hit-{int(hit.rank)}" data-rank="{int(hit.rank)}" '
        f'data-score="{float(hit.score):.6f}">\n'
        f"  {figure}\n"
        f'  <div class="body">\n'
        f'    <div class="head"><span class="rank">#{int(hit.rank)}</span>'
        f'<span class="score" title="similarity">{float(hit.score):.4f}</span></div>\n'
        f'    <p class="path">{path}</p>\n'
        f"    {_metadata(meta)}\n"
        f"  </div>\n"
        f"</article>"
    )


def _framed(img: str, size: tuple[int, int], meta: dict) -> str:
    """The thumbnail in a frame of its own size (at most its pixels, fitted in the square), so that
    the box of the part that matched (region search) lies over the photo in percent of it."""
    width, height = size
    frame = (f'<span class="frame" style="width: min({width}px, {100 * width / max(width, height, 1):.3f}%); '
             f'aspect-ratio: {width} / {max(height, 1)}">')
    box = region_box(meta)
    if box is None:
        return f"{frame}{img}</span>"
    x0, y0, x1, y1 = (100 * v for v in box)
    region = (f'<span class="region" style="left: {x0:.2f}%; top: {y0:.2f}%; width: {x1 - x0:.2f}%; '
              f'height: {y1 - y0:.2f}%" title="the part that matched"></span>')
    return f"{frame}{img}{region}</span>"


def _metadata(meta: dict) -> str:
    rows: list[tuple[str, str]] = []
    if meta.get("frame_ms") is not None:
        rows.append(("Frame at", format_timestamp(int(meta["frame_ms"]))))
    width, height = meta.get("width"), meta.get("height")
    if width and height:
        rows.append(("Dimensions", f"{width} \u00d7 {height}"))
    if region_box(meta) is not None:
        x0, y0, x1, y1 = (float(v) for v in meta["box"])
        rows.append(("Matched", f"a part: x {x0:.0f}\u2013{x1:.0f}, y {y0:.0f}\u2013{y1:.0f}"))
    if meta.get("format"):
        rows.append(("Format", str(meta["format"])))
    if meta.get("taken_at"):
        rows.append(("Taken", str(meta["taken_at"]).replace("T", " ")))
    camera = _camera(meta.get("camera_make"), meta.get("camera_model"))
    if camera:
        rows.append(("Camera", camera))
    if meta.get("gps_lat") is not None and meta.get("gps_lon") is not None:
        rows.append(("Location", _gps(meta["gps_lat"], meta["gps_lon"])))
    if meta.get("size") is not None:
        rows.append(("File size", _size(meta["size"])))
    if meta.get("mtime") is not None:
        try:
            rows.append(("Modified", datetime.fromtimestamp(float(meta["mtime"])).strftime("%Y-%m-%d %H:%M")))
        except (ValueError, OverflowError, OSError):
            pass
    items = "".join(f"<dt>{_text(key)}</dt><dd>{_text(value)}</dd>" for key, value in rows)
    return f'<dl class="meta">{items}</dl>'


def _camera(make, model) -> str:
    make, model = (str(make).strip() if make else ""), (str(model).strip() if model else "")
    if make and model.lower().startswith(make.split()[0].lower()):
        return model  # "Canon" + "Canon EOS R5": the model already says it
    return " ".join(part for part in (make, model) if part)


def _gps(lat, lon) -> str:
    lat, lon = float(lat), float(lon)
    return f"{abs(lat):.5f}\u00b0 {'N' if lat >= 0 else 'S'}, {abs(lon):.5f}\u00b0 {'E' if lon >= 0 else 'W'}"


def _size(size) -> str:
    size = float(size)
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return ""  # not reached


def _split(path: str) -> tuple[str, str]:
    cut = max(path.rfind("/"), path.rfind(os.sep)) + 1
    return path[:cut], path[cut:]


# -- encoding helpers -------------------------------------------------------------------------------


def file_url(path: str, frame_ms: int | None = None) -> str | None:
    """file:// URL of a local path, percent-encoded from the path's exact bytes (a name that is not
    UTF-8 keeps its bytes); a video frame adds a media fragment (#t=seconds), which browsers
    honour when they open the video. None for a path that cannot be made absolute. A path that
    is already a URL (a photo indexed from s3://, gs://, file://...) is its own link."""
    from retriever.remote import is_url

    if is_url(path):
        return path if path.split("://", 1)[0].lower() in ("http", "https", "file") else None
    try:
        full = os.path.abspath(path)
        if os.name == "nt":
            from pathlib import PureWindowsPath

            url = PureWindowsPath(full).as_uri()
        else:
            url = "file://" + urllib.parse.quote(os.fsencode(full), safe="/")
    except (ValueError, TypeError, UnicodeError):  # relative on Windows; a lone surrogate there
        return None
    if frame_ms is not None:
        url += f"#t={int(frame_ms) / 1000:g}"
    return url


def jpeg_data_uri(image, quality: int = JPEG_QUALITY) -> str:
    buffer = io.BytesIO()
    rgb = image if image.mode in ("RGB", "L") else image.convert("RGB")
    rgb.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.standard_b64encode(buffer.getvalue()).decode("ascii")


def _text(value) -> str:
    return html.escape(display_text(str(value)), quote=True)


def _attr(url: str) -> str:
    return html.escape(url, quote=True)


_STYLE = """
:root { color-scheme: light dark; --bg: #f5f6f8; --card: #ffffff; --fg: #1c2230; --muted: #5f6878;
  --line: #e1e4ea; --accent: #2463b0; --thumb: #eceef2; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #121418; --card: #1c1f25; --fg: #e6e8ed; --muted: #9aa2b1; --line: #2b3038;
    --accent: #7db4f0; --thumb: #24282f; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
header { padding: 24px 28px 4px; }
h1 { font-size: 1.35rem; margin: 0 0 4px; font-weight: 650; overflow-wrap: anywhere; }
header p { margin: 2px 0; color: var(--muted); overflow-wrap: anywhere; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 18px;
  padding: 16px 28px 28px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; overflow: hidden;
  display: flex; flex-direction: column; }
.thumb { position: relative; display: flex; align-items: center; justify-content: center;
  aspect-ratio: 1 / 1; background: var(--thumb); }
.frame { position: relative; display: block; flex: none; }
.thumb img { display: block; width: 100%; height: 100%; }
.region { position: absolute; box-sizing: border-box; border: 3px solid #ff2bd6;
  box-shadow: 0 0 0 1px rgba(0, 0, 0, .55), inset 0 0 0 1px rgba(0, 0, 0, .55); }
.missing { flex-direction: column; gap: 6px; padding: 14px; text-align: center; color: var(--muted); }
.missing span { font-weight: 600; }
.missing small { overflow-wrap: anywhere; }
.badge { position: absolute; left: 8px; bottom: 8px; padding: 1px 7px; border-radius: 6px;
  background: rgba(0, 0, 0, .68); color: #fff; font-size: .78rem; font-variant-numeric: tabular-nums; }
.body { padding: 10px 12px 12px; }
.head { display: flex; justify-content: space-between; align-items: baseline;
  font-variant-numeric: tabular-nums; }
.rank { font-weight: 650; }
.score { color: var(--muted); }
.path { margin: 6px 0 8px; font-size: .88rem; overflow-wrap: anywhere; }
.path a { color: inherit; text-decoration: none; }
.path a:hover .name { text-decoration: underline; }
.dir { color: var(--muted); }
.name { color: var(--accent); font-weight: 600; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 1px 10px; margin: 0; font-size: .8rem; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
.empty { color: var(--muted); }
footer { padding: 0 28px 24px; color: var(--muted); font-size: .8rem; }
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="generator" content="retriever {version}">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="query">{query}</p>
<p class="count">{count}</p>
</header>
<main>
{cards}
</main>
<footer>Made by retriever {version}. Thumbnails are embedded; names link to the original files.</footer>
</body>
</html>
"""
