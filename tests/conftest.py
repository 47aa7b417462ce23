"""Shared fixtures. No test touches the network: the hub is switched off and every model is
either the offline encoder (pip-shipped weights) or a tiny open_clip architecture with seeded
random weights saved to a local file, loaded through the same --pretrained FILE path as a
user's downloaded weights."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# No search in a test (nor a `retriever` subprocess it starts) leaves a warm daemon behind;
# tests/test_daemon.py starts its own, with short idle timeouts, and stops them.
os.environ["RETRIEVER_NO_DAEMON"] = "1"
# The shared ONNX model cache of the indexes the session fixtures build (each test gets its own
# below): never the user's ~/.cache.
os.environ["RETRIEVER_CACHE_DIR"] = __import__("tempfile").mkdtemp(prefix="retriever-test-cache-")
# The tag vocabulary's text vectors (retriever/tag_vocabulary.py), keyed by model: computed once
# for the whole session and shared by every test's own cache (a symlink), as a user's machine
# computes them once per model.
SHARED_TAG_VOCABULARY = __import__("tempfile").mkdtemp(prefix="retriever-test-vocabulary-")

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "examples" / "photos"

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_NAME = "retriever-tiny-test"


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run where torch sees a CUDA GPU and are skipped elsewhere."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch, request):
    """Each test gets its own index home and cache: nothing leaks between tests or to ~."""
    monkeypatch.setenv("RETRIEVER_HOME", str(tmp_path / "home"))
    if request.node.get_closest_marker("cuda") is None:  # on a GPU machine too, `auto` means the CPU
        monkeypatch.setenv("RETRIEVER_DEVICE", "cpu")  # (subprocesses inherit it)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # beside tmp_path, not in it: tests look at what they write there
    cache = tmp_path.parent / f"{tmp_path.name}-model-cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    vocabulary = cache / "tag-vocabulary"
    if not vocabulary.exists():
        vocabulary.symlink_to(SHARED_TAG_VOCABULARY, target_is_directory=True)
    monkeypatch.setenv("RETRIEVER_CACHE_DIR", str(cache))


@pytest.fixture(scope="session")
def photos() -> Path:
    return PHOTOS


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> dict[str, str]:
    """A tiny open_clip model: config JSON registered through add_model_config, seeded random
    weights saved as .pt and .safetensors."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny-clip")
    config = folder / f"{TINY_NAME}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_NAME)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "tiny.pt")
    save_file(state, str(folder / "tiny.safetensors"))
    return {
        "config": str(config),
        "name": TINY_NAME,
        "pt": str(folder / "tiny.pt"),
        "safetensors": str(folder / "tiny.safetensors"),
    }


@pytest.fixture(scope="session")
def offline_encoder():
    from retriever.encoders import ModelSpec, create_encoder

    return create_encoder(ModelSpec(name="offline", device="cpu"))


@pytest.fixture(scope="session")
def offline_index(tmp_path_factory, offline_encoder):
    """The example photos indexed once with the offline encoder (read-only for tests)."""
    from retriever.encoders import ModelSpec
    from retriever.index import Index
    from retriever.indexer import run_index

    home = tmp_path_factory.mktemp("offline-home")
    spec = ModelSpec(name="offline")
    index = Index.create(home, "default", spec, offline_encoder.model_id, offline_encoder.dim)
    index.acquire_lock()
    run_index(index, offline_encoder, [str(PHOTOS)])
    index.release_lock()
    yield index
    index.close()


@pytest.fixture(scope="module")
def one_faiss_thread():
    """FAISS on one thread for a module (small indexes on 2 shared cores run faster so; results
    do not depend on it). Modules use it with `pytestmark = pytest.mark.usefixtures(...)`."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture
def offline_copy(tmp_path, offline_index):
    """A writable copy of the session's indexed example photos: the home folder holding it."""
    home = tmp_path / "home"
    shutil.copytree(offline_index.folder, home / "default", ignore=shutil.ignore_patterns("write.lock"))
    return home


def copy_photos(dest: Path, names: list[str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(PHOTOS.iterdir()):
        if p.suffix.lower() in (".jpg", ".png", ".webp") and (names is None or p.name in names):
            shutil.copy2(p, dest / p.name)
    return dest


def jpeg_bytes(image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip):
    from retriever.encoders import ModelSpec, create_encoder

    return create_encoder(ModelSpec(tiny_clip["config"], tiny_clip["pt"], device="cpu", batch_size=4))


@pytest.fixture
def tiny_index(tmp_path, tiny_clip, tiny_encoder):
    """A new, empty index with the tiny model, holding the writer lock."""
    from retriever.encoders import ModelSpec
    from retriever.index import Index

    spec = ModelSpec(tiny_clip["config"], tiny_clip["pt"])
    index = Index.create(tmp_path / "home", "default", spec, tiny_encoder.model_id, tiny_encoder.dim)
    index.acquire_lock()
    yield index
    index.close()
