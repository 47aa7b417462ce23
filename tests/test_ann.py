"""Approximate indexes (IVF) against numpy brute force on seeded clustered data; the automatic
choice of kind by size; `retriever optimize`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from retriever.store.catalog import STATUS_INDEXED
from retriever.errors import IndexLockedError, RetrieverError
from retriever.vectors import (
    FLAT,
    IVF_PQ,
    IVF_SQ8,
    UnknownIndexKindError,
    VectorIndex,
    VectorIndexError,
    build_tuned,
    choose_nlist,
    iter_array_chunks,
    nprobe_ladder,
    read_info,
    recall_at,
)

DIM = 64


def clustered(n: int, dim: int = DIM, centres: int = 200, seed: int = 0):
    """Unit vectors in clusters inside a cone (as image embeddings are), sparse unordered ids,
    and queries from a shifted distribution (a shared offset, as text queries sit apart)."""
    rng = np.random.default_rng(seed)
    mean = _unit(rng.standard_normal((1, dim)))
    centre = _unit(rng.standard_normal((centres, dim)))
    vecs = _unit(0.8 * mean + centre[rng.integers(0, centres, n)] + 0.8 * rng.standard_normal((n, dim)) / np.sqrt(dim))
    ids = rng.choice(10 * n, size=n, replace=False).astype(np.int64)
    gap = _unit(rng.standard_normal((1, dim)))
    queries = _unit(0.8 * mean + centre[rng.integers(0, centres, 200)]
                    + 0.8 * rng.standard_normal((200, dim)) / np.sqrt(dim) + gap)
    return ids, vecs, queries


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_ids(ids, vecs, queries, k, mask=None):
    if mask is not None:
        ids, vecs = ids[mask], vecs[mask]
    scores = queries @ vecs.T
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data():
    return clustered(20_000)


@pytest.fixture(scope="module")
def ivf(data):
    ids, vecs, _ = data
    return build_tuned(DIM, iter_array_chunks(ids, vecs, 4096), len(ids), "auto", exact_max=5_000)


def test_auto_builds_ivf_sq8_above_the_threshold_and_it_holds_recall(data, ivf):
    ids, vecs, queries = data
    vi, report = ivf
    assert (vi.index_type, report.index_type, report.reached) == (IVF_SQ8, IVF_SQ8, True)
    assert report.params["nlist"] == vi.nlist == choose_nlist(len(ids)) == 512
    assert 1 <= vi.nprobe < vi.nlist
    assert report.recall_at_10 >= 0.95 + 0.01  # the tuner's own held-out queries, with the margin
    # ... and on queries it never saw, from the shifted distribution, against numpy:
    _, found = vi.search(queries, 10)
    assert recall_at(found, exact_ids(ids, vecs, queries, 10)) >= 0.95
    # the nprobe chosen is the smallest of the ladder that reaches the goal
    assert [p for p, _ in report.curve] == [p for p in nprobe_ladder(vi.nlist) if p <= vi.nprobe]
    assert all(r < 0.96 for _, r in report.curve[:-1])
    # below the threshold, auto stays exact
    small, small_report = build_tuned(DIM, iter_array_chunks(ids[:3000], vecs[:3000]), 3000, "auto", exact_max=5_000)
    assert (small.index_type, small_report.recall_at_10) == (FLAT, None)


def test_filtered_ivf_search_gives_k_results_even_for_a_very_selective_filter(data, ivf):
    ids, vecs, queries = data
    vi, _ = ivf
    rng = np.random.default_rng(7)
    for n_allowed in (15, 200, 4000):
        allowed = rng.choice(ids, size=n_allowed, replace=False)
        mask = np.isin(ids, allowed)
        scores, found = vi.search(queries, 10, allowed=allowed)
        assert found.shape == (len(queries), 10)
        assert np.all(found != -1)  # exactly k: at least k allowed ids are in the index
        assert np.isin(found, allowed).all()
        assert recall_at(found, exact_ids(ids, vecs, queries, 10, mask)) >= 0.95
    # with fewer allowed than k: all of them, then padding
    few = ids[:3]
    _, found = vi.search(queries[:5], 10, allowed=few)
    assert all(sorted(row[:3].tolist()) == sorted(few.tolist()) for row in found) and np.all(found[:, 3:] == -1)


def test_a_selective_filter_scans_only_the_lists_holding_its_ids_and_answers_as_a_full_scan(data, monkeypatch):
    """retriever/ivf_lists.py: the search visits the lists that hold an allowed id (a map kept by
    the index) and finds what a scan of every list finds; the map follows adds and removes."""
    import retriever.vectors as V

    ids, vecs, queries = data
    vi, _ = build_tuned(DIM, iter_array_chunks(ids, vecs, 4096), len(ids), IVF_SQ8)
    rng = np.random.default_rng(11)
    allowed = rng.choice(ids, size=40, replace=False)
    exclude = allowed[:3]
    listed = vi.search(queries, 10, allowed=allowed, exclude=exclude)
    assert vi._lists is not None and len(vi._lists.lists_of(np.sort(allowed))) < vi.nlist
    monkeypatch.setattr(V, "LISTED_MAX", 0)  # every list scanned with the selector
    scanned = vi.search(queries, 10, allowed=allowed, exclude=exclude)
    assert (listed[1] == scanned[1]).all()
    np.testing.assert_allclose(listed[0], scanned[0], atol=1e-5)
    monkeypatch.setattr(V, "LISTED_MAX", 50_000)
    vi.remove(allowed[3:6])  # the map is rebuilt: removed ids are gone, a new one is found
    vi.add(np.array([10**9]), vecs[:1])
    _, found = vi.search(queries[:1], 10, allowed=np.r_[allowed, 10**9])
    assert not np.isin(found, allowed[3:6]).any() and 10**9 in found


def test_exclude_on_ivf(data, ivf):
    ids, vecs, queries = data
    vi, _ = ivf
    first = vi.search(queries[:20], 10)[1]
    exclude = np.unique(first[:, :3])
    _, found = vi.search(queries[:20], 10, exclude=exclude)
    assert not np.isin(found, exclude).any() and np.all(found != -1)


def test_save_load_keeps_kind_nprobe_and_results(tmp_path, data, ivf):
    ids, vecs, queries = data
    vi, report = ivf
    path = tmp_path / "v.faiss"
    vi.save(path, generation=3)
    info = read_info(path)
    assert (info.index_type, info.kind, info.params["nprobe"], info.recall_at_10) == (
        IVF_SQ8, report.factory, vi.nprobe, report.recall_at_10)
    loaded, _ = VectorIndex.load(path)
    assert (loaded.index_type, loaded.nprobe, loaded.nlist) == (IVF_SQ8, vi.nprobe, vi.nlist)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], vi.search(queries, 10)[1])
    # a sidecar that lies about the kind is not trusted
    raw = json.loads(path.with_name(path.name + ".json").read_text())
    path.with_name(path.name + ".json").write_text(json.dumps({**raw, "index_type": FLAT}))
    with pytest.raises(ValueError):
        VectorIndex.load(path)


def test_remove_and_add_on_ivf(data):
    ids, vecs, queries = data
    vi, _ = build_tuned(DIM, iter_array_chunks(ids, vecs), len(ids), IVF_SQ8)
    gone = ids[::3]
    assert vi.remove(gone.tolist()) == len(gone)
    assert len(vi) == len(ids) - len(gone)
    keep = ~np.isin(ids, gone)
    _, found = vi.search(queries, 10)
    assert not np.isin(found, gone).any()
    assert recall_at(found, exact_ids(ids, vecs, queries, 10, keep)) >= 0.95
    vi.add(gone[:100], vecs[::3][:100])  # back again, incrementally
    assert len(vi) == len(ids) - len(gone) + 100
    np.testing.assert_allclose(vi.reconstruct(int(gone[5])), vecs[::3][5], atol=0.02)  # decoded from 8 bits


@pytest.mark.slow
def test_pq_kind_and_its_limits():
    ids, vecs, queries = clustered(10_000, dim=32, seed=4)
    vi, report = build_tuned(32, iter_array_chunks(ids, vecs), len(ids), IVF_PQ)
    assert vi.index_type == IVF_PQ and report.factory == f"IVF{report.params['nlist']},PQ8"
    _, found = vi.search(queries, 10)
    measured = recall_at(found, exact_ids(ids, vecs, queries, 10))
    assert 0.3 < measured < 0.95  # approximate for real: 8-byte codes for 32 floats
    assert not report.reached and vi.nprobe == vi.nlist  # and the tuner says so
    with pytest.raises(VectorIndexError):
        build_tuned(32, iter_array_chunks(ids[:500], vecs[:500]), 500, IVF_PQ)
    with pytest.raises(UnknownIndexKindError):
        build_tuned(DIM, iter_array_chunks(ids, vecs), len(ids), "hnsw")


# -- an index on disk: the kind chosen by size, rebuilt from the catalog ----------------------------


def make_index(home, ids_vecs, dim=DIM):
    """A real catalog holding synthetic vectors (no encoder: the model is recorded, never loaded)."""
    from retriever.encoders.base import ModelSpec
    from retriever.index import Index

    index = Index.create(home, "default", ModelSpec(name="offline"), "synthetic", dim)
    ids, vecs = ids_vecs
    rows = [{"path": f"/photos/{i}.jpg", "size": 1, "mtime_ns": 1, "status": STATUS_INDEXED, "vector": v}
            for i, v in zip(ids, vecs)]
    index.catalog.write_batch(rows)
    return index


@pytest.mark.slow
def test_vector_index_rebuild_picks_the_kind_by_size_and_refills_a_stale_ivf(tmp_path, data):
    from retriever.index import EXACT_MAX_SETTING, INDEX_KIND_SETTING

    _, vecs, queries = data
    index = make_index(tmp_path, (range(6000), vecs[:6000]))
    index.acquire_lock()
    assert index.vector_index().index_type == FLAT  # 6,000 <= the default threshold
    assert index.status()["index_type"] == FLAT and index.status()["index_recall_at_10"] is None

    index.catalog.set_settings({EXACT_MAX_SETTING: 2000})  # a user's setting, as optimize --exact-max writes
    index.vectors_path.unlink()
    vi = index.vector_index()
    assert vi.index_type == IVF_SQ8 and len(vi) == 6000
    status = index.status()
    assert (status["index_type"], status["index_params"]["nprobe"]) == (IVF_SQ8, vi.nprobe)
    assert status["index_recall_at_10"] >= 0.95 and status["vector_index_current"]

    # the catalog changes behind the file's back: the stale file lends its training, not its vectors
    ids = index.catalog.write_batch([{"path": "/photos/new.jpg", "size": 1, "mtime_ns": 1,
                                      "status": STATUS_INDEXED, "vector": queries[0]}])
    index.catalog.remove(range(1, 1001))
    refilled = index.vector_index()
    assert refilled.index_type == IVF_SQ8 and (refilled.nlist, refilled.nprobe) == (vi.nlist, vi.nprobe)
    assert len(refilled) == 5001 and refilled.search(queries[:1], 1)[1][0, 0] == ids[0]
    stored_ids = np.array([i for i in range(1001, 6001)] + ids, np.int64)
    stored = np.concatenate([vecs[1000:6000], queries[:1]])
    _, found = refilled.search(queries, 10)
    assert recall_at(found, exact_ids(stored_ids, stored, queries, 10)) >= 0.95

    # shrunk below half the threshold: exact again
    index.catalog.remove(range(1001, 5100))
    assert index.vector_index().index_type == FLAT
    # a pinned kind that cannot be built any more (ivf-pq needs 9,984 vectors) still gives a working index
    index.catalog.set_settings({INDEX_KIND_SETTING: IVF_PQ})
    index.vectors_path.unlink()
    assert index.vector_index().index_type == FLAT
    index.close()


@pytest.mark.slow
def test_an_indexing_run_that_outgrows_exact_search_ends_with_ivf(tmp_path, offline_encoder):
    from retriever.encoders.base import ModelSpec
    from retriever.index import EXACT_MAX_SETTING, Index
    from retriever.indexer import run_index
    from tests.conftest import copy_photos

    col = copy_photos(tmp_path / "col")
    index = Index.create(tmp_path / "home", "default", ModelSpec(name="offline"), offline_encoder.model_id,
                         offline_encoder.dim)
    index.catalog.set_settings({EXACT_MAX_SETTING: 8})
    index.acquire_lock()
    run_index(index, offline_encoder, [str(col)])
    info = read_info(index.vectors_path)
    n = index.catalog.counts()["stored_vectors"]
    assert n > 8 and info.index_type == IVF_SQ8 and info.count == n
    assert info.generation == index.catalog.generation()
    # and incremental runs keep it: a removed photo leaves the IVF index (through its delta log), still current
    sorted(col.iterdir())[0].unlink()
    run_index(index, offline_encoder, [str(col)])
    assert read_info(index.vectors_path).index_type == IVF_SQ8
    assert index.status()["vector_index_current"] and index.status()["vector_log"]["removed"] == 1
    assert len(index.vector_index()) == n - 1
    index.close()


# -- retriever optimize ---------------------------------------------------------------------------


def _optimize(*args):
    from retriever.cli import main

    return CliRunner().invoke(main, ["optimize", *[str(a) for a in args]])


def test_optimize_builds_ivf_whose_results_agree_with_exact(offline_copy):
    from retriever.index import Index

    result = _optimize("--home", offline_copy, "--kind", "ivf-sq8", "--json")
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    assert built["index_type"] == IVF_SQ8 and built["recall_at_10"] >= 0.95 and built["bytes"] > 0
    with Index.open(offline_copy, "default") as idx:
        status = idx.status()
        assert (status["index_type"], status["vector_index_current"]) == (IVF_SQ8, True)
        assert status["index_params"]["nprobe"] == built["params"]["nprobe"]
        ids, vecs = zip(*[(i, v) for chunk_ids, chunk in idx.catalog.iter_vectors(idx.dim)
                          for i, v in zip(chunk_ids, chunk)])
        ids, vecs = np.array(ids), np.stack(vecs)
        vi = idx.vector_index()
        assert vi.index_type == IVF_SQ8  # loaded, not rebuilt
        k = 5
        _, found = vi.search(vecs, k)
        assert recall_at(found, exact_ids(ids, vecs, vecs, k)) >= 0.95
        assert list(found[:, 0]) == list(ids)  # every photo finds itself first

    # pinned: auto is not applied behind the user's back; --kind auto goes back to the size rule
    result = _optimize("--home", offline_copy, "--kind", "auto")
    assert result.exit_code == 0 and "flat (exact search)" in result.stderr
    assert read_info(offline_copy / "default" / "vectors.faiss").index_type == FLAT


def test_optimize_errors_are_one_line(tmp_path, offline_copy, data):
    from retriever.index import Index

    with Index.open(offline_copy, "default") as holder:
        holder.acquire_lock()
        result = _optimize("--home", offline_copy)
        assert result.exit_code == 1 and "is being written" in result.output
        with pytest.raises(IndexLockedError):
            Index.open(offline_copy, "default").acquire_lock()
    result = _optimize("--home", offline_copy, "--kind", "hnsw")
    assert result.exit_code == 2 and "'hnsw' is not one of" in result.output
    empty = make_index(tmp_path / "empty", ([], []))
    empty.close()
    result = _optimize("--home", tmp_path / "empty")
    assert result.exit_code == 1 and "holds no vectors yet" in result.output and result.output.count("\n") == 1
    with Index.open(tmp_path / "empty", "default") as idx:
        idx.acquire_lock()
        with pytest.raises(RetrieverError):
            idx.optimize("hnsw")


def test_large_k_on_ivf_gives_k_results(data, ivf):
    """More results than the tuned lists hold (as an over-fetching caller asks): k of them, the
    best first, about as good as exact."""
    ids, vecs, queries = data
    vi, _ = ivf
    scores, found = vi.search(queries[:5], 2000)
    assert found.shape == (5, 2000) and np.all(found != -1)
    assert all(len(set(row.tolist())) == 2000 for row in found)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert recall_at(found, exact_ids(ids, vecs, queries[:5], 2000)) >= 0.95
