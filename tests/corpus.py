"""A generated corpus of everything a photo folder can hold: good photos, odd formats and modes,
damaged files, decompression bombs, odd names, links and things that are not files.

    from tests.corpus import make_corpus
    expected = make_corpus(folder)   # {"bad/empty.jpg": "fail", "good/astronaut.jpg": "ok", ...}

Keys are the relative paths of the regular files that files.walk() must yield (so, exactly the
files an indexer must record); "ok" files decode, "fail" files raise ImageDecodeError. Links, a
FIFO and a folder named like an image are created too but are not keys: the walker must not
yield them (a link to a file that is also reached directly yields it once, under its real path).
build_corpus() gives the same cases with what to check on each (size, colours, reason).

Outcomes that depend on the machine are computed: HEIC, AVIF and RAW are "ok" only where their
decoder is installed, the unreadable file is "ok" only where permissions do not apply (root).
Everything is small: building and decoding the whole corpus takes about a second."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from retriever import images

PHOTOS = Path(__file__).resolve().parent.parent / "examples" / "photos"

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)

# 32x24, left half red, right half blue; written once with pillow-heif (x265) and Pillow (libavif)
# so that the corpus needs no encoder, and tests the missing-decoder reason where none is installed.
HEIC_32x24 = base64.b64decode(
    "AAAAHGZ0eXBoZWljAAAAAG1pZjFoZWljbWlhZgAAAXxtZXRhAAAAAAAAACFoZGxyAAAAAAAAAABwaWN0AAAAAAAAAAAAAAAAAAAAACJp"
    "bG9jAAAAAERAAAEAAQAAAAABoAABAAAAAAAAAFcAAAAjaWluZgAAAAAAAQAAABVpbmZlAgAAAAABAABodmMxAAAAAA5waXRtAAAAAAAB"
    "AAAA/GlwcnAAAADcaXBjbwAAAHVodmNDAQNwAAAAkAAAAAAAHvAA/P34+AAADwNgAAEAGEABDAH//wNwAAADAJAAAAMAAAMAHroCQGEA"
    "AQApQgEBA3AAAAMAkAAAAwAAAwAeoCCBBZbqrprm4CGgwIAAAAyAAAADAIRiAAEABkQBwXPBiQAAABNjb2xybmNseAABAA0ABoAAAAAU"
    "aXNwZQAAAAAAAABAAAAAQAAAAChjbGFwAAAAIAAAAAEAAAAYAAAAAf///+AAAAAC////2AAAAAIAAAAQcGl4aQAAAAADCAgIAAAAGGlw"
    "bWEAAAAAAAAAAQABBYECAwWEAAAAX21kYXQAAABTKAGvUhdwfOb86r//nGv/8ovkPYSoK//FD1X6hrT/i3IQftCvS+VHY9HpfO0nKct4"
    "onBVoKDgFDxIWo5n6/r9fKTXuoCZQxYx8SuTP1/XpWOFh3A="
)
AVIF_32x24 = base64.b64decode(
    "AAAAIGZ0eXBhdmlmAAAAAGF2aWZtaWYxbWlhZk1BMUIAAADrbWV0YQAAAAAAAAAhaGRscgAAAAAAAAAAcGljdAAAAAAAAAAAAAAAAAAA"
    "AAAOcGl0bQAAAAAAAQAAAB5pbG9jAAAAAEQAAAEAAQAAAAEAAAETAAAAOQAAAChpaW5mAAAAAAABAAAAGmluZmUCAAAAAAEAAGF2MDFD"
    "b2xvcgAAAABqaXBycAAAAEtpcGNvAAAAFGlzcGUAAAAAAAAAIAAAABgAAAAQcGl4aQAAAAADCAgIAAAADGF2MUOBAAwAAAAAE2NvbHJu"
    "Y2x4AAEADQAGgAAAABdpcG1hAAAAAAAAAAEAAQQBAoMEAAAAQW1kYXQSAAoJGBE/dogIaDQgMioax4eF4cwwwwKFQADE4H3JSYm27Gxp"
    "twRmjfHRyFQqnd9mjpe8Jsw7YVA="
)


@dataclass
class Case:
    name: str  # path relative to the corpus folder
    outcome: str  # "ok" or "fail"
    size: tuple[int, int] | None = None  # decoded (displayed) size, for "ok"
    colours: dict[tuple[float, float], tuple[int, int, int]] = field(default_factory=dict)  # (x, y) as fractions
    reason: str | None = None  # a substring of the failure reason, for "fail"
    meta: dict = field(default_factory=dict)  # metadata fields that must be present (None: absent)


def make_corpus(folder: str | os.PathLike, *, non_utf8_names: bool = True) -> dict[str, str]:
    """Write the corpus into folder; {relative path: "ok" | "fail"} for every file walk() yields."""
    return {case.name: case.outcome for case in build_corpus(folder, non_utf8_names=non_utf8_names)}


def build_corpus(folder: str | os.PathLike, *, non_utf8_names: bool = True) -> list[Case]:
    root = Path(folder)
    cases: list[Case] = []
    decoders = images.optional_decoders()

    def put(name: str, data: bytes, **kw) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        cases.append(Case(name, **kw))

    def ok(name: str, data: bytes, size=None, colours=None, **kw) -> None:
        put(name, data, outcome="ok", size=size, colours=colours or {}, **kw)

    def fail(name: str, data: bytes, reason: str) -> None:
        put(name, data, outcome="fail", reason=reason)

    # Good photos, as they are.
    for name in ("astronaut.jpg", "chelsea.png", "camera.png", "gravel.webp"):
        with Image.open(PHOTOS / name) as im:
            size = im.size
        ok(f"good/{name}", (PHOTOS / name).read_bytes(), size=size)

    # JPEG: every EXIF orientation of a four-colour image, odd EXIF, CMYK, progressive, MPO, trailers.
    quads = quadrants(64, 48)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = encode(quads, "JPEG", exif=exif, quality=95)
        # What a viewer shows, by Pillow's own reading of the EXIF spec: an expectation that does
        # not share retriever's orientation table.
        shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        ok(f"jpeg/orientation_{orientation}.jpg", data, size=shown.size, colours=quadrant_colours(shown))
    for value in (0, 9, 65535):
        exif = Image.Exif()
        exif[0x0112] = value
        ok(f"jpeg/exif_orientation_{value}.jpg", encode(quads, "JPEG", exif=exif, quality=95),
           size=(64, 48), colours=quadrant_colours(quads))
    junk = b"Exif\x00\x00" + bytes(range(256)) * 4
    ok("jpeg/exif_garbage_block.jpg", encode(quads, "JPEG", exif=junk), size=(64, 48))
    ok("jpeg/exif_ifd_loop.jpg", encode(quads, "JPEG", exif=b"Exif\x00\x00" + exif_ifd_loop()), size=(48, 64))
    ok("jpeg/exif_garbage_values.jpg", encode(quads, "JPEG", exif=garbage_exif()), size=(64, 48),
       meta={"camera_make": "Canon", "taken_at": None, "gps_lat": None})
    halves = two_halves(RED, BLUE)
    ok("jpeg/cmyk_adobe.jpg", encode(halves.convert("CMYK"), "JPEG", quality=95), size=(32, 24), colours=HALVES)
    ok("jpeg/progressive.jpg", encode(halves, "JPEG", progressive=True, quality=95), size=(32, 24), colours=HALVES)
    ok("jpeg/multi_picture.jpg", encode(halves, "MPO", save_all=True, append_images=[quads]),
       size=(32, 24), colours=HALVES)
    ok("jpeg/motion_photo_trailer.jpg", encode(halves, "JPEG", quality=95) + random_bytes(20_000),
       size=(32, 24), colours=HALVES)
    ok("jpeg/really_a_png.jpg", encode(halves, "PNG"), size=(32, 24), colours=HALVES)

    # PNG: transparency in every form becomes white; 16-bit; animation; big metadata.
    palette = two_halves(RED, BLUE).quantize(4)
    ok("png/palette_transparent.png", encode(palette, "PNG", transparency=palette.getpixel((0, 0))),
       colours={(0.25, 0.5): WHITE, (0.75, 0.5): BLUE})
    ok("png/rgba.png", encode(transparent_left(BLUE, "RGBA"), "PNG"), colours={(0.25, 0.5): WHITE, (0.75, 0.5): BLUE})
    ok("png/la.png", encode(transparent_left(BLACK, "LA"), "PNG"), colours={(0.25, 0.5): WHITE, (0.75, 0.5): BLACK})
    ok("png/rgb_colour_key.png", encode(two_halves(BLACK, BLUE), "PNG", transparency=BLACK),
       colours={(0.25, 0.5): WHITE, (0.75, 0.5): BLUE})
    grey16 = Image.fromarray((np.arange(32 * 24, dtype=np.uint16).reshape(24, 32) * 80))
    ok("png/grey16.png", encode(grey16, "PNG"), size=(32, 24), colours={(0.0, 0.0): BLACK, (0.99, 0.99): WHITE})
    ok("png/grey16_colour_key.png", encode(grey16, "PNG", transparency=0), colours={(0.0, 0.0): WHITE})
    second = quads.resize((32, 24))  # a different second frame for animations and pages
    ok("png/animated.png", encode(halves, "PNG", save_all=True, append_images=[second]), colours=HALVES)
    ok("png/big_xmp.png", png_bytes(8, 8, chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + b" " * 300_000)), size=(8, 8))

    # GIF, WebP, TIFF, BMP.
    gif = two_halves(GREEN, RED).quantize(4)  # green is the transparent entry: must come out white
    ok("gif/animated_transparent.gif",
       encode(gif, "GIF", save_all=True, append_images=[second.quantize(4)], transparency=gif.getpixel((0, 0))),
       colours={(0.25, 0.5): WHITE, (0.75, 0.5): RED})
    ok("webp/animated.webp", encode(halves, "WEBP", save_all=True, append_images=[second], lossless=True),
       colours=HALVES)
    ok("webp/rgba_lossless.webp", encode(transparent_left(BLUE, "RGBA"), "WEBP", lossless=True),
       colours={(0.25, 0.5): WHITE, (0.75, 0.5): BLUE})
    ok("tiff/multipage.tif", encode(halves, "TIFF", save_all=True, append_images=[second]), colours=HALVES)
    ok("tiff/rgb16.tif", tiff_rgb16(two_halves(RED, BLUE)), size=(32, 24), colours=HALVES)
    ramp = np.linspace(-1, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    ok("tiff/float32.tif", encode(Image.fromarray(ramp), "TIFF"), size=(64, 48))
    ok("tiff/cmyk.tif", encode(halves.convert("CMYK"), "TIFF"), colours=HALVES)
    ok("tiff/lab.tif", encode(Image.new("LAB", (8, 8), (128, 128, 128)), "TIFF"), colours={(0.5, 0.5): (119, 119, 119)})
    ok("bmp/mono.bmp", encode(Image.new("1", (16, 8), 1), "BMP"), colours={(0.5, 0.5): WHITE})

    # Formats with optional decoders: decoded where installed, else a reason naming the package.
    if decoders["heif"]:
        ok("heif/photo.heic", HEIC_32x24, size=(32, 24), colours=HALVES)
    else:
        fail("heif/photo.heic", HEIC_32x24, images.HEIF_MISSING)
    fail("heif/truncated.heic", HEIC_32x24[:300], "HEIC" if not decoders["heif"] else "HEIF")
    if decoders["avif"]:
        ok("avif/photo.avif", AVIF_32x24, size=(32, 24), colours=HALVES)
    else:
        fail("avif/photo.avif", AVIF_32x24, images.AVIF_MISSING)
    dng = dng_bytes(64, 48, orientation=6)
    if decoders["raw"]:
        ok("raw/photo.dng", dng, size=(48, 64), meta={"camera_make": "Retriever", "format": "DNG"})
    else:
        fail("raw/photo.dng", dng, images.RAW_MISSING)
    fail("raw/not_really.nef", b"this is not a raw file\n" * 50, "camera RAW")

    # Not images, damaged images.
    fail("bad/empty.jpg", b"", "empty file")
    fail("bad/text.jpg", b"just some notes\n" * 20, "text file")
    fail("bad/page.png", b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n", "HTML")
    fail("bad/drawing.png", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG")
    fail("bad/document.jpg", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"0" * 100, "PDF")
    fail("bad/binary_junk.jpg", random_bytes(3000), "not an image")
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("TIFF", "tif"),
                        ("BMP", "bmp")):
        data = encode(noise, fmt)
        fail(f"bad/truncated.{suffix}", data[: len(data) // 2], f"cannot decode {fmt}")
    data = encode(noise, "JPEG", progressive=True)
    fail("bad/truncated_progressive.jpg", data[: len(data) // 2], "truncated")
    fail("bad/png_signature_then_garbage.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "PNG")
    fail("bad/jpeg_header_then_garbage.jpg", b"\xff\xd8\xff\xe0" + random_bytes(500), "JPEG")

    # Bombs: refused from the header (or by Pillow's chunk limits), fast and without the memory.
    fail("bomb/huge.png", png_bytes(100_000, 100_000), "too large")
    fail("bomb/huge.jpg", patched_jpeg_size(65_000, 65_000), "too large")
    fail("bomb/huge_screen.gif", patched_gif(screen=(65535, 65535)), "too large")
    fail("bomb/huge_frame.gif", patched_gif(frame=(60000, 60000)), "too large")
    fail("bomb/huge.tif", tiff_bytes({256: (4, [60000]), 257: (4, [60000]), 258: (3, [8]), 259: (3, [1]), 262: (3, [1]),
                                      277: (3, [1]), 278: (4, [60000])}, b"\0" * 64), "too large")
    fail("bomb/ztxt.png", png_bytes(4, 4, chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"\0" * (8 << 20)))),
         "decompression bomb")
    fail("bomb/iccp.png", png_bytes(4, 4, chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"\0" * (8 << 20)))),
         "decompression bomb")
    fail("bomb/jpeg_scans.jpg", jpeg_scan_bomb(300), "scans")

    # Names: spaces, quotes, newline, non-ASCII, non-UTF-8 bytes, upper case, a folder named x.jpg.
    small = encode(halves, "JPEG", quality=95)
    for name in ("names/with spaces & 'single' \"double\" quotes.jpg", "names/new\nline.jpg",
                 "names/ünïcödé 写真.jpg", "names/UPPER.JPEG", "names/folder.jpg/inside.jpg"):
        ok(name, small, size=(32, 24), colours=HALVES)
    if non_utf8_names:
        name = os.fsdecode(b"names/caf\xe9 latin-1.jpg")  # surrogate-escaped str, as os.walk gives it
        try:
            (root / name).write_bytes(small)
            cases.append(Case(name, "ok", size=(32, 24), colours=HALVES))
        except (OSError, UnicodeError):  # a filesystem that only takes UTF-8 names (macOS)
            pass

    # A file nobody may read: yielded by the walker, then a clean failure (root reads anything).
    locked = root / "unreadable/locked.jpg"
    locked.parent.mkdir()
    locked.write_bytes(small)
    os.chmod(locked, 0)
    readable = _can_read(locked)
    cases.append(Case("unreadable/locked.jpg", "ok" if readable else "fail", size=(32, 24),
                      reason=None if readable else "cannot read: Permission denied"))

    # Not yielded: links (a loop, a second way into a folder, a link to a file walked anyway, a
    # dangling one) and a FIFO, which must never be opened (a reader would block forever).
    links = root / "links"
    links.mkdir()
    (links / "loop").symlink_to("..")
    (links / "png_again").symlink_to("../png")
    (links / "astronaut_link.jpg").symlink_to("../good/astronaut.jpg")
    (links / "dangling.jpg").symlink_to("../nowhere.jpg")
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "links/fifo.jpg")
    return cases


def _can_read(path: Path) -> bool:
    try:
        path.open("rb").close()
        return True
    except PermissionError:
        return False


# --- image builders -----------------------------------------------------------------------------


HALVES = {(0.25, 0.5): RED, (0.75, 0.5): BLUE}


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def two_halves(left, right, size=(32, 24)) -> Image.Image:
    img = Image.new("RGB", size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def transparent_left(right, mode: str, size=(32, 24)) -> Image.Image:
    """Left half fully transparent (its colour green, which must not show), right half opaque."""
    img = Image.new("RGBA", size, (0, 255, 0, 0))
    img.paste(right + (255,), (size[0] // 2, 0, size[0], size[1]))
    return img.convert(mode)


def quadrants(width: int, height: int) -> Image.Image:
    img = Image.new("RGB", (width, height), RED)
    img.paste(GREEN, (width // 2, 0, width, height // 2))
    img.paste(BLUE, (0, height // 2, width // 2, height))
    img.paste(WHITE, (width // 2, height // 2, width, height))
    return img


def quadrant_colours(img: Image.Image) -> dict:
    w, h = img.size
    return {(x, y): img.getpixel((int(x * w), int(y * h))) for x in (0.25, 0.75) for y in (0.25, 0.75)}


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def garbage_exif() -> Image.Exif:
    """Readable structure, nonsense values: control characters, an impossible date, GPS
    rationals with zero denominators."""
    from PIL.TiffImagePlugin import IFDRational

    exif = Image.Exif()
    exif[0x010F] = "Ca\x01non\n"
    exif[0x0110] = "\x00\x00"
    exif.get_ifd(0x8769)[0x9003] = "0000:00:00 00:00:00"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (IFDRational(1, 0), IFDRational(0, 0), IFDRational(5, 0))
    gps[3], gps[4] = "E", (1.0, 2.0, 3.0)
    return exif


def exif_ifd_loop() -> bytes:
    """A TIFF-structured EXIF block whose IFD0, EXIF and GPS pointers all lead back to IFD0."""
    entries = [(0x0112, 3, 1, struct.pack("<HH", 6, 0)), (0x8769, 4, 1, struct.pack("<I", 8)),
               (0x8825, 4, 1, struct.pack("<I", 8))]
    body = b"".join(struct.pack("<HHI", tag, typ, count) + value for tag, typ, count, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)) + body + struct.pack("<I", 8)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, extra: bytes = b"") -> bytes:
    """An 8-bit RGB PNG declaring width x height whose data covers at most 4 rows (enough for
    bombs, which must be refused before decoding; complete for small images)."""
    rows = zlib.compress(b"\0" * (width * 3 + 1) * min(height, 4))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + extra + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def patched_jpeg_size(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def patched_gif(screen=None, frame=None) -> bytes:
    data = bytearray(encode(Image.new("P", (8, 8), 1), "GIF"))
    if screen:
        data[6:10] = struct.pack("<HH", *screen)
    if frame:
        at = data.index(b"\x2c")  # image descriptor
        data[at + 5 : at + 9] = struct.pack("<HH", *frame)
    return bytes(data)


def jpeg_scan_bomb(repeats: int) -> bytes:
    """A small progressive JPEG whose last scan is repeated: libjpeg decodes every repeat."""
    data = encode(Image.new("RGB", (64, 64), "gray"), "JPEG", progressive=True)
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:end] + data[last:end] * repeats + b"\xff\xd9"


# TIFF field types: 1 BYTE, 2 ASCII, 3 SHORT, 4 LONG, 5 RATIONAL, 10 SRATIONAL.
_TIFF_FORMATS = {1: "B", 2: "s", 3: "H", 4: "I", 5: "II", 10: "ii"}


def tiff_bytes(tags: dict[int, tuple[int, list]], pixels: bytes) -> bytes:
    """A little-endian TIFF with one IFD and one strip (Pillow cannot write 16-bit RGB or DNG).
    tags: {tag: (type, values)}, rationals as (numerator, denominator) pairs, ASCII as a str."""
    tags = {**tags, 273: (4, [0]), 279: (4, [len(pixels)])}  # StripOffsets (patched), StripByteCounts
    values = {}
    for tag, (typ, vals) in tags.items():
        if typ == 2:
            raw, count = vals.encode() + b"\0", len(vals) + 1
        else:
            flat = [v for pair in vals for v in pair] if typ in (5, 10) else list(vals)
            raw, count = struct.pack("<" + _TIFF_FORMATS[typ][0] * len(flat), *flat), len(vals)
        values[tag] = (typ, count, raw)
    data_at = 8 + 2 + 12 * len(tags) + 4
    table, extra = b"", b""
    for tag in sorted(values):
        typ, count, raw = values[tag]
        if len(raw) <= 4:
            field_ = raw.ljust(4, b"\0")
        else:
            field_ = struct.pack("<I", data_at + len(extra))
            extra += raw + b"\0" * (len(raw) % 2)
        table += struct.pack("<HHI", tag, typ, count) + field_
    strip_at = data_at + len(extra)
    at = table.index(struct.pack("<HHI", 273, 4, 1))  # patch StripOffsets now that it is known
    table = table[: at + 8] + struct.pack("<I", strip_at) + table[at + 12 :]
    return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + table + struct.pack("<I", 0) + extra + pixels


def tiff_rgb16(img: Image.Image) -> bytes:
    arr = np.asarray(img.convert("RGB"), dtype=np.uint16) * 257
    h, w = arr.shape[:2]
    tags = {256: (3, [w]), 257: (3, [h]), 258: (3, [16, 16, 16]), 259: (3, [1]), 262: (3, [2]),
            277: (3, [3]), 278: (3, [h])}
    return tiff_bytes(tags, arr.astype("<u2").tobytes())


def dng_bytes(width: int, height: int, orientation: int = 1) -> bytes:
    """A minimal uncompressed 16-bit DNG (RGGB mosaic of a reddish scene) that LibRaw decodes.
    LibRaw ignores images under 22 pixels a side."""
    cfa = np.zeros((height, width), np.uint16)
    cfa[0::2, 0::2], cfa[0::2, 1::2], cfa[1::2, 0::2], cfa[1::2, 1::2] = 50000, 20000, 20000, 5000
    identity = [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]
    tags = {
        254: (4, [0]), 256: (4, [width]), 257: (4, [height]), 258: (3, [16]), 259: (3, [1]),
        262: (3, [32803]),  # colour filter array
        271: (2, "Retriever"), 272: (2, "Test DNG"), 274: (3, [orientation]), 277: (3, [1]),
        278: (4, [height]), 284: (3, [1]),
        33421: (3, [2, 2]), 33422: (1, [0, 1, 1, 2]),  # CFA repeat pattern, RGGB
        50706: (1, [1, 4, 0, 0]), 50708: (2, "Retriever Test"), 50717: (4, [65535]),  # DNG version, model, white
        50721: (10, identity), 50728: (5, [(1, 1), (1, 1), (1, 1)]), 50778: (3, [21]),  # colour matrix, neutral, D65
    }
    return tiff_bytes(tags, cfa.astype("<u2").tobytes())
