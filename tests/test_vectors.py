"""The FAISS index against brute-force numpy on seeded synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from retriever.encoders.base import l2_normalize
from retriever.vectors import VectorIndex, read_info


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(10 * n, size=n, replace=False).astype(np.int64)  # sparse, unordered ids
    return ids, l2_normalize(rng.normal(size=(n, dim)))


def brute_force(ids, vecs, queries, k, exclude=()):
    scores = queries @ vecs.T
    out = []
    for row in scores:
        order = [j for j in np.argsort(-row, kind="stable") if ids[j] not in set(exclude)][:k]
        out.append((row[order], ids[order]))
    return out


@pytest.mark.parametrize("n,dim,k", [(1, 8, 5), (500, 32, 10), (3000, 64, 25)])
def test_search_equals_brute_force(n, dim, k):
    ids, vecs = synthetic(n, dim)
    vi = VectorIndex(dim)
    vi.add(ids, vecs)
    queries = l2_normalize(np.random.default_rng(1).normal(size=(20, dim)))
    scores, found = vi.search(queries, k)
    for q, (ref_scores, ref_ids) in enumerate(brute_force(ids, vecs, queries, k)):
        assert list(found[q]) == list(ref_ids)
        np.testing.assert_allclose(scores[q], ref_scores, rtol=0, atol=1e-5)


def test_exclusion_and_removal_match_brute_force():
    ids, vecs = synthetic(800, 16, seed=3)
    vi = VectorIndex(16)
    vi.add(ids, vecs)
    queries = vecs[:5]  # each query is itself in the index
    exclude = [int(ids[0]), int(ids[1])]
    scores, found = vi.search(queries, 10, exclude=exclude)
    for q, (ref_scores, ref_ids) in enumerate(brute_force(ids, vecs, queries, 10, exclude)):
        assert list(found[q]) == list(ref_ids)
        assert not set(exclude) & set(found[q].tolist())

    removed = ids[100:300]
    assert vi.remove(removed.tolist()) == 200
    keep = np.ones(len(ids), bool)
    keep[100:300] = False
    scores, found = vi.search(queries, 10)
    for q, (ref_scores, ref_ids) in enumerate(brute_force(ids[keep], vecs[keep], queries, 10)):
        assert list(found[q]) == list(ref_ids)


def test_save_load_round_trip_is_atomic_and_exact(tmp_path):
    ids, vecs = synthetic(300, 24, seed=5)
    vi = VectorIndex(24)
    vi.add(ids, vecs)
    path = tmp_path / "v.faiss"
    vi.save(path, generation=7)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind
    loaded, info = VectorIndex.load(path)
    assert (info.generation, info.count, info.dim) == (7, 300, 24)
    queries = vecs[:7]
    np.testing.assert_array_equal(vi.search(queries, 5)[1], loaded.search(queries, 5)[1])
    np.testing.assert_allclose(loaded.reconstruct(int(ids[3])), vecs[3], atol=1e-7)


def test_unreadable_or_missing_files_are_reported(tmp_path):
    path = tmp_path / "v.faiss"
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(path)
    VectorIndex(4).save(path, 1)
    path.write_bytes(b"not a faiss file")
    with pytest.raises(ValueError):
        VectorIndex.load(path)
    assert read_info(path).generation == 1
    path.unlink()
    assert read_info(path) is None


def test_k_larger_than_collection_and_empty_index():
    ids, vecs = synthetic(3, 8)
    vi = VectorIndex(8)
    assert vi.search(vecs[:1], 5)[1].shape == (1, 0)
    vi.add(ids, vecs)
    scores, found = vi.search(vecs[:1], 10)
    assert sorted(found[0].tolist()) == sorted(ids.tolist())
    with pytest.raises(ValueError):
        vi.add(ids[:1], np.zeros((1, 9), np.float32))


def brute_force_within(ids, vecs, queries, k, allowed, exclude=()):
    """The exact top-k restricted to `allowed` minus `exclude`."""
    mask = np.isin(ids, list(allowed)) & ~np.isin(ids, list(exclude))
    return brute_force(ids[mask], vecs[mask], queries, k)


@pytest.mark.parametrize("n_allowed", [3, 40, 900])
def test_allowed_gives_the_exact_top_k_within_the_allowed_ids(n_allowed):
    ids, vecs = synthetic(2000, 32, seed=11)
    vi = VectorIndex(32)
    vi.add(ids, vecs)
    rng = np.random.default_rng(12)
    allowed = rng.choice(ids, size=n_allowed, replace=False)
    queries = l2_normalize(rng.normal(size=(15, 32)))
    scores, found = vi.search(queries, 10, allowed=allowed)
    assert found.shape == (15, 10)
    for q, (ref_scores, ref_ids) in enumerate(brute_force_within(ids, vecs, queries, 10, allowed.tolist())):
        got = found[q][found[q] != -1]
        assert len(got) == min(10, n_allowed)  # exactly k whenever k allowed ids exist
        assert list(got) == list(ref_ids)
        np.testing.assert_allclose(scores[q][: len(got)], ref_scores, rtol=0, atol=1e-5)
        assert np.all(np.isneginf(scores[q][len(got):]))


def test_allowed_with_exclude_unknown_ids_and_an_empty_set():
    ids, vecs = synthetic(500, 16, seed=13)
    vi = VectorIndex(16)
    vi.add(ids, vecs)
    allowed = [int(i) for i in ids[:30]] + [-5, 10**12]  # ids that are not in the index are ignored
    exclude = [int(ids[0]), int(ids[1]), int(ids[400])]
    queries = vecs[:4]
    _, found = vi.search(queries, 10, exclude=exclude, allowed=allowed)
    for q, (_, ref_ids) in enumerate(brute_force_within(ids, vecs, queries, 10, allowed, exclude)):
        assert list(found[q]) == list(ref_ids)
    scores, found = vi.search(queries, 10, allowed=[])
    assert found.shape == (4, 10) and np.all(found == -1) and np.all(np.isneginf(scores))
    _, found = vi.search(queries, 10, allowed=np.array(ids[:2]))  # numpy arrays too
    assert sorted(found[0][:2].tolist()) == sorted(ids[:2].tolist()) and np.all(found[:, 2:] == -1)
