"""Near-duplicate pairs of a large collection by an approximate range search (IVF), for
retriever.duplicates above EXACT_MAX vectors: the exact search costs n^2 / 2 dot products (hours
at 1 M on 2 cores); this one ~n * nprobe * n / nlist.

Every stored vector is put in an inverted-file index (IndexIVFFlat, inner product: the vectors
themselves, no compression, so a score is the exact cosine) whose coarse centroids are trained
on a sample; each vector then asks for every vector with cosine >= T among the NPROBE lists
nearest to it. A near-duplicate sits very close to its original, so it almost always lies in one
of those lists; a pair is kept when either member finds the other. benchmarks/duplicates.py
(--method ivf) measures the recall of planted copies against the exact search.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

# Above this many vectors `retriever duplicates` searches approximately (benchmarks/duplicates.py
# times the exact search: 45-150 s at 100k on 2 cores, so ~4x that at 200k).
EXACT_MAX = 200_000
NPROBE = 8  # lists each vector searches
TRAIN_PER_LIST = 40  # k-means training sample: vectors per list (FAISS warns below 39)
QUERY_CHUNK = 8192


class VectorRows:
    """The vectors by position, with the `reconstruct` the chaining guard reads them by."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def reconstruct(self, position: int) -> np.ndarray:
        return self.vectors[position]


def range_pairs_ivf(chunks: Iterable[tuple[np.ndarray, np.ndarray]], dim: int, threshold: float,
                    *, nprobe: int = NPROBE, seed: int = 0):
    """Like duplicates.range_pairs (same return: (vectors by position, ids by position,
    (i, j, score) with i > j, each pair once)), approximately: see the module docstring."""
    import faiss

    from retriever.vectors import choose_nlist

    id_parts, vec_parts = [], []
    for ids, vecs in chunks:
        id_parts.append(np.asarray(ids, dtype=np.int64))
        vec_parts.append(np.asarray(vecs, dtype=np.float32))
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
    vectors = np.ascontiguousarray(np.concatenate(vec_parts) if vec_parts else np.zeros((0, dim), np.float32))
    del vec_parts
    n = len(ids)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if n < 2:
        return VectorRows(vectors), ids, empty
    nlist = choose_nlist(n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n, size=min(n, TRAIN_PER_LIST * nlist), replace=False))]
    index.train(sample)
    del sample
    index.add(vectors)
    index.nprobe = min(nprobe, nlist)
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))  # faiss keeps scores > radius
    found_i, found_j, found_s = [], [], []
    for lo in range(0, n, QUERY_CHUNK):
        lims, scores, hits = index.range_search(vectors[lo : lo + QUERY_CHUNK], radius)
        queries = lo + np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims.astype(np.int64)))
        hits = hits.astype(np.int64)
        keep = (hits != queries) & (scores >= np.float32(threshold))
        found_i.append(np.maximum(queries[keep], hits[keep]))
        found_j.append(np.minimum(queries[keep], hits[keep]))
        found_s.append(scores[keep].astype(np.float32))
    qi, qj, qs = (np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s))
    _, first = np.unique(qi * n + qj, return_index=True)  # a pair found from both ends: once
    return VectorRows(vectors), ids, (qi[first], qj[first], qs[first])
