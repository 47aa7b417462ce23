"""A reader's view of an in-memory kind's FAISS file plus its delta log (retriever.vector_log):
the file's index, shared and never changed, with the ids the log touched left out (tombstones),
and an exact index of the vectors the log left live. Searches both and merges the top k, as the
on-disk index does with its own delta (retriever.ondisk, which shares `merge_top` and
`bitmap_selector`).

A warm reader moves to a newer generation by `extended`: a new view on the same file's index,
with the new records' changes on a copy of the delta, while searches on the old view go on
undisturbed. The writer folds the log into a new FAISS file once the delta passes a measured
size (retriever.index_log), so the exact part stays small (benchmarks/scale.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from retriever.vector_log import Record, net_change
from retriever.vectors import VectorIndex, _clean, _padded


@dataclass(frozen=True)
class LogPosition:
    """How far a view has read: the FAISS file's token, the generation reached, the log offset
    just past the last record taken in."""

    token: str
    generation: int
    offset: int


def merge_top(parts: list[tuple[np.ndarray, np.ndarray]], n_queries: int, width: int):
    """Several (scores, ids) results of the same queries merged: the best `width` of each row."""
    if not parts:
        return _padded(n_queries, width)
    if len(parts) == 1 and parts[0][1].shape[1] == width:
        return parts[0]
    pad_scores, pad_ids = _padded(n_queries, width)
    scores = np.concatenate([p[0] for p in parts] + [pad_scores], axis=1)
    ids = np.concatenate([p[1] for p in parts] + [pad_ids], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :width]
    return _clean(np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1))


def bitmap_selector(ids: np.ndarray) -> tuple[Any, np.ndarray] | None:
    """A FAISS selector of `ids` as a bitmap (catalog ids are dense) and the bits it points into
    (keep both alive); None for no ids."""
    import faiss

    if len(ids) == 0:
        return None
    mask = np.zeros(int(ids.max()) + 1, dtype=bool)
    mask[ids] = True
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits


def range_ids(vi, query: np.ndarray, threshold: float) -> np.ndarray | None:
    """Sorted ids whose vector scores at least `threshold` against `query` (1, dim), every list of
    an IVF index scanned; None when the index cannot range-search (the caller ranks it whole)."""
    import faiss

    if isinstance(vi, LayeredVectorIndex):
        return vi.range_ids(query, threshold)
    inner = getattr(vi, "index", None)
    if inner is None or not hasattr(inner, "range_search"):
        return None
    try:
        if getattr(vi, "is_ivf", False):
            params = faiss.SearchParametersIVF(nprobe=int(vi.nlist))
            _, _, ids = inner.range_search(query, float(threshold), params=params)
        else:
            _, _, ids = inner.range_search(query, float(threshold))
    except RuntimeError:  # an index type without range search
        return None
    return np.unique(ids.astype(np.int64))


class MainAndDelta:
    """What an index made of a main index that is never changed (ids in `tombstones` left out of
    it) and an exact `delta` shares with retriever.ondisk's: the main index's figures, and a
    search of both merged."""

    main: VectorIndex
    delta: VectorIndex

    @property
    def params(self) -> dict[str, Any]:
        return self.main.params

    @property
    def factory(self) -> str:
        return self.main.factory

    @property
    def recall_at_10(self) -> float | None:
        return self.main.recall_at_10

    @property
    def nlist(self) -> int:
        return self.main.nlist

    @property
    def nprobe(self) -> int:
        return self.main.nprobe

    def _dropped_selector(self):
        raise NotImplementedError

    def _main_live(self) -> bool:
        return True

    def search(self, queries: np.ndarray, k: int, exclude: Iterable[int] = (),
               allowed: Iterable[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As VectorIndex.search, over the live vectors: the main index without its tombstones
        (its own rules for filters, nprobe and large k) and the delta (exact), merged best first."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        width = min(k, len(self))
        if width <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if allowed is not None and not isinstance(allowed, np.ndarray):
            allowed = np.fromiter((int(i) for i in allowed), dtype=np.int64)
        if not isinstance(exclude, np.ndarray):
            exclude = np.fromiter((int(i) for i in exclude), dtype=np.int64)
        parts = []
        if self._main_live():
            parts.append(self.main.search(queries, width, exclude=exclude, allowed=allowed,
                                          dropped=self._dropped_selector()))
        if len(self.delta):
            parts.append(self.delta.search(queries, width, exclude=exclude, allowed=allowed))
        return merge_top(parts, len(queries), width)


class LayeredVectorIndex(MainAndDelta):
    """The VectorIndex interface a searcher uses (search, reconstruct, len, the kind's figures)
    over `main` (a loaded FAISS file) changed by log records. Read-only: the writer logs."""

    def __init__(self, main: VectorIndex, delta: VectorIndex, tombstones: np.ndarray, count: int,
                 position: LogPosition):
        self.dim = main.dim
        self.main = main
        self.delta = delta
        self.tombstones = tombstones  # sorted int64: ids whose vector in `main` is gone or replaced
        self.count = count
        self.position = position
        self._dropped = bitmap_selector(tombstones)

    @classmethod
    def over(cls, main: VectorIndex, records: list[Record], position: LogPosition):
        empty = cls(main, VectorIndex(main.dim), np.zeros(0, np.int64), len(main), position)
        return empty.extended(records, position)

    def extended(self, records: list[Record], position: LogPosition) -> "LayeredVectorIndex":
        """A new view with `records` applied (this one stays as it is)."""
        import faiss

        if not records:
            return self
        change = net_change(records, self.dim)
        delta = VectorIndex(self.dim, faiss.clone_index(self.delta.index)) if len(self.delta) else VectorIndex(self.dim)
        if len(delta):
            delta.remove(change.touched)
        delta.add(change.ids, change.vectors)
        tombstones = np.union1d(self.tombstones, change.touched)
        return LayeredVectorIndex(self.main, delta, tombstones, records[-1].count, position)

    # -- what it is (the file's kind) ---------------------------------------------------------------

    @property
    def index_type(self) -> str:
        return self.main.index_type

    @property
    def is_ivf(self) -> bool:
        return self.main.is_ivf

    def __len__(self) -> int:
        return self.count

    def _dropped_selector(self):
        return self._dropped[0] if self._dropped else None

    def range_ids(self, query: np.ndarray, threshold: float) -> np.ndarray | None:
        main = range_ids(self.main, query, threshold)
        if main is None:
            return None
        main = np.setdiff1d(main, self.tombstones)
        delta = range_ids(self.delta, query, threshold) if len(self.delta) else np.zeros(0, np.int64)
        return np.union1d(main, delta if delta is not None else np.zeros(0, np.int64))

    def reconstruct(self, image_id: int) -> np.ndarray:
        if len(self.delta):
            try:
                return self.delta.reconstruct(image_id)
            except RuntimeError:
                pass
        position = np.searchsorted(self.tombstones, image_id)
        if position < len(self.tombstones) and self.tombstones[position] == image_id:
            raise KeyError(image_id)
        return self.main.reconstruct(image_id)


def replayed(main: VectorIndex, records: list[Record]) -> VectorIndex:
    """`main` itself with the records applied in place (a writer folding the log): one removal
    pass over every id they touched, then their live vectors added."""
    change = net_change(records, main.dim)
    if len(change.touched):
        main.remove(change.touched.tolist())
    main.add(change.ids, change.vectors)
    return main
