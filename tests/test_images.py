"""Decoding: orientation, EXIF metadata, odd modes, and bad input that must fail cleanly."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from retriever import images
from retriever.errors import ImageDecodeError
from tests.conftest import PHOTOS, jpeg_bytes
from tests.corpus import AVIF_32x24, HEIC_32x24, dng_bytes, png_bytes


def with_exif(img: Image.Image, **tags) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = tags.get("make", "Canon")
    exif[0x0110] = tags.get("model", "EOS 5D")
    if "orientation" in tags:
        exif[0x0112] = tags["orientation"]
    exif.get_ifd(0x8769)[0x9003] = tags.get("taken", "2021:07:04 18:22:05")
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 29.6)
    gps[3], gps[4] = "W", (2.0, 17.0, 40.2)
    return jpeg_bytes(img, exif=exif)


def test_exif_metadata_is_read():
    decoded = images.decode(with_exif(Image.new("RGB", (40, 30), "red")))
    meta = decoded.meta
    assert meta["camera_make"] == "Canon" and meta["camera_model"] == "EOS 5D"
    assert meta["taken_at"] == "2021-07-04T18:22:05"
    assert meta["gps_lat"] == pytest.approx(48.858222, abs=1e-5)
    assert meta["gps_lon"] == pytest.approx(-2.294500, abs=1e-5)
    assert (meta["width"], meta["height"], meta["format"]) == (40, 30, "JPEG")


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), "white")
    img.paste((0, 0, 0), (0, 0, 10, 20))  # black band on the left
    decoded = images.decode(with_exif(img, orientation=6))  # rotate 90° clockwise to display
    assert decoded.image.size == (20, 40)
    assert (decoded.meta["width"], decoded.meta["height"]) == (20, 40)
    top = np.asarray(decoded.image)[:5].mean()
    bottom = np.asarray(decoded.image)[-5:].mean()
    assert top < 60 and bottom > 200  # the left band is now on top


def test_transparent_pixels_become_white_and_modes_become_rgb():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    out = images.decode(buf.getvalue()).image
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)

    grey16 = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))
    buf = io.BytesIO()
    grey16.save(buf, format="PNG")
    out = np.asarray(images.decode(buf.getvalue()).image)
    assert out.min() == 0 and out.max() == 255  # scaled by range, not clipped to white


def test_every_example_photo_decodes():
    for path in sorted(PHOTOS.iterdir()):
        if path.suffix in (".jpg", ".png", ".webp"):
            decoded = images.load(str(path))
            assert decoded.image.mode == "RGB" and min(decoded.image.size) > 100


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"definitely not an image",
        jpeg_bytes(Image.new("RGB", (64, 64), "blue"))[:200],  # truncated JPEG
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 50,  # PNG signature, garbage after
    ],
    ids=["empty", "text", "truncated-jpeg", "broken-png"],
)
def test_bad_bytes_raise_image_decode_error(data):
    with pytest.raises(ImageDecodeError):
        images.decode(data)


def test_too_many_pixels_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(ImageDecodeError, match="too large"):
        images.decode(jpeg_bytes(Image.new("RGB", (20, 20))))


def test_unreadable_file_is_a_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read"):
        images.load(str(tmp_path / "missing.jpg"))


def test_draft_decoding_keeps_full_size_metadata_and_enough_pixels():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    data = jpeg_bytes(big, quality=90)
    full = images.decode(data)
    small = images.decode(data, draft_min_side=224)
    assert full.image.size == (1600, 1200)
    assert min(small.image.size) >= 224 and small.image.size[0] < 1600  # decoded at 1/4 scale
    assert (small.meta["width"], small.meta["height"]) == (1600, 1200)
    png = io.BytesIO()
    big.save(png, format="PNG")
    assert images.decode(png.getvalue(), draft_min_side=224).image.size == (1600, 1200)  # JPEG only


# --- limits, optional decoders, odd modes (see also tests/test_corpus.py) -------------------------

def test_max_pixels_is_a_keyword_and_checked_from_the_header():
    data = jpeg_bytes(Image.new("RGB", (20, 20)))
    assert images.decode(data, max_pixels=400).image.size == (20, 20)
    with pytest.raises(ImageDecodeError, match=r"too large: 20x20 pixels \(limit 399 pixels\)"):
        images.decode(data, max_pixels=399)
    # A header declaring 144 MP with a few bytes of data: refused by our limit before any decoding
    # (Pillow's own guard, which would warn from 89 MP, stays out of the way).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageDecodeError, match="limit 100 MP"):
            images.decode(png_bytes(12_000, 12_000), max_pixels=100_000_000)
    assert Image.MAX_IMAGE_PIXELS is None  # max_pixels, not Pillow's global, decides


def test_load_takes_the_same_options(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes(Image.new("RGB", (20, 20))))
    with pytest.raises(ImageDecodeError, match="too large"):
        images.load(str(path), max_pixels=100)
    with pytest.raises(ImageDecodeError, match="too large to read"):
        images.load(str(path), max_bytes=10)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        images.load(str(tmp_path / "pipe.jpg"))


def test_reasons_for_missing_optional_decoders(monkeypatch):
    monkeypatch.setattr(images, "_pillow_formats", lambda: ("JPEG", "PNG"))
    monkeypatch.setattr(images, "_rawpy", lambda: None)
    with pytest.raises(ImageDecodeError) as heic:
        images.decode(HEIC_32x24, "IMG_0001.HEIC")
    assert str(heic.value) == "HEIC support needs: pip install pillow-heif"
    with pytest.raises(ImageDecodeError, match="AVIF support needs"):
        images.decode(AVIF_32x24, "x.avif")
    with pytest.raises(ImageDecodeError) as raw:
        images.decode(dng_bytes(64, 48), "DSC_0001.NEF")
    assert str(raw.value) == "camera RAW support needs: pip install 'retriever[raw]'"
    assert images.NEEDS_INSTALL in str(heic.value) and images.NEEDS_INSTALL in str(raw.value)


@pytest.mark.skipif(not images.optional_decoders()["raw"], reason="rawpy is not installed")
def test_raw_is_demosaiced_rotated_and_halved_for_drafts():
    data = dng_bytes(64, 48, orientation=6)
    full = images.decode(data, "x.dng")
    assert full.image.mode == "RGB" and full.image.size == (48, 64)  # LibRaw applied the rotation
    half = images.decode(data, "x.DNG", draft_min_side=16)
    assert half.image.size == (24, 32) and (half.meta["width"], half.meta["height"]) == (48, 64)
    assert half.meta["camera_make"] == "Retriever" and half.meta["format"] == "DNG"
    r, g, b = np.asarray(full.image).reshape(-1, 3).mean(axis=0)
    assert r > g and r > b  # the mosaic's reddish scene
    with pytest.raises(ImageDecodeError, match="too large"):
        images.decode(data, "x.dng", max_pixels=1000)


def test_suffixes_cover_optional_formats_whether_installed_or_not():
    from retriever.files import IMAGE_SUFFIXES, is_image_name

    suffixes = images.supported_suffixes()
    expected = {".jpg", ".png", ".heic", ".heif", ".avif", ".cr2", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2"}
    assert expected <= suffixes
    assert IMAGE_SUFFIXES >= suffixes and is_image_name("IMG_0001.HEIC") and is_image_name("x.Dng")


@pytest.mark.parametrize("mode", ["PA", "La", "RGBa", "LA", "RGBA"])
def test_every_alpha_mode_is_composited_on_white(mode):
    rgba = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    rgba.putpixel((3, 1), (0, 0, 0, 255))
    if mode == "PA":  # alpha band of a palette image
        src = rgba.convert("P").convert("PA")
        src.putalpha(rgba.getchannel("A"))
    else:  # (Pillow converts to La only from LA)
        src = rgba.convert("LA").convert(mode) if mode == "La" else rgba.convert(mode)
    out = images.to_rgb(src)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((3, 1)) == (0, 0, 0)


def test_float_and_32_bit_images_are_scaled_and_nan_is_black():
    arr = np.array([[np.nan, 0.0], [0.5, 1.0]], dtype=np.float32)
    out = np.asarray(images.to_rgb(Image.fromarray(arr, "F")))[..., 0]
    assert out.tolist() == [[0, 0], [128, 255]]
    ints = Image.fromarray(np.array([[-5, 5]], dtype=np.int32), "I")
    assert np.asarray(images.to_rgb(ints))[0, :, 0].tolist() == [0, 255]


def test_truncated_files_fail_instead_of_decoding_half_grey():
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # the policy relies on Pillow's default
    data = jpeg_bytes(Image.new("RGB", (64, 64), "red"), quality=90)
    for cut in (len(data) // 3, len(data) - 10, len(data) - 2):  # -2: everything but the EOI marker
        with pytest.raises(ImageDecodeError, match="(?i)truncated"):
            images.decode(data[:cut])


def test_library_errors_are_single_lines_naming_the_format():
    with pytest.raises(ImageDecodeError) as exc:
        images.decode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "x.png")
    assert str(exc.value) == "cannot decode PNG: damaged file"
    assert images._one_line(ValueError(b"Unsupported file\nformat")) == "Unsupported file format"
