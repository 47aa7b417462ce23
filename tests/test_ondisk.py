"""On-disk IVF indexes (retriever.ondisk) against the in-memory IVF of the same training and
against brute force over the live vectors, on seeded clustered data; `retriever optimize --on-disk`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from retriever.store.catalog import STATUS_INDEXED
from retriever.ondisk import IVF_SQ8_ONDISK, OnDiskIndexError, OnDiskVectorIndex, build_ondisk
from retriever.vectors import (
    FLAT,
    IVF_SQ8,
    VectorIndex,
    iter_array_chunks,
    read_info,
    recall_at,
    sample_and_train,
)
from tests.test_ann import DIM, clustered, exact_ids, make_index

NLIST = 64


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data():
    return clustered(20_000, seed=1)


@pytest.fixture(scope="module")
def trained(data):
    """An empty IVF64,SQ8 trained on the data: both indexes below are filled from copies of it."""
    ids, vecs, _ = data
    index, *_ = sample_and_train(DIM, iter_array_chunks(ids, vecs, 2500), len(ids), IVF_SQ8, NLIST, None, 200,
                                 np.random.default_rng(0))
    return index


@pytest.fixture(scope="module")
def in_memory(data, trained):
    import faiss

    ids, vecs, _ = data
    index = faiss.clone_index(trained)
    index.add_with_ids(vecs, ids)
    return VectorIndex(DIM, index, index_type=IVF_SQ8, params={"factory": f"IVF{NLIST},SQ8", "nlist": NLIST,
                                                                 "nprobe": 1})


@pytest.fixture
def built(tmp_path, data, trained):
    """An on-disk index over the data from 2 workers in shards of 3,000 vectors, installed."""
    import faiss

    ids, vecs, _ = data
    main = tmp_path / "idx" / "vectors.faiss"
    main.parent.mkdir()
    vi, report = build_ondisk(DIM, iter_array_chunks(ids, vecs, 2500), len(ids), main, IVF_SQ8, workers=2,
                              shard_size=3000, trained=faiss.clone_index(trained), n_queries=200)
    vi.save(main, generation=1)
    return vi, report, main


def live_exact(ids, vecs, queries, k, allowed=None):
    mask = None if allowed is None else np.isin(ids, allowed)
    return exact_ids(ids, vecs, queries, k, mask)


def test_sharded_ondisk_index_answers_exactly_like_in_memory(built, data, in_memory):
    _, _, queries = data
    vi, report, main = built
    assert vi.params["shards"] >= 2 and report.index_type == IVF_SQ8_ONDISK and len(vi) == len(data[0])
    assert report.recall_at_10 >= 0.96 and vi.nprobe == report.params["nprobe"]
    loaded, info = OnDiskVectorIndex.load(main)
    assert info.index_type == IVF_SQ8_ONDISK and loaded.nprobe == vi.nprobe and len(loaded) == len(vi)
    for nprobe in (1, 4, 16, NLIST):
        loaded.set_nprobe(nprobe)
        in_memory.set_nprobe(nprobe)
        s1, i1 = loaded.search(queries, 10)
        s2, i2 = in_memory.search(queries, 10)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)
    # and the ids file, sorted, holds exactly the indexed ids (they came in unsorted)
    assert np.array_equal(np.asarray(loaded.main_ids), np.sort(data[0]))


def test_delta_and_tombstones_search_like_brute_force_over_the_live_set(built, data):
    ids, vecs, queries = data
    vi, _, main = built
    rng = np.random.default_rng(5)
    removed = rng.choice(ids, 3000, replace=False)
    replaced = rng.choice(np.setdiff1d(ids, removed), 500, replace=False)
    new_ids = np.arange(10 * len(ids), 10 * len(ids) + 1000, dtype=np.int64)  # unused by clustered()
    new_vecs = clustered(1000, seed=2)[1]
    # near the queries, so that the delta matters in the top 10
    replaced_vecs = (queries[rng.integers(0, len(queries), len(replaced))] + 0.05 * new_vecs[:500])
    replaced_vecs /= np.linalg.norm(replaced_vecs, axis=1, keepdims=True)

    assert vi.remove(removed) == len(removed)
    vi.remove(replaced)  # as the indexer does for a changed file: remove, then add under the same id
    vi.add(replaced, replaced_vecs)
    vi.add(new_ids, new_vecs)
    assert vi.remove(new_ids[:100]) == 100  # from the delta, for real
    assert len(vi) == len(ids) - len(removed) + 900

    live = dict(zip(ids.tolist(), vecs))
    for i in removed:
        del live[int(i)]
    live.update(zip(replaced.tolist(), replaced_vecs))
    live.update(zip(new_ids[100:].tolist(), new_vecs[100:]))
    live_ids = np.array(list(live), np.int64)
    live_vecs = np.stack(list(live.values())).astype(np.float32)

    vi.set_nprobe(NLIST)
    _, found = vi.search(queries, 10)
    truth = live_exact(live_ids, live_vecs, queries, 10)
    assert recall_at(found, truth) >= 0.97  # the rest: 8-bit codes
    assert not np.isin(found, np.concatenate([removed, new_ids[:100]])).any()
    hits = np.isin(found, replaced).sum()
    assert hits > 100 and hits >= 0.98 * np.isin(truth, replaced).sum()  # replaced vectors found by their new look
    # each replaced id is found by its new vector, first, with the exact score (the delta is flat)
    s, top = vi.search(replaced_vecs[:50], 1)
    assert list(top[:, 0]) == list(replaced[:50]) and np.allclose(s[:, 0], 1.0, atol=1e-5)

    # saved and loaded: the same answers
    vi.save(main, generation=2)
    loaded, info = OnDiskVectorIndex.load(main)
    assert (info.params["delta_count"], info.params["tombstones"]) == (1400, 3500)
    loaded.set_nprobe(NLIST)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], found)

    # filters: allowed ids from the main index, the delta, and tombstoned ones
    allowed = np.concatenate([rng.choice(live_ids, 60, replace=False), removed[:40], new_ids[:20]])
    _, got = loaded.search(queries[:50], 10, allowed=allowed)
    want = live_exact(live_ids, live_vecs, queries[:50], 10, allowed)
    assert (got != -1).all() and np.isin(got, allowed).all() and not np.isin(got, removed).any()
    assert recall_at(got, want) >= 0.97
    _, got = loaded.search(queries[:50], 10, exclude=want[:, 0])
    assert not np.isin(got, want[:, 0]).any()


def test_another_process_opens_and_searches_it_read_only_from_another_folder(built, data, tmp_path):
    _, _, queries = data
    vi, _, main = built
    moved = tmp_path / "moved"
    shutil.move(str(main.parent), moved)  # the lists are found beside the main file, wherever it is
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in moved.iterdir()}
    np.save(tmp_path / "q.npy", queries[:20])
    code = ("import sys, json, numpy as np\n"
            "from retriever.ondisk import OnDiskVectorIndex\n"
            "vi, _ = OnDiskVectorIndex.load(sys.argv[1])\n"
            "s, i = vi.search(np.load(sys.argv[2]), 10)\n"
            "print(json.dumps(i.tolist()))\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-c", code, str(moved / "vectors.faiss"), str(tmp_path / "q.npy")],
                         cwd=elsewhere, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip().count("\n") == 0  # nothing else on stdout (FAISS's notes would land there)
    _, want = vi.search(queries[:20], 10)
    assert json.loads(out.stdout) == want.tolist()
    assert before == {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in moved.iterdir()}


def test_a_failed_build_leaves_the_old_index_and_no_files(built, data, tmp_path):
    ids, vecs, queries = data
    vi, _, main = built
    names = sorted(p.name for p in main.parent.iterdir())
    want = vi.search(queries, 10)[1]

    def failing():
        for n, chunk in enumerate(iter_array_chunks(ids, vecs, 2500)()):
            if n == 5:
                raise OSError("disk full")
            yield chunk

    calls = iter([iter_array_chunks(ids, vecs, 2500), lambda: failing()])
    with pytest.raises(OnDiskIndexError, match="disk full"):
        build_ondisk(DIM, lambda: next(calls)(), len(ids), main, IVF_SQ8, nlist=NLIST, workers=2, shard_size=3000)
    assert sorted(p.name for p in main.parent.iterdir()) == names
    loaded, _ = OnDiskVectorIndex.load(main)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], want)


# -- through the Index: optimize --on-disk, indexing runs, repair, folding ----------------------------


def _rows(ids, vecs, prefix="/photos"):
    return [{"path": f"{prefix}/{i}.jpg", "size": 1, "mtime_ns": 1, "status": STATUS_INDEXED, "vector": v}
            for i, v in zip(ids, vecs)]


def _catalog(index):
    pairs = [(i, v) for ids, vecs in index.catalog.iter_vectors(index.dim) for i, v in zip(ids, vecs)]
    return np.array([i for i, _ in pairs], np.int64), np.stack([v for _, v in pairs])


@pytest.mark.slow
def test_optimize_on_disk_stays_on_disk_repairs_a_lag_and_folds_the_delta(tmp_path, data, monkeypatch):
    import retriever.ondisk as ondisk
    from retriever.index import ON_DISK_SETTING

    _, vecs, queries = data
    index = make_index(tmp_path, (range(2000), vecs[:2000]))
    index.acquire_lock()
    report, size = index.optimize(None, on_disk=True, shard_size=700)
    assert report.index_type == IVF_SQ8_ONDISK and report.count == 2000 and size > 2000 * (DIM + 8)
    assert report.params["shards"] >= 2
    assert index.catalog.get_setting(ON_DISK_SETTING) is True
    status = index.status()
    assert status["index_type"] == "ivf-sq8 on disk" and status["vector_index_current"]
    assert status["on_disk"]["ivfdata_bytes"] > 2000 * DIM and status["index_params"]["nprobe"] == report.params["nprobe"]

    # an indexing run: the catalog, then the index through VectorIndex's interface, then save
    vi = index.vector_index()
    assert isinstance(vi, OnDiskVectorIndex)
    new_ids = index.catalog.write_batch(_rows(range(2000, 2300), vecs[2000:2300]))
    vi.add(np.array(new_ids), vecs[2000:2300])
    index.remove_images(list(range(1, 201)))  # catalog ids start at 1
    vi = index.vector_index()
    assert (len(vi.delta), len(vi.tombstones)) == (300, 200)
    assert index.adapt_vector_index(vi) is None  # never back into memory behind the user's back
    status = index.status()
    assert status["on_disk"]["delta_vectors"] == 300 and status["on_disk"]["tombstones"] == 200
    assert status["vector_index_current"] and status["vectors"] == 2100

    # the catalog changes behind the index's back (a killed run): replaced, new and removed vectors
    index.catalog.write_batch([{"id": 500, "vector": queries[0]}] + _rows([9999], queries[1:2], "/late"))
    index.catalog.remove([600, 601])
    repaired = index.vector_index()
    assert repaired.token == vi.token and len(repaired) == index.catalog.counts()["stored_vectors"]
    assert read_info(index.vectors_path).generation == index.catalog.generation()
    cat_ids, cat_vecs = _catalog(index)
    repaired.set_nprobe(repaired.nlist)
    _, found = repaired.search(queries, 10)
    assert recall_at(found, exact_ids(cat_ids, cat_vecs, queries, 10)) >= 0.97
    assert repaired.search(queries[:1], 1)[1][0, 0] == 500 and not np.isin(found, [600, 601]).any()

    # a kill between the renames of a build (no sidecar): the build vectors.faiss names, resynced
    index.vectors_path.with_name("vectors.faiss.json").unlink()
    again = index.vector_index()
    assert again.token == vi.token and len(again) == len(repaired)

    # an optimize interrupted mid-build leaves the index as it was, and no new file
    names = sorted(p.name for p in index.folder.iterdir())
    with monkeypatch.context() as m:
        m.setattr(ondisk, "_merge_in_subprocess", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            index.optimize(None)
    assert sorted(p.name for p in index.folder.iterdir()) == names
    again = index.vector_index()
    again.set_nprobe(again.nlist)
    np.testing.assert_array_equal(again.search(queries, 10)[1], found)
    with pytest.raises(OnDiskIndexError):
        index.optimize("flat", on_disk=True)

    # optimize, no flag: a fresh on-disk build that folds the delta and tombstones in
    report, _ = index.optimize(None)
    folded = index.vector_index()
    assert report.index_type == IVF_SQ8_ONDISK and folded.token != vi.token
    assert (len(folded.delta), len(folded.tombstones), len(folded)) == (0, 0, len(cat_ids))
    assert not list(index.folder.glob(f"vectors.{vi.token}.*"))  # the old build's files are gone
    assert folded.search(queries[:1], 1)[1][0, 0] == 500

    # --kind without --on-disk: back into memory, and the on-disk files go
    report, _ = index.optimize("ivf-sq8")
    assert report.index_type == IVF_SQ8 and index.vector_index().index_type == IVF_SQ8
    assert not list(index.folder.glob("vectors.*.ivfdata")) and index.catalog.get_setting(ON_DISK_SETTING) is False
    index.close()


# -- the CLI on a real index ----------------------------------------------------------------------------


def _cli(*args):
    from retriever.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _search(home, query):
    result = _cli("search", query, "--home", home, "--json", "-k", "5")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_cli_optimize_on_disk_then_search_gives_the_same_results(offline_copy, tmp_path, offline_encoder):
    from retriever.index import Index
    from retriever.indexer import run_index
    from tests.conftest import copy_photos

    before = {q: _search(offline_copy, q) for q in ("a cat",)}
    result = _cli("optimize", "--home", offline_copy, "--on-disk", "--no-onnx", "--json")
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    assert built["index_type"] == IVF_SQ8_ONDISK and built["recall_at_10"] >= 0.95
    for query, hits in before.items():
        after = _search(offline_copy, query)
        assert [h["path"] for h in after] == [h["path"] for h in hits]
        assert np.allclose([h["score"] for h in after], [h["score"] for h in hits], atol=0.01)
    status = _cli("status", "--home", offline_copy)
    assert "ivf-sq8 on disk" in status.stdout

    # an indexing run adds to the delta; the index stays on disk
    extra = copy_photos(tmp_path / "extra", ["chelsea.png"])
    with Index.open(offline_copy, "default") as idx:
        idx.acquire_lock()
        run_index(idx, offline_encoder, [str(extra)])
        info = read_info(idx.vectors_path)
        assert info.index_type == IVF_SQ8_ONDISK and info.params["delta_count"] == 1
        assert info.generation == idx.catalog.generation()
    paths = [h["path"] for h in _search(offline_copy, "a cat")]
    assert str(extra / "chelsea.png") in paths[:2]

    result = _cli("optimize", "--home", offline_copy, "--in-memory", "--no-onnx")
    assert result.exit_code == 0, result.output
    assert read_info(offline_copy / "default" / "vectors.faiss").index_type == FLAT
    assert not list((offline_copy / "default").glob("vectors.*.ivfdata"))
