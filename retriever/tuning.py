"""Tuning an IVF index's nprobe by measured recall@10: held-out queries made from stored vectors,
their exact top k over vectors that arrive in chunks, and the smallest nprobe (of a ladder) whose
recall reaches a goal. Shared by the in-memory build (retriever.vectors.build_tuned) and the
on-disk one (retriever.ondisk.build_ondisk), so both tune alike."""

from __future__ import annotations

import numpy as np


def tuning_queries(seeds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Held-out queries from stored vectors: the seed plus a random unit vector plus 0.3 of an
    offset shared by all queries, normalised (cosine about 0.7 to its seed). Harder than the seeds
    themselves (which find themselves first) and apart from the stored vectors, as text queries
    are; benchmarks/ann.py checks that the nprobe they choose holds on shifted queries."""
    n, dim = seeds.shape
    noise = _normalize(rng.standard_normal((n, dim)).astype(np.float32))
    offset = _normalize(rng.standard_normal((1, dim)).astype(np.float32))
    return _normalize(seeds + noise + 0.3 * offset)


def tune_nprobe(vi, queries: np.ndarray, truth: np.ndarray, goal: float,
                ) -> tuple[int, float, list[tuple[int, float]]]:
    """The smallest nprobe (of a doubling-and-a-half ladder) whose recall@10 reaches `goal`;
    nlist when none does. `vi`: an IVF retriever.vectors.VectorIndex, left at the last nprobe
    tried. -> (nprobe, its recall, [(nprobe, recall), ...] tried)."""
    curve: list[tuple[int, float]] = []
    for nprobe in nprobe_ladder(vi.nlist):
        vi.set_nprobe(nprobe)
        _, found = vi.search(queries, truth.shape[1])
        recall = recall_at(found, truth)
        curve.append((nprobe, round(recall, 4)))
        if recall >= goal:
            return nprobe, recall, curve
    return vi.nlist, curve[-1][1], curve


def nprobe_ladder(nlist: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ... up to nlist."""
    out, p = [], 1
    while p < nlist:
        out.append(p)
        if p >= 2 and p * 3 // 2 < nlist:
            out.append(p * 3 // 2)
        p *= 2
    out.append(nlist)
    return sorted(set(out))


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` (exact ids) found in the same row of `found`."""
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist()) - {-1}) for f, t in zip(found, truth))
    return hits / (k * len(truth))


class _ExactTopK:
    """Exact top-k ids of fixed queries over vectors that arrive in chunks."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries = queries
        self.k = k
        self.best_s = np.full((len(queries), 0), -np.inf, np.float32)
        self.best_i = np.zeros((len(queries), 0), np.int64)

    def update(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        import faiss

        # the chunk's own top k first (BLAS + heaps: 5x faster than argpartition on (q, chunk))
        scores, rows = faiss.knn(self.queries, vecs, min(self.k, len(vecs)), metric=faiss.METRIC_INNER_PRODUCT)
        cand_s = np.concatenate([self.best_s, scores], axis=1)
        cand_i = np.concatenate([self.best_i, np.asarray(ids, np.int64)[rows]], axis=1)
        keep = min(self.k, cand_s.shape[1])
        top = np.argpartition(-cand_s, keep - 1, axis=1)[:, :keep]
        self.best_s = np.take_along_axis(cand_s, top, axis=1)
        self.best_i = np.take_along_axis(cand_i, top, axis=1)

    def ids(self) -> np.ndarray:
        order = np.argsort(-self.best_s, axis=1, kind="stable")
        return np.take_along_axis(self.best_i, order, axis=1)


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
