"""A real SIGKILL of a real indexing subprocess at several points, then a resume: the result must
be the catalog and vectors of an uninterrupted run (every file exactly once, no orphan or
duplicate vectors, nothing lost)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

from retriever.index import Index
from tests.conftest import PHOTOS

pytestmark = pytest.mark.slow

N_IMAGES = 72


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """72 distinct photos: the example photos cropped, mirrored and rotated."""
    folder = tmp_path_factory.mktemp("crash-col")
    sources = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png", ".webp"))
    for i in range(N_IMAGES):
        img = Image.open(sources[i % len(sources)]).convert("RGB")
        variant = i // len(sources)
        img = img.crop((variant * 7, variant * 5, img.width - variant * 3, img.height - variant * 4))
        if variant % 2:
            img = ImageOps.mirror(img)
        img = img.rotate(variant * 3, expand=True).resize((640, 480))
        sub = folder / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        img.save(sub / f"photo {i:03d}.jpg", quality=85)
    return folder


def index_cmd(collection, home, tiny_clip):
    return [sys.executable, "-m", "retriever", "index", str(collection), "--home", str(home),
            "--model", tiny_clip["config"], "--pretrained", tiny_clip["pt"], "--batch-size", "2",
            "--workers", "2", "-q"]


def stored_vectors(home) -> dict[str, np.ndarray]:
    index = Index.open(home, "default")
    try:
        status = index.status()
        ids, vecs = [], []
        for i, v in index.catalog.iter_vectors(index.dim):
            ids.extend(i.tolist())
            vecs.extend(v)
        assert len(ids) == len(set(ids)), "duplicate vectors"
        rows = index.catalog.image_rows(ids)
        assert set(rows) == set(ids), "orphan vectors"
        paths = [rows[i]["path"] for i in ids]
        assert len(paths) == len(set(paths)), "a file indexed twice"
        assert status["images"] == status["vectors"] == len(ids)
        faiss_index = index.vector_index()
        assert len(faiss_index) == len(ids)
        query = np.stack(vecs[:3])
        _, found = faiss_index.search(query, 1)
        assert found[:, 0].tolist() == ids[:3]  # each vector finds itself
        return dict(zip(paths, vecs))
    finally:
        index.close()


def count_vectors(db) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.fixture(scope="module")
def reference(collection, tiny_clip, tiny_encoder, tmp_path_factory):
    """An uninterrupted run (in this process: the same pipeline, see test_indexer for threads vs
    processes giving the same vectors)."""
    from retriever.encoders import ModelSpec
    from retriever.indexer import run_index

    home = tmp_path_factory.mktemp("crash-ref")
    index = Index.create(home, "default", ModelSpec(tiny_clip["config"], tiny_clip["pt"]),
                         tiny_encoder.model_id, tiny_encoder.dim)
    index.acquire_lock()
    run_index(index, tiny_encoder, [str(collection)])
    index.close()
    vectors = stored_vectors(home)
    assert len(vectors) == N_IMAGES
    return vectors


@pytest.mark.parametrize("kill_after_vectors", [0, 40])  # before any vector; in the middle of the run
def test_sigkill_then_resume_equals_an_uninterrupted_run(collection, tiny_clip, reference, tmp_path,
                                                         kill_after_vectors):
    home = tmp_path / "home"
    db = home / "default" / "catalog.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(index_cmd(collection, home, tiny_clip), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if kill_after_vectors == 0 and db.exists():
            break  # the index exists, nothing encoded yet (or hardly)
        if kill_after_vectors and count_vectors(db) >= kill_after_vectors:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the process and its decode workers
    proc.wait(timeout=30)
    killed_at = count_vectors(db)
    assert killed_at < N_IMAGES
    if db.exists():  # a reader meanwhile sees exactly the last checkpoint
        from retriever.search import Searcher

        reader = Index.open(home, "default")
        assert len(reader.vector_index()) == killed_at
        if killed_at:
            vec = next(reader.catalog.iter_vectors(reader.dim))[1][0]
            assert len(Searcher(reader).by_vector(vec, k=N_IMAGES)) == killed_at
        reader.close()

    # Resume. The killed run's lock must not block it.
    done = subprocess.run(index_cmd(collection, home, tiny_clip) + ["--json"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = stored_vectors(home)
    assert after.keys() == reference.keys()
    for path, vec in reference.items():
        np.testing.assert_allclose(after[path], vec, atol=1e-5)
    index = Index.open(home, "default")
    runs = [index.catalog.last_run()["status"]]
    index.close()
    assert runs == ["completed"]
