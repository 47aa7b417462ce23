"""Semantic behaviour on real photos with the offline encoder (pip-shipped weights, no network)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from retriever.search import Searcher
from tests.conftest import PHOTOS


@pytest.fixture(scope="module")
def searcher(offline_index, offline_encoder):
    return Searcher(offline_index, encoder=offline_encoder)


def names(hits):
    return [os.path.basename(h.path) for h in hits]


@pytest.mark.parametrize(
    "query,expected",
    [
        ("a cat", "chelsea.png"),
        ("a cup of coffee", "coffee.jpg"),
        ("a rocket launch", "rocket.jpg"),
        ("an astronaut", "astronaut.jpg"),
        ("a brick wall", "brick.png"),
        ("a flower", "flower.jpg"),
    ],
)
def test_text_query_ranks_the_right_photo_first(searcher, query, expected):
    assert names(searcher.text(query, k=3))[0] == expected


def test_offline_vectors_are_normalised_and_text_is_in_the_same_space(offline_encoder):
    img = offline_encoder.embed_images([Image.open(PHOTOS / "chelsea.png").convert("RGB")])
    txt = offline_encoder.embed_texts(["a cat", "a cup of coffee"])
    assert img.shape == (1, offline_encoder.dim) and txt.shape == (2, offline_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    assert float(img[0] @ txt[0]) > float(img[0] @ txt[1])


# Run without the hub switched off: the libraries first (torch sets variables of its own), then
# the offline encoder, with every connection refused and counted.
OFFLINE_ALONE = """
import os, socket
import sentence_transformers, torch, torchvision, transformers
tried = []
def refuse(*args, **kwargs):
    tried.append(args[:1])
    raise OSError("no network in this test")
socket.create_connection = socket.getaddrinfo = refuse
before = dict(os.environ)
from retriever.encoders.offline import OfflineEncoder
OfflineEncoder(device="cpu").embed_texts(["a cat"])
assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
assert tried == [], tried
"""


def test_the_offline_encoder_neither_asks_the_hub_nor_switches_it_off():
    """Its MiniLM loads from the pip package's folder, and the process's environment stays as it
    was (HF_HUB_OFFLINE set behind the user's back would make a later hub probe fail)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_ALONE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def degraded_copy(path, tmp_path, name):
    """Resized, re-encoded, slightly cropped and brightened: the same photo, different bytes."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    img = img.crop((int(0.06 * w), int(0.04 * h), int(0.96 * w), int(0.97 * h)))
    img = img.resize((int(img.width * 0.55), int(img.height * 0.55)), Image.BICUBIC)
    img = ImageEnhance.Brightness(img).enhance(1.15)
    out = tmp_path / name
    img.save(out, format="JPEG", quality=70)
    return out


@pytest.mark.parametrize("photo", ["chelsea.png", "coffee.jpg", "china.jpg", "coins.png", "grass.png", "retina.jpg"])
def test_similar_finds_the_original_of_a_modified_copy(searcher, tmp_path, photo):
    copy = degraded_copy(PHOTOS / photo, tmp_path, "copy.jpg")
    assert names(searcher.image(str(copy), k=3))[0] == photo


def test_similar_on_a_collection_photo_leaves_it_out(searcher):
    hits = searcher.image(str(PHOTOS / "chelsea.png"), k=20)
    assert "chelsea.png" not in names(hits) and len(hits) == 14
