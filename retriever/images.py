"""Bytes -> RGB image and its metadata, safely: size limits, EXIF orientation, transparency,
animated and odd formats, HEIC/AVIF and camera RAW when their decoders are installed. Every
failure is an ImageDecodeError with a one-line reason; nothing else escapes for bad input.

Policy for damaged files: a file is either decoded completely or refused. A truncated JPEG or PNG
(an interrupted copy or download) fails with "image file is truncated" instead of being embedded
with a grey or missing lower part, because such an embedding would silently match the wrong
queries; the file is retried when it changes (for instance once the copy is complete). This relies
on Pillow's default `ImageFile.LOAD_TRUNCATED_IMAGES = False`, which nothing here changes."""

from __future__ import annotations

import functools
import io
import os
import stat
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

from retriever.errors import ImageDecodeError

# Above this many pixels a file is refused from its header, before any pixel is decoded (a 12 MP
# photo is 12e6; panoramas reach ~100e6). Decoding needs about 4 bytes per pixel plus one RGB
# copy, so this also bounds the memory of one decode (~1.3 GB at the limit). Callers may pass
# max_pixels= to decode/load instead.
MAX_PIXELS = 180_000_000
# load()/read_file() refuse larger files before reading them: a 180 MP 16-bit RGB TIFF is 1.1 GB,
# the largest camera RAW files ~0.2 GB; anything bigger is not a photo we could decode anyway.
MAX_FILE_BYTES = 2 << 30
# A progressive JPEG is decoded in one pass per scan; encoders write about 10. A crafted file that
# repeats a scan thousands of times costs seconds per scan on a big image and would stall a run.
MAX_JPEG_SCANS = 100

# Suffixes (lower case) the walker picks up. Pillow reads the first group itself.
PILLOW_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"}
)
HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif"})
AVIF_SUFFIXES = frozenset({".avif"})
RAW_SUFFIXES = frozenset(
    {".cr2", ".cr3", ".nef", ".nrw", ".arw", ".dng", ".raf", ".orf", ".rw2", ".pef", ".srw"}
)

# Reasons given when an optional decoder is missing. They share NEEDS_INSTALL so that a caller can
# recognise them (and retry such files once the package is installed).
NEEDS_INSTALL = "support needs: pip install"
HEIF_MISSING = f"HEIC {NEEDS_INSTALL} pillow-heif"
AVIF_MISSING = f"AVIF {NEEDS_INSTALL} 'pillow>=11.2' (or pillow-heif<1.0)"
RAW_MISSING = f"camera RAW {NEEDS_INSTALL} 'retriever[raw]'"

EXIF_MAKE, EXIF_MODEL, EXIF_ORIENTATION, EXIF_DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
EXIF_DATETIME_ORIGINAL, EXIF_DATETIME_DIGITIZED = 0x9003, 0x9004


@dataclass
class DecodedImage:
    image: Any  # PIL.Image.Image, mode RGB, EXIF orientation applied
    meta: dict[str, Any] = field(default_factory=dict)  # width, height, format, taken_at, camera_*, gps_*


def supported_suffixes() -> frozenset[str]:
    """Every suffix the walker should pick up, whether or not its optional decoder is installed.

    HEIC/AVIF/RAW are always listed: a file the installed decoders cannot read is then recorded
    as failed with the package to install (visible in `retriever errors`) instead of being
    silently absent from the collection, and the set of files walked does not depend on what
    happens to be installed."""
    return PILLOW_SUFFIXES | HEIF_SUFFIXES | AVIF_SUFFIXES | RAW_SUFFIXES


def optional_decoders() -> dict[str, bool]:
    """Which optionally supported formats this process can decode."""
    formats = _pillow_formats()
    return {"heif": "HEIF" in formats, "avif": "AVIF" in formats, "raw": _rawpy() is not None}


def read_file(path: str, *, max_bytes: int | None = None) -> bytes:
    """A whole file's bytes, refusing what cannot be an image file without reading it: anything
    but a regular file (a FIFO would block forever) and files over max_bytes (MAX_FILE_BYTES)."""
    limit = MAX_FILE_BYTES if max_bytes is None else max_bytes
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; no effect on regular files.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImageDecodeError("cannot read: not a regular file")
            if st.st_size > limit:
                raise ImageDecodeError(f"too large to read: {_mb(st.st_size)} (limit {_mb(limit)})")
            data = f.read(limit + 1)  # the file may have grown since fstat
    except OSError as exc:
        raise ImageDecodeError(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ImageDecodeError(f"too large to read: over {_mb(limit)}")
    return data


def load(
    path: str, *, max_pixels: int | None = None, draft_min_side: int | None = None, max_bytes: int | None = None
) -> DecodedImage:
    return decode(read_file(path, max_bytes=max_bytes), path, draft_min_side=draft_min_side, max_pixels=max_pixels)


def decode(
    data: bytes, name: str = "image", *, draft_min_side: int | None = None, max_pixels: int | None = None
) -> DecodedImage:
    """Decode file bytes. Raises ImageDecodeError (never anything else for bad input).

    name: the file's name or path; only its suffix is used, to route camera RAW files to rawpy.
    draft_min_side: let JPEG (and RAW) decoding work at a reduced scale as long as both sides stay
    at least this many pixels: several times faster on large photos. The metadata keeps the full size.
    max_pixels: refuse images with more pixels than this (default MAX_PIXELS), from the header."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    formats = _pillow_formats()  # also the one-time Pillow setup, which RAW metadata needs too
    if os.path.splitext(name)[1].lower() in RAW_SUFFIXES:
        return _decode_raw(data, name, draft_min_side, limit)
    container = _iso_media_kind(data)
    if container == "heif" and "HEIF" not in formats:
        raise ImageDecodeError(HEIF_MISSING)
    if container == "avif" and "AVIF" not in formats:
        raise ImageDecodeError(AVIF_MISSING)
    from PIL import Image, UnidentifiedImageError

    fmt = _format_guess(data)  # failure reasons name the format
    try:
        try:
            img = Image.open(io.BytesIO(data), formats=formats)
        except UnidentifiedImageError:  # a known signature here means a damaged header
            raise ImageDecodeError(f"cannot decode {fmt}: damaged file" if fmt else _what_it_is(data)) from None
        fmt = img.format
        width, height = img.size
        _check_pixels(width, height, limit)
        if img.format in ("JPEG", "MPO") and "progressive" in img.info:
            scans = _jpeg_scan_count(data)
            if scans > MAX_JPEG_SCANS:
                raise ImageDecodeError(f"refused: progressive JPEG with {scans} scans (limit {MAX_JPEG_SCANS})")
        meta = {"width": width, "height": height, "format": img.format}
        exif_meta, orientation = _exif_meta(img)
        meta.update(exif_meta)
        if orientation in (5, 6, 7, 8):  # shown rotated by 90°: width and height swap
            meta["width"], meta["height"] = height, width
        if draft_min_side and img.format in ("JPEG", "MPO") and min(width, height) > 2 * draft_min_side:
            img.draft(None, (draft_min_side, draft_min_side))
        img.load()
        rgb = to_rgb(_orient(img, orientation))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # only if someone re-enabled Pillow's own guard
        raise ImageDecodeError(f"refused as a decompression bomb: {_one_line(exc)}") from None
    except MemoryError:
        raise ImageDecodeError("out of memory while decoding") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError,
            OverflowError, AttributeError, RuntimeError, struct.error) as exc:
        # Pillow's plugins signal a damaged file with any of these (RuntimeError: pillow-heif).
        reason = _one_line(exc)
        if "MAX_TEXT" in reason:  # Pillow's limit on decompressed PNG text/ICC chunks
            raise ImageDecodeError(f"refused as a decompression bomb: {reason}") from None
        raise ImageDecodeError(f"cannot decode {fmt}: {reason}" if fmt else reason) from None
    return DecodedImage(rgb, meta)


def to_rgb(img):
    """Any mode -> RGB; transparent pixels become white (not black) whatever the mode and however
    the transparency is stored (alpha band, palette or colour key); 16/32-bit and float images
    are scaled to 8 bits by their actual range; CMYK (Adobe-inverted included: Pillow undoes the
    inversion when reading) by Pillow's conversion; CIELab through littlecms."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _wide_to_rgb(img)
    if img.mode == "LAB":
        return _lab_to_rgb(img)
    if "transparency" in img.info and img.mode in ("L", "P", "RGB"):
        img = img.convert("RGBA")  # palette entry or colour key -> alpha band
    if img.mode == "RGB":
        return img
    if img.mode == "La":  # premultiplied grey + alpha (TIFF): Pillow converts it only to LA
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba)  # an RGBA mask means its alpha band: no extra copy
        return background
    return img.convert("RGB")


def _wide_to_rgb(img):
    """16-bit, 32-bit integer or float grey -> RGB, scaled by the range actually used (12-bit data
    in a 16-bit file would otherwise be nearly black); NaN/inf count as black; a colour-key
    transparency value becomes white."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(img)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        # 16-bit: a 65536-entry lookup table keeps memory at one byte per pixel.
        lo, hi = int(arr.min()), int(arr.max())
        lut = np.zeros(65536, np.uint8)
        if hi > lo:
            lut[lo : hi + 1] = np.linspace(0.5, 255.5, hi - lo + 1).astype(np.uint8)
        out = lut[arr]
    else:
        values = arr.astype(np.float32)  # our own copy, scaled in place
        finite = np.isfinite(values)
        lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
        values[~finite] = lo
        values -= lo
        values *= 255.0 / (hi - lo) if hi > lo else 0.0
        values += 0.5
        out = np.clip(values, 0, 255, out=values).astype(np.uint8)
    key = img.info.get("transparency")
    if isinstance(key, int):
        out[arr == key] = 255
    return Image.fromarray(out, "L").convert("RGB")


def _lab_to_rgb(img):
    from PIL import ImageCms

    transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return ImageCms.applyTransform(img, transform)


def _orient(img, orientation: int):
    """Apply an EXIF orientation (1-8) ourselves rather than with ImageOps.exif_transpose, which
    also rewrites the EXIF block and raises on garbage values: a broken tag must not lose the image."""
    from PIL import Image

    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return img.transpose(method) if method is not None else img


def _check_pixels(width: int, height: int, limit: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"invalid size: {width}x{height} pixels")
    if width * height > limit:
        shown = f"{limit / 1e6:g} MP" if limit >= 1_000_000 else f"{limit} pixels"
        raise ImageDecodeError(f"too large: {width}x{height} pixels (limit {shown})")


# --- which decoders are available ---------------------------------------------------------------


@functools.cache
def _pillow_formats() -> tuple[str, ...]:
    """The formats Image.open may identify. Restricting it keeps Pillow's other plugins (EPS runs
    Ghostscript, PSD, ICNS, FITS...) away from files that merely carry an image suffix. Also the
    one-time setup of Pillow for this module (cached: runs once per process)."""
    from PIL import Image, features

    # Pillow's decompression-bomb guard is one process-wide number (it warns from 89 MP and refuses
    # from 179 MP), which would override a caller's max_pixels and print warnings for legitimate
    # panoramas. decode() applies max_pixels itself at the same point, after the header is read and
    # before any pixel is decoded, so Pillow's guard is switched off.
    Image.MAX_IMAGE_PIXELS = None
    # A damaged EXIF block makes Pillow warn on stderr; we already drop what cannot be read, and a
    # batch indexer must not scribble over its progress display. Only these messages are silenced.
    warnings.filterwarnings(
        "ignore", message=r"(Corrupt EXIF data|Possibly corrupt EXIF|Metadata Warning)", category=UserWarning
    )
    # (Multi-picture JPEGs, format "MPO", are opened through the JPEG entry.)
    wanted = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF"]
    if features.check("avif"):
        wanted.append("AVIF")
    if _heif_opener():
        wanted += ["HEIF", "AVIF"]  # pillow-heif < 1.0 also registered AVIF
    Image.init()
    return tuple(dict.fromkeys(f for f in wanted if f in Image.OPEN))  # only registered openers


@functools.cache
def _heif_opener() -> bool:
    """Register pillow-heif's HEIF opener once, if the package is installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    # Thumbnails, depth maps and auxiliary images are never used here: do not decode them.
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    if hasattr(pillow_heif, "register_avif_opener"):  # pillow-heif < 1.0, for a Pillow without AVIF
        from PIL import features

        if not features.check("avif"):
            pillow_heif.register_avif_opener(thumbnails=False, depth_images=False, aux_images=False)
    return True


def _iso_media_kind(data: bytes) -> str | None:
    """'heif' or 'avif' for an ISO base media file (ftyp box) with those brands, else None."""
    if len(data) < 12 or data[4:8] != b"ftyp":
        return None
    size = int.from_bytes(data[:4], "big")
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, min(size, len(data), 64) - 3, 4)}
    if brands & {b"avif", b"avis"}:
        return "avif"
    if brands & {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}:
        return "heif"
    return None


_SIGNATURES = (
    (b"%PDF", "a PDF document"),
    (b"%!PS", "a PostScript file"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"8BPS", "a Photoshop document"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x1a\x45\xdf\xa3", "a Matroska/WebM video"),
    (b"\x00\x00\x01\xba", "an MPEG video"),
)


def _what_it_is(data: bytes) -> str:
    """The reason for a file Pillow did not identify: what it looks like, when we can tell."""
    head = data[:512]
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return f"not an image: {kind}"
    if head[4:8] == b"ftyp":
        return "not an image: a video (MP4/QuickTime)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "not an image: an HTML page"
    if text.startswith((b"<?xml", b"<svg")):
        return "not an image: an XML/SVG document"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "not an image: a text file"
        except UnicodeDecodeError:
            pass
    return "not an image (unknown or unsupported format)"


def _format_guess(data: bytes) -> str | None:
    """The format a file's first bytes announce, for failure reasons (Pillow decides the rest)."""
    for magic, fmt in ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
                       (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")):
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    kind = _iso_media_kind(data)
    return kind.upper() if kind else None


def _jpeg_scan_count(data: bytes) -> int:
    """Number of scans (SOS markers) in the main image of a JPEG. The header segments are skipped
    by their lengths (an EXIF thumbnail inside APP1 has its own SOS); from the first scan to EOI a
    0xFFDA pair can only be a marker, because entropy-coded data stuffs every 0xFF with 0x00."""
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return 0  # not where a marker is due: leave the complaint to the decoder
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            end = data.find(b"\xff\xd9", pos)
            return data.count(b"\xff\xda", pos, end if end >= 0 else len(data))
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return 0


# --- camera RAW ---------------------------------------------------------------------------------


def _decode_raw(data: bytes, name: str, draft_min_side: int | None, limit: int) -> DecodedImage:
    """Camera RAW through rawpy (LibRaw), demosaiced with the camera's white balance and rotated by
    LibRaw as the camera recorded; at half size (a 2x2 block per pixel, no interpolation, ~4x
    faster) when that still leaves draft_min_side pixels."""
    rawpy = _rawpy()
    if rawpy is None:
        raise ImageDecodeError(RAW_MISSING)
    from PIL import Image

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            sizes = raw.sizes
            width, height = sizes.width, sizes.height
            if sizes.flip in (5, 6):  # LibRaw's 90° rotations
                width, height = height, width
            _check_pixels(width, height, limit)
            half = bool(draft_min_side) and min(width, height) // 2 >= draft_min_side
            pixels = raw.postprocess(half_size=half, use_camera_wb=True, output_bps=8)
    except rawpy.LibRawError as exc:
        raise ImageDecodeError(f"camera RAW: {_one_line(exc)}") from None
    except MemoryError:
        raise ImageDecodeError("out of memory while decoding") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ImageDecodeError(f"camera RAW: {_one_line(exc)}") from None
    meta: dict[str, Any] = {"width": width, "height": height, "format": os.path.splitext(name)[1][1:].upper()}
    meta.update(_raw_exif(data))
    return DecodedImage(Image.fromarray(pixels, "RGB"), meta)


@functools.cache
def _rawpy():
    try:
        import rawpy
    except ImportError:
        return None
    return rawpy


def _raw_exif(data: bytes) -> dict[str, Any]:
    """Camera, date and GPS of a TIFF-based RAW (DNG, CR2, NEF, ARW...), best effort: the TIFF
    structure is parsed as an EXIF block, nothing is decoded. Orientation is LibRaw's business."""
    from PIL import Image

    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return {}
    try:
        exif = Image.Exif()
        exif.load(data)
        return _exif_fields(exif)[0]
    except Exception:  # noqa: BLE001 - metadata is optional; the pixels are already decoded
        return {}


# --- metadata -----------------------------------------------------------------------------------


def _exif_meta(img) -> tuple[dict[str, Any], int]:
    """(camera/date/GPS fields, orientation 1-8). Garbage values are dropped, never fatal."""
    try:
        exif = img.getexif()  # also maps an XMP tiff:Orientation to the EXIF tag
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
        return {}, 1
    return _exif_fields(exif)


def _exif_fields(exif) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    if not _tag(exif, None):
        return out, 1
    orientation = _orientation_value(_tag(exif, EXIF_ORIENTATION))
    make, model = _clean(_tag(exif, EXIF_MAKE)), _clean(_tag(exif, EXIF_MODEL))
    if make:
        out["camera_make"] = make
    if model:
        out["camera_model"] = model
    sub = _ifd(exif, EXIF_IFD)
    taken = _exif_date(
        _tag(sub, EXIF_DATETIME_ORIGINAL) or _tag(sub, EXIF_DATETIME_DIGITIZED) or _tag(exif, EXIF_DATETIME)
    )
    if taken:
        out["taken_at"] = taken
    gps = _ifd(exif, GPS_IFD)
    lat = _gps_degrees(_tag(gps, 2), _tag(gps, 1), "S")
    lon = _gps_degrees(_tag(gps, 4), _tag(gps, 3), "W")
    if lat is not None and lon is not None and -90 <= lat <= 90 and -180 <= lon <= 180:
        out["gps_lat"], out["gps_lon"] = lat, lon
    return out, orientation


def _tag(mapping, tag: int | None) -> Any:
    """One EXIF value, or None where it cannot be read: Pillow unpacks values lazily, so a damaged
    value raises on access, and must cost that field only. tag None: the mapping's truth value."""
    try:
        return bool(mapping) if tag is None else mapping.get(tag)
    except Exception:  # noqa: BLE001
        return None


def _ifd(exif, tag: int):
    try:
        return exif.get_ifd(tag)
    except Exception:  # noqa: BLE001 - a broken sub-IFD loses its fields, not the image
        return {}


def _orientation_value(value: Any) -> int:
    if isinstance(value, (tuple, list)) and len(value) == 1:  # some writers store a 1-element array
        value = value[0]
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    # Surrogates cannot be stored as SQLite text; control characters make a field span lines.
    value = str(value).encode("utf-8", "replace").decode("utf-8")
    value = "".join(ch for ch in value if ch.isprintable()).strip()
    return value[:200] or None


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
    if value != value:  # NaN, from a rational with a zero denominator
        return None
    if _clean(ref) == negative_ref:
        value = -value
    return round(value, 7)


# --- small helpers ------------------------------------------------------------------------------


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], bytes) else exc  # LibRaw: bytes
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return (" ".join(text.split()) or type(exc).__name__)[:300]
