"""The indexing pipeline: incremental runs, bad files, interruption, and catalog/FAISS agreement."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from retriever.errors import IndexLockedError
from retriever.index import Index
from retriever.indexer import run_index
from retriever.search import Searcher
from tests.conftest import copy_photos, jpeg_bytes


def stored(index):
    ids, vecs = zip(*index.catalog.iter_vectors(index.dim))
    return np.concatenate(ids), np.concatenate(vecs)


def assert_faiss_matches_brute_force(index, queries):
    ids, vecs = stored(index)
    vi = index.vector_index()
    assert len(vi) == len(ids)
    scores, found = vi.search(queries, 5)
    for q in range(len(queries)):
        ref = ids[np.argsort(-(vecs @ queries[q]), kind="stable")[:5]]
        assert list(found[q]) == list(ref)


def test_first_run_indexes_every_photo_and_agrees_with_brute_force(tmp_path, tiny_index, tiny_encoder):
    col = copy_photos(tmp_path / "col")
    summary = run_index(tiny_index, tiny_encoder, [str(col)])
    n = len(list(col.iterdir()))
    assert (summary.added, summary.failed, summary.unchanged) == (n, 0, 0)
    status = tiny_index.status()
    assert status["images"] == status["vectors"] == n and status["vector_index_current"]
    queries = tiny_encoder.embed_texts(["a cat", "coffee", "space"])
    assert_faiss_matches_brute_force(tiny_index, queries)
    # Stored vectors are the encoder's vectors for those files.
    row = tiny_index.catalog.find_by_path(str(col / "chelsea.png"))
    vec = tiny_index.catalog.vectors_for([row["id"]], tiny_index.dim)[row["id"]]
    np.testing.assert_allclose(vec, tiny_encoder.embed_images([Image.open(col / "chelsea.png").convert("RGB")])[0],
                               atol=1e-5)


def test_second_run_encodes_nothing_and_changes_are_tracked(tmp_path, tiny_index, tiny_encoder, monkeypatch):
    col = copy_photos(tmp_path / "col")
    n = len(list(col.iterdir()))
    run_index(tiny_index, tiny_encoder, [str(col)])

    import retriever.indexer as indexer

    real_prepare = indexer._prepare
    monkeypatch.setattr(indexer, "_prepare", lambda *a: pytest.fail("an unchanged file was read"))
    again = run_index(tiny_index, tiny_encoder, [str(col)])
    assert (again.unchanged, again.indexed, again.removed) == (n, 0, 0)
    monkeypatch.setattr(indexer, "_prepare", real_prepare)

    # Change one file's content, delete another.
    old = tiny_index.catalog.find_by_path(str(col / "coffee.jpg"))
    Image.open(col / "chelsea.png").convert("RGB").save(col / "coffee.jpg")
    os.utime(col / "coffee.jpg", ns=(old["mtime_ns"] + 10**9, old["mtime_ns"] + 10**9))
    (col / "rocket.jpg").unlink()
    third = run_index(tiny_index, tiny_encoder, [str(col)])
    assert (third.updated, third.removed, third.added, third.unchanged) == (1, 1, 0, n - 2)
    new = tiny_index.catalog.find_by_path(str(col / "coffee.jpg"))
    assert new["id"] == old["id"] and new["fingerprint"] != old["fingerprint"]
    assert tiny_index.catalog.find_by_path(str(col / "rocket.jpg")) is None
    status = tiny_index.status()
    assert status["images"] == status["vectors"] == n - 1
    hits = Searcher(tiny_index, encoder=tiny_encoder).text("a rocket", k=50)
    assert str(col / "rocket.jpg") not in {h.path for h in hits}
    assert_faiss_matches_brute_force(tiny_index, tiny_encoder.embed_texts(["x", "y"]))


def test_bad_files_are_recorded_and_never_stop_the_run(tmp_path, tiny_index, tiny_encoder):
    col = copy_photos(tmp_path / "col", ["chelsea.png", "coffee.jpg"])
    (col / "truncated.jpg").write_bytes(jpeg_bytes(Image.new("RGB", (300, 300), "red"))[:400])
    (col / "notes.jpg").write_text("I am text, not a JPEG")
    (col / "empty.png").write_bytes(b"")
    summary = run_index(tiny_index, tiny_encoder, [str(col)])
    assert (summary.added, summary.failed) == (2, 3)
    failures = {os.path.basename(f["path"]): f["error"] for f in tiny_index.catalog.failures()}
    assert set(failures) == {"truncated.jpg", "notes.jpg", "empty.png"}
    assert all(reason and "\n" not in reason for reason in failures.values())
    status = tiny_index.status()
    assert (status["images"], status["vectors"], status["failed"]) == (2, 2, 3)

    # Unchanged bad files are not retried; a repaired one is.
    assert run_index(tiny_index, tiny_encoder, [str(col)]).failed == 0
    Image.new("RGB", (50, 50), "green").save(col / "notes.jpg")
    fixed = run_index(tiny_index, tiny_encoder, [str(col)])
    assert fixed.updated == 1 and tiny_index.status()["failed"] == 2


def test_interrupt_keeps_committed_batches_and_rerun_completes(tmp_path, tiny_index, tiny_encoder, monkeypatch):
    col = copy_photos(tmp_path / "col")
    n = len(list(col.iterdir()))
    real = tiny_encoder.embed_preprocessed
    calls = {"n": 0}

    def interrupt_on_third_batch(items):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(items)

    monkeypatch.setattr(tiny_encoder, "embed_preprocessed", interrupt_on_third_batch)
    first = run_index(tiny_index, tiny_encoder, [str(col)])
    assert first.interrupted and first.added == 2 * tiny_encoder.batch_size
    status = tiny_index.status()
    assert status["images"] == status["vectors"] == first.added
    assert tiny_index.catalog.last_run()["status"] == "interrupted"

    monkeypatch.setattr(tiny_encoder, "embed_preprocessed", real)
    second = run_index(tiny_index, tiny_encoder, [str(col)])
    assert (second.added, second.unchanged) == (n - first.added, first.added)
    ids, _ = stored(tiny_index)
    assert len(ids) == len(set(ids.tolist())) == n
    paths = {r["path"] for r in tiny_index.catalog.image_rows(ids.tolist()).values()}
    assert paths == {str(p) for p in col.iterdir()}


def test_faiss_file_is_rebuilt_when_missing_or_stale(tmp_path, tiny_index, tiny_encoder):
    col = copy_photos(tmp_path / "col")
    run_index(tiny_index, tiny_encoder, [str(col)])
    queries = tiny_encoder.embed_texts(["a", "b"])
    before = tiny_index.vector_index().search(queries, 5)[1]
    tiny_index.vectors_path.unlink()
    assert tiny_index.status()["vector_index_current"] is False
    np.testing.assert_array_equal(tiny_index.vector_index().search(queries, 5)[1], before)
    assert tiny_index.status()["vector_index_current"] is True  # the writer saved the rebuilt file


def test_one_writer_per_index(tiny_index):
    other = Index.open(tiny_index.folder.parent, tiny_index.name)
    with pytest.raises(IndexLockedError, match=f"pid {os.getpid()}"):
        other.acquire_lock()
    tiny_index.release_lock()
    other.acquire_lock()  # free again once released
    other.close()


def test_same_file_through_two_roots_is_indexed_once(tmp_path, tiny_index, tiny_encoder):
    col = copy_photos(tmp_path / "col", ["chelsea.png"])
    summary = run_index(tiny_index, tiny_encoder, [str(col), str(col / "chelsea.png")])
    assert summary.added == 1
