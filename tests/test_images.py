"""Decoding: orientation, EXIF metadata, odd modes, and bad input that must fail cleanly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from retriever import images
from retriever.errors import ImageDecodeError
from tests.conftest import PHOTOS, jpeg_bytes


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
