"""The FAISS index: add / remove / search / save / load, and building the kind that suits the size.
Knows nothing of SQL.

Inner product over L2-normalised vectors (cosine), ids = catalog image ids. Three kinds:

    flat      "IDMap2,Flat": exact; every query scans every vector (4·dim bytes each).
    ivf-sq8   "IVF{nlist},SQ8": vectors grouped into nlist k-means lists, stored as 8-bit codes
              (dim + 8 bytes each); a query scans the nprobe nearest lists. nprobe is chosen by
              measuring recall@10 against exact search (see `build_tuned`).
    ivf-pq    "IVF{nlist},PQ{m}": as ivf-sq8 with m-byte product-quantizer codes: smaller, but it
              rarely reaches recall@10 0.95 (the tuner says so).

HNSW is left out on purpose: FAISS cannot remove ids from it, and the indexer removes vectors
incrementally (changed, moved and deleted files); and its graph links (64 x 4 B a vector at M=32)
on top of 8-bit codes pass 700 B a vector, where IVF-SQ8 stays near dim + 16.

The file is a derived cache of the catalog's stored vectors: it records the catalog generation it
reflects in a JSON sidecar (with the kind, its parameters and its measured recall), so a stale or
missing file is detected and rebuilt, never trusted.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from retriever.durable import atomic_write
from retriever.errors import RetrieverError
# recall_at, nprobe_ladder: re-exported (tests and benchmarks measure recall with them)
from retriever.tuning import _ExactTopK, nprobe_ladder, recall_at, tune_nprobe, tuning_queries  # noqa: F401

FLAT = "flat"
IVF_SQ8 = "ivf-sq8"
IVF_PQ = "ivf-pq"
KINDS = (FLAT, IVF_SQ8, IVF_PQ)

# An exact index answers a single query in about 2 ms on 2 cores up to this many floats
# (N x dim; benchmarks/ann.py sweep): `auto` builds ivf-sq8 above default_exact_max(dim) vectors.
# A catalog setting ("exact_max_vectors", `retriever optimize --exact-max`) overrides it per index.
EXACT_MAX_FLOATS = 10_000_000
DEFAULT_TARGET_RECALL = 0.95
# The tuner asks this much more recall than the target of its own held-out queries: real queries
# (text, from another part of the space) are a little harder than perturbed stored vectors.
RECALL_MARGIN = 0.01
RECALL_K = 10
TUNING_QUERIES = 500
MIN_POINTS_PER_LIST = 39  # FAISS's k-means wants at least this many training points per list
TRAIN_POINTS_PER_LIST = 64
PQ_MIN_VECTORS = 256 * MIN_POINTS_PER_LIST
FACTORY_FLAT = "IDMap2,Flat"
LISTED_MAX = 50_000  # a filter passing at most this many ids searches only the IVF lists holding them (ivf_lists)


class VectorIndexError(RetrieverError):
    """A vector index cannot be built or used as asked."""


class UnknownIndexKindError(VectorIndexError):
    """A kind other than flat, ivf-sq8, ivf-pq (or auto)."""


@dataclass(frozen=True)
class IndexInfo:
    generation: int  # catalog generation the file reflects
    count: int
    dim: int
    kind: str  # FAISS factory string, e.g. "IDMap2,Flat", "IVF1024,SQ8"
    index_type: str = FLAT  # flat | ivf-sq8 | ivf-pq
    params: dict[str, Any] = field(default_factory=dict)  # nlist, nprobe, trained_on, ...
    recall_at_10: float | None = None  # measured against exact search when built; None for flat
    token: str = ""  # new at each save: the delta log (retriever.vector_log) names the file it extends


@dataclass(frozen=True)
class BuildReport:
    """What `build_tuned` did, for `retriever optimize` and benchmarks/ann.py."""

    index_type: str
    factory: str
    params: dict[str, Any]
    recall_at_10: float | None
    target_recall: float | None
    reached: bool  # recall_at_10 >= target (always True for flat)
    count: int
    train_s: float = 0.0
    add_s: float = 0.0
    tune_s: float = 0.0
    curve: list[tuple[int, float]] = field(default_factory=list)  # (nprobe, recall@10) measured

    @property
    def build_s(self) -> float:
        return self.train_s + self.add_s + self.tune_s


def check_kind(kind: str) -> str:
    if kind != "auto" and kind not in KINDS:
        raise UnknownIndexKindError(f"unknown index kind {kind!r}: use auto, {', '.join(KINDS)}")
    return kind


def default_exact_max(dim: int) -> int:
    """The most vectors an exact index holds under `auto` (19,531 at dim 512, 14,204 at 704)."""
    return EXACT_MAX_FLOATS // max(dim, 1)


def choose_kind(count: int, exact_max: int) -> str:
    """The kind `auto` builds for `count` vectors."""
    return FLAT if count <= exact_max else IVF_SQ8


def choose_nlist(count: int) -> int:
    """About 4·sqrt(N) lists (FAISS's guideline is 4 to 16·sqrt(N); the low end keeps k-means
    training and the coarse search cheap on 2 cores), a power of two, and never fewer than
    MIN_POINTS_PER_LIST vectors per list."""
    target = 4 * math.sqrt(max(count, 1))
    nlist = 2 ** max(0, round(math.log2(target)))
    while nlist > 1 and nlist * MIN_POINTS_PER_LIST > count:
        nlist //= 2
    return max(1, nlist)


def factory_string(kind: str, dim: int, nlist: int = 0, pq_m: int = 0) -> str:
    if kind == FLAT:
        return FACTORY_FLAT
    if kind == IVF_SQ8:
        return f"IVF{nlist},SQ8"
    if kind == IVF_PQ:
        return f"IVF{nlist},PQ{pq_m}"
    raise UnknownIndexKindError(f"unknown index kind {kind!r}")


def default_pq_m(dim: int) -> int:
    """Bytes per PQ code: dim/4 (4 dimensions per byte), a divisor of dim."""
    m = max(1, dim // 4)
    while dim % m:
        m -= 1
    return m


class VectorIndex:
    KIND = FACTORY_FLAT

    def __init__(self, dim: int, index=None, *, index_type: str = FLAT, params: dict[str, Any] | None = None,
                 recall_at_10: float | None = None):
        import faiss

        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.index_type = index_type
        self.params = dict(params or {})
        self.recall_at_10 = recall_at_10
        self._lists = None  # ivf_lists.ListMap, built by the first search that needs it; dropped by add/remove
        self.position = None  # layered.LogPosition of a file a reader loaded: how far its delta log was read
        self.read_only = False  # memory-mapped (load(mmap=True)): FAISS would crash on a change
        if self.is_ivf:
            self.set_nprobe(int(self.params.get("nprobe") or 1))

    @property
    def is_ivf(self) -> bool:
        return self.index_type in (IVF_SQ8, IVF_PQ)

    @property
    def factory(self) -> str:
        return self.params.get("factory", FACTORY_FLAT) if self.is_ivf else FACTORY_FLAT

    @property
    def nlist(self) -> int:
        return int(self.index.nlist) if self.is_ivf else 0

    @property
    def nprobe(self) -> int:
        return int(self.index.nprobe) if self.is_ivf else 0

    def set_nprobe(self, nprobe: int) -> None:
        nprobe = max(1, min(int(nprobe), self.nlist))
        self.index.nprobe = nprobe
        self.params["nprobe"] = nprobe

    @classmethod
    def build(cls, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> "VectorIndex":
        """An exact index from (ids, vectors) chunks, e.g. Catalog.iter_vectors."""
        vi = cls(dim)
        for ids, vecs in chunks:
            vi.add(ids, vecs)
        return vi

    def clear(self) -> None:
        """Drop every vector; keep the kind, its training (IVF lists, codebooks) and nprobe. A
        stale file is refilled from the catalog this way without training again."""
        self._writable()
        self.index.reset()
        self._lists = None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _writable(self) -> None:
        if self.read_only:
            raise VectorIndexError("a memory-mapped FAISS index cannot be changed: load it without mmap")

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self._writable()
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vecs.shape}")
        self.index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64))
        self._lists = None

    def remove(self, ids: Iterable[int]) -> int:
        import faiss

        ids = np.fromiter(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        self._writable()
        self._lists = None
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Iterable[int] = (),
        allowed: Iterable[int] | np.ndarray | None = None,
        dropped=None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries (q, dim) -> (scores (q, k'), ids (q, k')), best first, k' = min(k, len(self)).

        Ids in `exclude` never appear. With `allowed`, only those ids can appear (FAISS's
        IDSelector, applied inside the scan); whenever at least k allowed ids are in the index,
        each row holds k results. Rows with fewer results are padded with id -1, score -inf.

        An IVF index scans more lists the more selective the filter (so that about as many allowed
        vectors are compared as without one) and the larger k, and scans every list for a row that
        still comes back short: the results are then exact within the allowed set (up to the 8-bit
        codes).

        `dropped`: a ready FAISS IDSelector of ids to leave out as well (the tombstones of an
        on-disk index, retriever.ondisk), kept by the caller."""
        import faiss

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = len(self)
        width = min(k, n)
        if width <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        exclude_ids = _id_array(exclude)
        keep: list[Any] = []  # selectors, and the arrays they point into, must outlive the search
        selector, n_allowed = None, n
        if allowed is not None:
            selector, n_allowed = _allowed_selector(allowed, keep)
            if n_allowed == 0:
                return _padded(len(queries), width)
        if len(exclude_ids):
            excluded = faiss.IDSelectorBatch(exclude_ids)
            keep.append(excluded)
            selector = faiss.IDSelectorNot(excluded) if selector is None else _and_not(selector, excluded, keep)
            keep.append(selector)
        if dropped is not None:
            selector = faiss.IDSelectorNot(dropped) if selector is None else _and_not(selector, dropped, keep)
            keep.append(selector)

        if not self.is_ivf:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            scores, ids = self.index.search(queries, width, params=params)
            return _clean(scores, ids)

        # nprobe was tuned for 10 results over every vector. A filter that keeps a fraction p of
        # the vectors leaves p of each list to compare: nprobe/p lists compare as many as an
        # unfiltered query. And k results need about k/10 times the lists of 10.
        nprobe = math.ceil(self.nprobe * max(1.0, width / RECALL_K) * n / min(n_allowed, n))
        # only the lists that hold an allowed id, when they can be fewer than the lists scanned otherwise
        if allowed is not None and n_allowed <= LISTED_MAX and n_allowed < min(nprobe, self.nlist):
            from retriever.ivf_lists import ListMap, search_lists

            ivf = self._ivf()
            if self._lists is None:
                self._lists = ListMap(ivf)
            lists = self._lists.lists_of(np.asarray(allowed, dtype=np.int64).ravel())
            if len(lists) < min(nprobe, self.nlist):  # exact within the allowed ids, as a scan of every list
                return _clean(*search_lists(ivf, self._lists, queries, width, lists, selector)) if len(lists) \
                    else _padded(len(queries), width)
        scores, ids = self._search_ivf(queries, width, selector, min(nprobe, self.nlist))
        short = np.flatnonzero((ids == -1).any(axis=1))
        if len(short) and nprobe < self.nlist:
            s2, i2 = self._search_ivf(queries[short], width, selector, self.nlist)
            scores[short], ids[short] = s2, i2
        return _clean(scores, ids)

    def _search_ivf(self, queries, k, selector, nprobe):
        import faiss

        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        if selector is not None:
            params.sel = selector
        return self.index.search(queries, k, params=params)

    def reconstruct(self, image_id: int) -> np.ndarray:
        """The stored vector (decoded from its code for an IVF index)."""
        if self.is_ivf:
            import faiss

            # By id needs a hash table from id to list position: built for the call, then
            # dropped (it would cost ~50 B a vector, and remove_ids would need IDSelectorArray).
            ivf = self._ivf()
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            try:
                return ivf.reconstruct(int(image_id))
            finally:
                ivf.set_direct_map_type(faiss.DirectMap.NoMap)
        return self.index.reconstruct(int(image_id))

    def _ivf(self):
        import faiss

        return faiss.extract_index_ivf(self.index)

    def info(self, generation: int) -> IndexInfo:
        return IndexInfo(generation=generation, count=len(self), dim=self.dim, kind=self.factory,
                         index_type=self.index_type, params=dict(self.params), recall_at_10=self.recall_at_10)

    # -- files ----------------------------------------------------------------------------------

    def save(self, path: Path, generation: int) -> str:
        """Atomic: written to a temporary file in the same folder, fsynced, then renamed over.
        The FAISS file first, then its sidecar: a kill between the two leaves a file whose sidecar
        describes another one, caught by `load` (count or kind mismatch) or by the generation.
        -> the new token the sidecar records (any delta log of the old file no longer applies)."""
        import faiss

        path = Path(path)
        info = replace(self.info(generation), token=uuid.uuid4().hex)
        _atomic_write(path, lambda tmp: faiss.write_index(self.index, str(tmp)))
        _atomic_write(_sidecar(path), lambda tmp: tmp.write_text(json.dumps(asdict(info))))
        return info.token

    @classmethod
    def load(cls, path: Path, mmap: bool = False) -> tuple["VectorIndex", IndexInfo]:
        """Raises FileNotFoundError / ValueError when the file or its sidecar is missing or unreadable.
        mmap: the codes memory-mapped, not read (milliseconds instead of ~1 s a million vectors;
        pages shared with other processes): read-only. The file is only ever replaced by a rename,
        never changed in place, so a mapping stays valid."""
        import faiss

        path = Path(path)
        info = read_info(path)
        if info is None:
            raise FileNotFoundError(path)
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        except RuntimeError as exc:
            raise ValueError(f"unreadable FAISS file {path}: {exc}") from exc
        if index.ntotal != info.count or index.d != info.dim or info.index_type not in KINDS:
            raise ValueError(f"{path} does not match its sidecar")
        ivf = faiss.try_extract_index_ivf(index)
        if (ivf is not None) != (info.index_type != FLAT) or (ivf is not None and ivf.nlist != info.params.get("nlist")):
            raise ValueError(f"{path} does not match its sidecar")  # e.g. killed between the two writes
        # nprobe is not part of the FAISS file: the constructor applies the recorded one.
        vi = cls(info.dim, index, index_type=info.index_type, params=info.params, recall_at_10=info.recall_at_10)
        vi.read_only = mmap
        return vi, info


# -- building the kind that suits the size -------------------------------------------------------------


def build_tuned(
    dim: int,
    chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    count: int,
    kind: str = "auto",
    *,
    target_recall: float = DEFAULT_TARGET_RECALL,
    exact_max: int | None = None,
    nlist: int | None = None,
    pq_m: int | None = None,
    n_queries: int = TUNING_QUERIES,
    seed: int = 0,
) -> tuple[VectorIndex, BuildReport]:
    """Build an index of `kind` (auto: by `count`, see choose_kind) over the vectors that
    `chunks()` yields as (ids, vectors); it is called twice for an IVF kind (sample, then fill),
    so memory holds the codes, a training sample and one chunk, never every float vector.

    An IVF index is trained on a sample of the vectors, then nprobe is set to the smallest value
    whose recall@10 against exact search reaches target_recall + RECALL_MARGIN on held-out queries:
    stored vectors moved away from themselves (plus a random direction and a shared offset, as
    text queries sit apart from images in CLIP space; see `tuning_queries`).
    When no nprobe reaches it, nprobe = nlist and report.reached is False; `auto` then falls back
    to an exact index, so that `auto` never trades away more recall than asked."""
    check_kind(kind)
    if count <= 0:
        raise VectorIndexError("no vectors to index")
    if exact_max is None:
        exact_max = default_exact_max(dim)
    chosen = choose_kind(count, exact_max) if kind == "auto" else kind
    if chosen == FLAT:
        started = time.perf_counter()
        vi = VectorIndex.build(dim, chunks())
        return vi, BuildReport(FLAT, FACTORY_FLAT, {}, None, None, True, len(vi), add_s=time.perf_counter() - started)
    vi, report = _build_ivf(dim, chunks, count, chosen, target_recall, nlist, pq_m, n_queries, seed)
    if kind == "auto" and not report.reached:
        started = time.perf_counter()
        flat = VectorIndex.build(dim, chunks())
        # Recorded so that later runs do not try IVF again before the collection has grown.
        flat.params = {"fallback_from": report.factory, "fallback_recall": report.recall_at_10,
                       "fallback_at": count}
        return flat, BuildReport(FLAT, FACTORY_FLAT, dict(flat.params), None, target_recall, True, len(flat),
                                 report.train_s, report.add_s + time.perf_counter() - started, report.tune_s,
                                 report.curve)
    return vi, report


def _build_ivf(dim, chunks, count, kind, target_recall, nlist, pq_m, n_queries, seed):
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    index, factory, nlist, pq_m, seeds = sample_and_train(dim, chunks, count, kind, nlist, pq_m, n_queries, rng)
    train_s = time.perf_counter() - started

    started = time.perf_counter()
    queries = tuning_queries(seeds, rng)
    truth = _ExactTopK(queries, RECALL_K)
    for ids, vecs in chunks():
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64))
        truth.update(ids, vecs)
    add_s = time.perf_counter() - started

    params = {"factory": factory, "nlist": nlist, "trained_on": int(index.ntotal)}
    if kind == IVF_PQ:
        params["pq_m"] = pq_m
    vi = VectorIndex(dim, index, index_type=kind, params=params)
    started = time.perf_counter()
    nprobe, recall, curve = tune_nprobe(vi, queries, truth.ids(), target_recall + RECALL_MARGIN)
    vi.set_nprobe(nprobe)
    vi.recall_at_10 = round(recall, 4)
    vi.params["target_recall"] = target_recall
    tune_s = time.perf_counter() - started
    report = BuildReport(kind, factory, dict(vi.params), vi.recall_at_10, target_recall,
                         recall >= target_recall, len(vi), train_s, add_s, tune_s, curve)
    return vi, report


def sample_and_train(dim: int, chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], count: int,
                     kind: str, nlist: int | None, pq_m: int | None, n_queries: int, rng: np.random.Generator):
    """One pass over `chunks()` for a training sample and tuning-query seeds, then an empty IVF
    index of `kind` trained on the sample. -> (index, factory, nlist, pq_m, seeds). Shared by the
    in-memory build and the on-disk one (retriever.ondisk), so both train alike."""
    import faiss

    nlist = nlist or choose_nlist(count)
    pq_m = pq_m or default_pq_m(dim)
    factory = factory_string(kind, dim, nlist, pq_m)
    n_train = min(count, nlist * TRAIN_POINTS_PER_LIST)
    if kind == IVF_PQ:
        if count < PQ_MIN_VECTORS:
            raise VectorIndexError(f"ivf-pq needs at least {PQ_MIN_VECTORS:,} vectors to train its codebooks "
                                   f"(256 centroids per sub-quantizer); this index holds {count:,}: use ivf-sq8")
        n_train = max(n_train, PQ_MIN_VECTORS)
    n_queries = min(n_queries, count)

    train, seeds = _sample(chunks(), count, n_train, n_queries, rng)
    if len(train) < nlist * MIN_POINTS_PER_LIST:  # fewer vectors than counted (e.g. removed since)
        nlist = choose_nlist(len(train))
        factory = factory_string(kind, dim, nlist, pq_m)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    # A collection under 39 vectors a list (only when a kind is forced on a tiny collection):
    # train anyway, without FAISS's warning on stderr.
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.min_points_per_centroid = min(MIN_POINTS_PER_LIST, len(train) // nlist)
    if kind == IVF_PQ:
        faiss.downcast_index(ivf).do_polysemous_training = False  # for Hamming pre-filtering, unused here
    index.train(train)
    return index, factory, nlist, pq_m, seeds


def _sample(chunks: Iterable[tuple[np.ndarray, np.ndarray]], count: int, n_train: int, n_queries: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One pass: n_train vectors for training and n_queries query seeds, each drawn uniformly
    from positions 0..count-1 (ids follow folders and dates: a stride would be biased). The two
    draws are independent; the seeds are perturbed before use, so a seed that is also a training
    vector is not a query the index has seen."""
    positions = [np.sort(rng.choice(count, size=min(count, n), replace=False)) for n in (n_train, n_queries)]
    out: list[list[np.ndarray]] = [[], []]
    start = 0
    for _, vecs in chunks:
        for picks, rows in zip(positions, out):
            lo, hi = np.searchsorted(picks, [start, start + len(vecs)])
            if hi > lo:
                rows.append(np.asarray(vecs[picks[lo:hi] - start], dtype=np.float32))
        start += len(vecs)
    dim = next((r.shape[1] for rows in out for r in rows), 0)
    train, seeds = (np.ascontiguousarray(np.concatenate(rows)) if rows else np.zeros((0, dim), np.float32)
                    for rows in out)
    return train, seeds


def iter_array_chunks(ids: np.ndarray, vecs: np.ndarray, size: int = 20_000) -> Callable[[], Iterator]:
    """A re-iterable chunk source over arrays in memory (tests, benchmarks)."""

    def chunks():
        for start in range(0, len(ids), size):
            yield ids[start : start + size], vecs[start : start + size]

    return chunks


# -- helpers ---------------------------------------------------------------------------------------


# Allowed ids become a bitmap (one bit per id up to the largest: catalog ids are dense) unless it
# would exceed this many bytes beyond 8 per indexed vector; then a hash set (IDSelectorBatch).
# Both are FAISS IDSelectors; the bitmap is built by numpy in ~1 ms per million ids, where a hash
# set of 100,000 ids costs ~10 ms to build.
BITMAP_SLACK_BYTES = 1 << 21


def _allowed_selector(allowed, keep: list) -> tuple[Any, int]:
    """-> (IDSelector for `allowed`, how many distinct ids it holds)."""
    import faiss

    ids = np.asarray(allowed if isinstance(allowed, np.ndarray) else list(allowed), dtype=np.int64).ravel()
    ids = ids[ids >= 0]
    if len(ids) == 0:
        return None, 0
    top = int(ids.max())
    if top // 8 <= BITMAP_SLACK_BYTES + 8 * len(ids):
        mask = np.zeros(top + 1, dtype=bool)
        mask[ids] = True
        bits = np.packbits(mask, bitorder="little")  # FAISS: id i is bit (i & 7) of byte i >> 3
        selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))  # n: bytes, not bits
        keep.extend((bits, selector))
        return selector, int(np.count_nonzero(mask))
    ids = np.unique(ids)
    selector = faiss.IDSelectorBatch(ids)
    keep.append(selector)
    return selector, len(ids)


def _id_array(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    if isinstance(ids, np.ndarray):
        arr = ids.astype(np.int64, copy=False).ravel()
    else:
        arr = np.fromiter((int(i) for i in ids), dtype=np.int64)
    return np.unique(arr)


def _and_not(allowed, excluded, keep: list):
    import faiss

    negated = faiss.IDSelectorNot(excluded)
    keep.append(negated)
    return faiss.IDSelectorAnd(allowed, negated)


def _clean(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.array(scores, dtype=np.float32)
    scores[ids == -1] = -np.inf
    return scores, ids


def _padded(n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, width), -np.inf, np.float32), np.full((n, width), -1, np.int64)


def read_info(path: Path) -> IndexInfo | None:
    """The sidecar of a FAISS file that exists; None when either is missing or unreadable."""
    if not Path(path).is_file():
        return None
    try:
        raw = json.loads(_sidecar(Path(path)).read_text())
        return IndexInfo(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _atomic_write(path: Path, write) -> None:
    atomic_write(path, write)  # private (0600), as the catalog
