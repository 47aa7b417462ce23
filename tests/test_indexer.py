"""The indexing pipeline: incremental runs, bad files, interruption, and catalog/FAISS agreement."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from retriever.errors import IndexLockedError
from retriever.index import Index
from retriever.indexer import IndexOptions, run_index
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
    by_id = dict(zip(ids.tolist(), vecs))
    for q in range(len(queries)):
        exact = np.sort(vecs @ queries[q])[::-1][:5]
        np.testing.assert_allclose(scores[q], exact, atol=1e-5)  # the best 5 scores, ties allowed
        for i, score in zip(found[q], scores[q]):
            assert abs(float(by_id[int(i)] @ queries[q]) - score) < 1e-5  # each id really has its score
        assert len(set(found[q].tolist())) == 5


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


def test_second_run_reads_nothing_and_loads_no_model(tmp_path, tiny_index, tiny_encoder, monkeypatch):
    col = copy_photos(tmp_path / "col")
    n = len(list(col.iterdir()))
    run_index(tiny_index, tiny_encoder, [str(col)])

    import retriever.indexer as indexer

    monkeypatch.setattr(indexer, "prepare", lambda *a: pytest.fail("an unchanged file was read"))
    again = run_index(tiny_index, lambda: pytest.fail("the model was loaded"), [str(col)])
    assert (again.unchanged, again.indexed, again.removed, again.moved) == (n, 0, 0, 0)


def test_changed_moved_copied_touched_and_deleted_files(tmp_path, tiny_index, tiny_encoder, monkeypatch):
    col = copy_photos(tmp_path / "col")
    n = len(list(col.iterdir()))
    run_index(tiny_index, tiny_encoder, [str(col)])
    cat = tiny_index.catalog
    before = {p: cat.find_by_path(str(col / p)) for p in ("coffee.jpg", "brick.png", "rocket.jpg", "flower.jpg")}

    # changed content; moved into a subfolder; copied; touched (new mtime, same bytes); deleted
    Image.open(col / "chelsea.png").convert("RGB").save(col / "coffee.jpg")
    os.utime(col / "coffee.jpg", ns=(before["coffee.jpg"]["mtime_ns"] + 10**9,) * 2)
    (col / "sub").mkdir()
    os.rename(col / "brick.png", col / "sub" / "wall.png")
    shutil.copy(col / "rocket.jpg", col / "sub" / "rocket copy.jpg")
    os.utime(col / "flower.jpg", ns=(before["flower.jpg"]["mtime_ns"] + 10**9,) * 2)
    (col / "china.jpg").unlink()

    encoded = []
    real = tiny_encoder.embed_preprocessed
    monkeypatch.setattr(tiny_encoder, "embed_preprocessed", lambda items: encoded.extend(items) or real(items))
    s = run_index(tiny_index, tiny_encoder, [str(col)])
    assert (s.updated, s.moved, s.added, s.copied, s.removed, s.failed) == (1, 1, 1, 1, 1, 0)
    assert s.unchanged == n - 3  # coffee changed, brick moved, china deleted; flower counts (same bytes)
    assert len(encoded) == 1  # only the changed file was encoded

    moved = cat.find_by_path(str(col / "sub" / "wall.png"))
    assert moved["id"] == before["brick.png"]["id"] and cat.find_by_path(str(col / "brick.png")) is None
    copy = cat.find_by_path(str(col / "sub" / "rocket copy.jpg"))
    assert copy["id"] != before["rocket.jpg"]["id"] and copy["width"] == before["rocket.jpg"]["width"]
    vecs = cat.vectors_for([copy["id"], before["rocket.jpg"]["id"]], tiny_index.dim)
    np.testing.assert_array_equal(vecs[copy["id"]], vecs[before["rocket.jpg"]["id"]])
    coffee = cat.find_by_path(str(col / "coffee.jpg"))
    assert coffee["id"] == before["coffee.jpg"]["id"] and coffee["fingerprint"] != before["coffee.jpg"]["fingerprint"]
    flower = cat.find_by_path(str(col / "flower.jpg"))
    assert flower["mtime_ns"] == before["flower.jpg"]["mtime_ns"] + 10**9
    assert cat.find_by_path(str(col / "china.jpg")) is None

    status = tiny_index.status()
    assert status["images"] == status["vectors"] == n  # -1 deleted, +1 copy
    hits = Searcher(tiny_index, encoder=tiny_encoder).text("a palace", k=50)
    assert str(col / "china.jpg") not in {h.path for h in hits}
    assert_faiss_matches_brute_force(tiny_index, tiny_encoder.embed_texts(["x", "y"]))


def test_worker_processes_give_the_same_vectors_as_threads(tmp_path, tiny_clip, tiny_encoder):
    from retriever.encoders import ModelSpec
    from retriever.indexer import IndexOptions

    col = copy_photos(tmp_path / "col")
    results = {}
    for pool in ("thread", "process"):
        index = Index.create(tmp_path / pool, "default", ModelSpec(tiny_clip["config"], tiny_clip["pt"]),
                             tiny_encoder.model_id, tiny_encoder.dim)
        index.acquire_lock()
        summary = run_index(index, tiny_encoder, [str(col)], IndexOptions(pool=pool, workers=2))
        assert summary.added == len(list(col.iterdir()))
        ids, vecs = stored(index)
        paths = index.catalog.image_rows(ids.tolist())
        results[pool] = {paths[i]["path"]: v for i, v in zip(ids.tolist(), vecs)}
        index.close()
    assert results["thread"].keys() == results["process"].keys()
    for path, vec in results["thread"].items():
        np.testing.assert_allclose(results["process"][path], vec, atol=1e-6)


def test_retry_failed_reads_unchanged_failures_again(tmp_path, tiny_index, tiny_encoder):
    from retriever.indexer import IndexOptions

    col = copy_photos(tmp_path / "col", ["chelsea.png"])
    (col / "bad.jpg").write_bytes(b"nope")
    assert run_index(tiny_index, tiny_encoder, [str(col)]).failed == 1
    assert run_index(tiny_index, tiny_encoder, [str(col)]).failed == 0
    again = run_index(tiny_index, tiny_encoder, [str(col)], IndexOptions(retry_failed=True))
    assert again.failed == 1 and again.unchanged == 1


def test_unreachable_files_are_never_dropped(tmp_path, tiny_index, tiny_encoder, monkeypatch):
    col = copy_photos(tmp_path / "col", ["chelsea.png", "coffee.jpg"])
    run_index(tiny_index, tiny_encoder, [str(col)])
    import retriever.indexer as indexer

    # The walk no longer sees coffee.jpg, but stat says "permission denied", not "no such file".
    real_walk = indexer.walk
    monkeypatch.setattr(indexer, "walk", lambda *a, **k: (e for e in real_walk(*a, **k) if "coffee" not in e.path))
    real_stat = os.stat
    monkeypatch.setattr(indexer.os, "stat", lambda p, *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied"))
                        if "coffee" in str(p) else real_stat(p, *a, **k))
    assert run_index(tiny_index, tiny_encoder, [str(col)]).removed == 0
    assert tiny_index.catalog.find_by_path(str(col / "coffee.jpg")) is not None


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


def test_a_file_that_kills_its_worker_is_recorded_and_costs_no_other_file(tmp_path, tiny_index, tiny_encoder,
                                                                            monkeypatch):
    from retriever.indexer import IndexOptions
    from tests.crashy import DiesOnPureRed

    col = copy_photos(tmp_path / "col")
    Image.new("RGB", (64, 48), (255, 0, 0)).save(col / "killer.png")
    real = tiny_encoder.preprocessor()
    monkeypatch.setattr(tiny_encoder, "preprocessor", lambda: DiesOnPureRed(real))
    summary = run_index(tiny_index, tiny_encoder, [str(col)], IndexOptions(pool="process", workers=2))
    n = len(list(col.iterdir()))
    assert (summary.added, summary.failed) == (n - 1, 1)
    assert summary.failures == [(str(col / "killer.png"), "the decoder crashed on this file")]
    status = tiny_index.status()
    assert status["images"] == status["vectors"] == n - 1


def test_the_whole_corpus_runs_through_the_indexer(tmp_path, tiny_index, tiny_encoder):
    """Every case of the generated corpus (damaged files, bombs, odd modes and names, links, a
    FIFO) next to good photos: each file is indexed or recorded with a reason, nothing stops the
    run, and every good photo is searchable afterwards."""
    from retriever.indexer import IndexOptions
    from tests.corpus import make_corpus

    root = tmp_path / "corpus"
    expected = make_corpus(root)
    summary = run_index(tiny_index, tiny_encoder, [str(root)], IndexOptions(pool="process", workers=2))
    ok = {str(root / rel) for rel, outcome in expected.items() if outcome == "ok"}
    bad = {str(root / rel) for rel, outcome in expected.items() if outcome == "fail"}
    assert (summary.added, summary.failed) == (len(ok), len(bad))
    failures = {f["path"]: f["error"] for f in tiny_index.catalog.failures()}
    assert set(failures) == bad and all(reason and "\n" not in reason for reason in failures.values())
    ids, _ = stored(tiny_index)
    assert {r["path"] for r in tiny_index.catalog.image_rows(ids.tolist()).values()} == ok
    hits = Searcher(tiny_index, encoder=tiny_encoder).text("a photo", k=len(ok) + 10)
    assert {h.path for h in hits} == ok
    again = run_index(tiny_index, tiny_encoder, [str(root)])
    assert (again.unchanged, again.indexed, again.failed, again.removed) == (len(expected), 0, 0, 0)


def test_files_missing_a_decoder_are_retried_once_it_is_installed(tmp_path, tiny_index, tiny_encoder, monkeypatch):
    import retriever.indexer as indexer
    from retriever import images

    if not images.optional_decoders()["heif"]:
        pytest.skip("pillow-heif is not installed")
    col = copy_photos(tmp_path / "col", ["chelsea.png"])
    Image.open(col / "chelsea.png").save(col / "phone.heic")

    def without_heif(data, name, **kw):
        if name.endswith(".heic"):
            raise images.ImageDecodeError(images.HEIF_MISSING)
        return images.decode(data, name, **kw)

    installed = images.optional_decoders()
    monkeypatch.setattr(indexer, "decode", without_heif)
    monkeypatch.setattr(indexer, "optional_decoders", lambda: {**installed, "heif": False})
    threads = IndexOptions(pool="thread")
    assert run_index(tiny_index, tiny_encoder, [str(col)], threads).failed == 1
    assert run_index(tiny_index, tiny_encoder, [str(col)], threads).unchanged == 2  # still missing: not retried
    monkeypatch.setattr(indexer, "decode", images.decode)  # pillow-heif "installed" now
    monkeypatch.setattr(indexer, "optional_decoders", lambda: installed)
    fixed = run_index(tiny_index, tiny_encoder, [str(col)], threads)
    assert (fixed.updated, fixed.failed) == (1, 0)


def test_pool_choice():
    from retriever.indexer import PROCESS_MIN_FILES, choose_pool

    many = PROCESS_MIN_FILES
    assert choose_pool("auto", many, "cpu") == "thread"  # the forward pass shares the cores
    assert choose_pool("auto", many, "cuda") == "process"  # decoding is the bottleneck
    assert choose_pool("auto", 3, "cuda") == "thread"  # not worth starting processes
    assert choose_pool("auto", 3, "cpu", after_crash=True) == "process"  # contain the file that killed the last run
    assert choose_pool("thread", many, "cuda", after_crash=True) == "thread"  # the user's word wins


def test_thread_tuner_keeps_the_split_that_produces_more_and_restores_torch(monkeypatch):
    import torch

    import retriever.indexer as indexer

    original = torch.get_num_threads()
    monkeypatch.setattr(indexer.os, "cpu_count", lambda: original + 1)
    tuner = indexer._ThreadTuner(workers=original, batches=10)  # lean = 1 thread, vs the original
    if not tuner.candidates:
        pytest.skip("one thread already")
    assert tuner.slots == [0, 1, 1, 0]  # A B B A
    # (time, results produced so far) at the end of the warm-up batch and of each trial batch:
    # original 32 in 2 s; lean 8 in 1 s (a batch drawn from a backlog), then 60 in 2 s; original 32 in 2 s.
    marks = [(0.0, 32), (2.0, 64), (3.0, 72), (5.0, 132), (7.0, 164)]
    clock = iter(t for t, _ in marks for _ in (0, 1))
    monkeypatch.setattr(indexer.time, "monotonic", lambda: next(clock))
    for i, (_, produced) in enumerate(marks):
        tuner.batch_done(produced)
        if i < len(marks) - 1:
            assert torch.get_num_threads() == tuner.candidates[tuner.slots[i]]
    # original: 32 + 32 in 4 s = 16/s; lean: 8 + 60 in 3 s = 22.7/s
    assert tuner.report == {"torch_threads": 1, "tried": {str(original): 16.0, "1": 22.67}}
    assert torch.get_num_threads() == 1
    tuner.batch_done(200)  # decided: nothing changes any more
    assert torch.get_num_threads() == 1
    tuner.restore()
    assert torch.get_num_threads() == original


def test_thread_tuner_does_not_reward_a_backlog(monkeypatch):
    """A split that only used up results decoded earlier produced little: it is not chosen."""
    import torch

    import retriever.indexer as indexer

    original = torch.get_num_threads()
    monkeypatch.setattr(indexer.os, "cpu_count", lambda: original + 1)
    tuner = indexer._ThreadTuner(workers=original, batches=6)
    if not tuner.candidates:
        pytest.skip("one thread already")
    assert tuner.slots == [0, 1]
    # original ran its batch fast (1 s) on a backlog, producing 10 new results; lean 2 s, 40.
    marks = [(0.0, 64), (1.0, 74), (3.0, 114)]
    clock = iter(t for t, _ in marks for _ in (0, 1))
    monkeypatch.setattr(indexer.time, "monotonic", lambda: next(clock))
    for _, produced in marks:
        tuner.batch_done(produced)
    assert tuner.choice == 1
    tuner.restore()
