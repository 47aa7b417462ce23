"""Thumbnails of search hits, through retriever's safe decoder: photos by `images.load` (size limits,
EXIF orientation, HEIC/AVIF/RAW), video frames by PyAV at the hit's timestamp. Whatever goes wrong
(a file deleted since indexing, a damaged file, PyAV missing) is one ThumbnailError, which callers
turn into a placeholder: one bad file never breaks a page or a listing."""

from __future__ import annotations

import unicodedata

from retriever.errors import ImageDecodeError, RetrieverError

DEFAULT_SIDE = 256  # pixels, the longer side of a thumbnail
REGION_COLOUR = (255, 43, 214)  # the matched part's box, as the page and --html draw it (#ff2bd6)


class RenderError(RetrieverError):
    """Output could not be produced: a results page not written, an unknown preview protocol."""


class ThumbnailError(RenderError):
    """No thumbnail for one file. `reason` is short and one line, for a placeholder."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = display_text(reason)
        super().__init__(f"cannot show {display_text(path)}: {self.reason}")


def thumbnail(path: str, frame_ms: int | None = None, max_side: int = DEFAULT_SIDE):
    """-> PIL RGB image whose longer side is at most max_side (smaller images are not enlarged),
    aspect ratio kept. frame_ms given: the frame of the video at `path` at that timestamp, as
    indexed. Raises ThumbnailError."""
    if max_side < 1:
        raise RenderError(f"thumbnail size must be at least 1 pixel, not {max_side}")
    from PIL import Image

    from retriever.images import load

    try:
        if frame_ms is None:
            # draft: a large JPEG is decoded at a reduced scale that still covers max_side.
            image = load(path, draft_min_side=max_side).image
        else:
            image = _video_frame(path, int(frame_ms))
    except ImageDecodeError as exc:
        raise ThumbnailError(path, str(exc)) from None
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def region_box(meta: dict) -> tuple[float, float, float, float] | None:
    """The part of the photo a hit matched, as fractions (0-1) of its width and height, when a part
    matched (`region` true, retriever.search): None when the whole photo matched, or the box or the
    photo's size is missing or not numbers. Clipped to the photo; empty boxes are None."""
    if meta.get("region") is not True:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in meta["box"])
        width, height = float(meta["width"]), float(meta["height"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (width > 0 and height > 0):
        return None
    fx0, fx1 = (min(1.0, max(0.0, v / width)) for v in (x0, x1))
    fy0, fy1 = (min(1.0, max(0.0, v / height)) for v in (y0, y1))
    return (fx0, fy0, fx1, fy1) if fx1 > fx0 and fy1 > fy0 else None


def draw_region(image, box: tuple[float, float, float, float], colour=REGION_COLOUR):
    """A copy of `image` (RGB) with `box` (fractions of its width and height, see region_box) drawn
    as a rectangle 2 px wide (3 px on images over 128 px), inside the image."""
    from PIL import ImageDraw

    out = image.convert("RGB")  # a copy, whatever the mode
    width, height = out.size
    line = 3 if max(width, height) > 128 else 2
    x0, x1 = (min(width - 1, round(v * width)) for v in (box[0], box[2]))
    y0, y1 = (min(height - 1, round(v * height)) for v in (box[1], box[3]))
    ImageDraw.Draw(out).rectangle((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)), outline=colour, width=line)
    return out


def _video_frame(path: str, frame_ms: int):
    """The frame the indexer embedded at frame_ms (video.frame_at)."""
    from retriever.video import frame_at

    return frame_at(path, frame_ms)


def display_text(text: str) -> str:
    """Text from the file system made safe to show: bytes that were not UTF-8 (surrogate escapes
    in a Python str) become U+FFFD, and so do control characters, which would otherwise let a
    file name send escape sequences to a terminal or break a line."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name produced: shown as U+FFFD too
        raw = text.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "replace")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or _harmless(ch) else "\ufffd" for ch in text)


def _harmless(ch: str) -> bool:
    """Not printable to Python, yet harmless and part of real names: no-break and other spaces,
    the zero-width joiner of emoji sequences."""
    return ch == "\u200d" or unicodedata.category(ch) == "Zs"
