"""Bytes -> RGB image and its metadata, safely: size limits, EXIF orientation, transparency,
animated and odd formats. Every failure is an ImageDecodeError with a one-line reason."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from .errors import ImageDecodeError

# Above this many pixels a file is refused before decoding (a 12 MP photo is 12e6; panoramas
# reach ~100e6). Pillow's own decompression-bomb guard stays on as well.
MAX_PIXELS = 180_000_000

EXIF_MAKE, EXIF_MODEL, EXIF_ORIENTATION, EXIF_DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
EXIF_DATETIME_ORIGINAL, EXIF_DATETIME_DIGITIZED = 0x9003, 0x9004


@dataclass
class DecodedImage:
    image: Any  # PIL.Image.Image, mode RGB, EXIF orientation applied
    meta: dict[str, Any] = field(default_factory=dict)  # width, height, format, taken_at, camera_*, gps_*


def decode(data: bytes, name: str = "image", *, draft_min_side: int | None = None) -> DecodedImage:
    """Decode file bytes. Raises ImageDecodeError (never anything else for bad input).

    draft_min_side: for JPEGs, let libjpeg decode at a reduced scale (1/2, 1/4, 1/8) as long as
    both sides stay at least this many pixels: several times faster on large photos. The
    metadata keeps the full size."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ImageDecodeError(f"too large: {width}x{height} pixels (limit {MAX_PIXELS // 1_000_000} MP)")
        meta = {"width": width, "height": height, "format": img.format}
        meta.update(_exif_meta(img))
        if meta.pop("_rotated", False):
            meta["width"], meta["height"] = height, width
        if draft_min_side and img.format == "JPEG" and min(width, height) > 2 * draft_min_side:
            img.draft(None, (draft_min_side, draft_min_side))
        img.load()
        img = ImageOps.exif_transpose(img) or img
        rgb = to_rgb(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"refused as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, IndexError, KeyError, TypeError) as exc:
        raise ImageDecodeError(_one_line(exc)) from None
    return DecodedImage(rgb, meta)


def load(path: str) -> DecodedImage:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode(data, path)


def to_rgb(img):
    """Any mode -> RGB; transparent pixels become white (not black), first frame of animations."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit or 32-bit grey: scale to 8 bits by the actual range instead of clipping.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype("uint8")).convert("RGB")
    return img.convert("RGB")


def _exif_meta(img) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        exif = img.getexif()
    except Exception:  # a broken EXIF block must not lose the image
        return out
    if not exif:
        return out
    if exif.get(EXIF_ORIENTATION) in (5, 6, 7, 8):  # shown rotated by 90°: width and height swap
        out["_rotated"] = True
    make, model = _clean(exif.get(EXIF_MAKE)), _clean(exif.get(EXIF_MODEL))
    if make:
        out["camera_make"] = make
    if model:
        out["camera_model"] = model
    try:
        sub = exif.get_ifd(EXIF_IFD)
    except Exception:
        sub = {}
    taken = _exif_date(sub.get(EXIF_DATETIME_ORIGINAL) or sub.get(EXIF_DATETIME_DIGITIZED) or exif.get(EXIF_DATETIME))
    if taken:
        out["taken_at"] = taken
    try:
        gps = exif.get_ifd(GPS_IFD)
    except Exception:
        gps = {}
    lat = _gps_degrees(gps.get(2), gps.get(1), "S")
    lon = _gps_degrees(gps.get(4), gps.get(3), "W")
    if lat is not None and lon is not None and -90 <= lat <= 90 and -180 <= lon <= 180:
        out["gps_lat"], out["gps_lon"] = lat, lon
    return out


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = str(value).replace("\x00", "").strip()
    return value or None


def _exif_date(value: Any) -> str | None:
    """'2021:07:04 18:22:05' -> '2021-07-04T18:22:05'; None for blanks and garbage."""
    from datetime import datetime

    text = _clean(value)
    if not text:
        return None
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y:%m:%d"):
        try:
            return datetime.strptime(text[:19], fmt).isoformat()
        except ValueError:
            continue
    return None


def _gps_degrees(dms: Any, ref: Any, negative_ref: str) -> float | None:
    try:
        d, m, s = (float(x) for x in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = d + m / 60.0 + s / 3600.0
    if _clean(ref) == negative_ref:
        value = -value
    return round(value, 7)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
