"""Sharded, on-disk IVF indexes, for collections beyond memory. Knows nothing of SQL.

    build_ondisk        trains an IVF index (SQ8 or PQ codes) on a sample, fills shards in
                        parallel (threads, each a `faiss.clone_index` of the trained empty index,
                        written to a shard file whenever it holds `shard_size` vectors, so memory
                        holds a few shards' codes, never the collection), merges the shards into
                        one file of inverted lists (`faiss.contrib.ondisk.merge_ondisk`, in a
                        short-lived subprocess: it leaks the shards' lists), and tunes nprobe as
                        the in-memory IVF does (retriever.tuning.tune_nprobe). Filling and
                        merging: retriever.ondisk_shards.
    OnDiskVectorIndex   the merged index with its lists memory-mapped read-only, plus what changed
                        since it was built: an in-memory exact *delta* of vectors added, and
                        *tombstones* for ids removed or replaced (the lists are read-only).
                        Searches both and merges the top k. `retriever optimize` folds both into
                        a fresh build.

Files, beside the catalog (TOKEN names one build; only vectors.faiss, the sidecar, the delta and
the tombstones are ever replaced, each by an atomic rename; names and reading: retriever.ondisk_files):

    vectors.faiss                the trained index; its inverted lists live in the .ivfdata
    vectors.faiss.json           sidecar (vectors.IndexInfo): generation, token, counts, nprobe, recall
    vectors.TOKEN.ivfdata        inverted lists (codes and ids), memory-mapped by searches
    vectors.TOKEN.ids            the ids the .ivfdata holds, sorted (raw int64, memory-mapped):
                                 FAISS has no cheap id lookup on on-disk lists
    vectors.TOKEN.hashes         a 64-bit hash of each of those vectors (raw uint64): which stored
                                 vectors changed since, when the sidecar lags the catalog
    vectors.TOKEN.build.json     the build's parameters, nprobe and recall
    vectors.TOKEN.delta.faiss    vectors added since the build (IDMap2,Flat)
    vectors.TOKEN.tombstones.npy ids of the .ivfdata no longer live (removed, or replaced by the delta)

The sidecar is written last and is the commit point. A build writes everything under the new
TOKEN (and a temporary shard folder) before vectors.faiss and its sidecar are replaced, so a
crash or an error mid-build leaves the previous index as it was; the next successful save
deletes what another TOKEN left behind. When the sidecar and the files disagree (a kill between
two renames) or lag the catalog, `OnDiskVectorIndex.open_main` reopens the build that
vectors.faiss names, and `resync` rebuilds its delta and tombstones from the catalog's vectors.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from retriever.layered import MainAndDelta, bitmap_selector
from retriever.ondisk_files import (
    BUILD_DIR_PREFIX,
    OnDiskIndexError,
    _Files,
    _fsync,
    _mmap_hashes,
    _mmap_ids,
    _read_main,
    _save_npy,
    remove_ondisk_files,
    vector_hashes,
)
from retriever.ondisk_shards import DEFAULT_SHARD_SIZE, _fill_shards, _merge_in_subprocess
from retriever.tuning import _ExactTopK, tune_nprobe, tuning_queries
from retriever.vectors import (
    DEFAULT_TARGET_RECALL,
    IVF_PQ,
    IVF_SQ8,
    RECALL_K,
    RECALL_MARGIN,
    TUNING_QUERIES,
    BuildReport,
    IndexInfo,
    VectorIndex,
    VectorIndexError,
    _atomic_write,
    _sidecar,
    read_info,
    sample_and_train,
)

ONDISK_SUFFIX = "-ondisk"
IVF_SQ8_ONDISK = IVF_SQ8 + ONDISK_SUFFIX
IVF_PQ_ONDISK = IVF_PQ + ONDISK_SUFFIX
ONDISK_KINDS = (IVF_SQ8_ONDISK, IVF_PQ_ONDISK)

Progress = Callable[[str, int, int], None]  # (stage, done, total): "sample", "fill", "merge", "tune"


def is_ondisk(index_type: str | None) -> bool:
    return bool(index_type) and index_type in ONDISK_KINDS


def ondisk_kind(kind: str) -> str:
    """ivf-sq8 / ivf-pq (or auto: ivf-sq8) -> its on-disk kind."""
    if kind in ONDISK_KINDS:
        return kind
    if kind == "auto":
        return IVF_SQ8_ONDISK
    if kind in (IVF_SQ8, IVF_PQ):
        return kind + ONDISK_SUFFIX
    raise OnDiskIndexError(f"an on-disk index is ivf-sq8 or ivf-pq, not {kind!r}")


def base_kind(kind: str) -> str:
    return kind[: -len(ONDISK_SUFFIX)] if kind.endswith(ONDISK_SUFFIX) else kind


# -- building ----------------------------------------------------------------------------------------


def build_ondisk(
    dim: int,
    chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    count: int,
    main: Path,
    kind: str = IVF_SQ8,
    *,
    target_recall: float = DEFAULT_TARGET_RECALL,
    nlist: int | None = None,
    pq_m: int | None = None,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    n_queries: int = TUNING_QUERIES,
    seed: int = 0,
    trained=None,
    progress: Progress | None = None,
) -> tuple["OnDiskVectorIndex", BuildReport]:
    """A new on-disk index of `kind` (ivf-sq8, ivf-pq, or their -ondisk names) over the (ids,
    vectors) that `chunks()` yields; called twice (sample, then fill), as in vectors.build_tuned.
    Its files are written under a new token beside `main`; nothing in use is replaced until the
    result's `save(main, generation)`. `trained`: an already trained empty IVF index to fill
    instead of training one (the tests compare with an in-memory index of the same training).
    Ids must be unique. Raises OnDiskIndexError; on any error the new files are removed."""
    import faiss

    kind = base_kind(ondisk_kind(kind))
    if count <= 0:
        raise OnDiskIndexError("no vectors to index")
    workers = max(1, workers or os.cpu_count() or 1)
    notify = progress or (lambda stage, done, total: None)
    main = Path(main)
    files = _Files(main, uuid.uuid4().hex[:12])
    build_dir = main.parent / f"{BUILD_DIR_PREFIX}{files.token}"
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    try:
        notify("sample", 0, count)
        if trained is None:
            trained, factory, nlist, pq_m, seeds = sample_and_train(dim, chunks, count, kind, nlist, pq_m,
                                                                    n_queries, rng)
        else:
            from retriever.vectors import _sample

            ivf = faiss.extract_index_ivf(trained)
            nlist = int(ivf.nlist)
            pq_m = int(faiss.downcast_index(ivf).pq.M) if kind == IVF_PQ else None
            factory = f"IVF{nlist},SQ8" if kind == IVF_SQ8 else f"IVF{nlist},PQ{pq_m}"
            _, seeds = _sample(chunks(), count, 0, min(n_queries, count), rng)
        if trained.ntotal:
            raise OnDiskIndexError("the trained index to fill must be empty")
        train_s = time.perf_counter() - started

        started = time.perf_counter()
        build_dir.mkdir(mode=0o700)
        queries = tuning_queries(seeds, rng)
        truth = _ExactTopK(queries, RECALL_K)
        shards, total = _fill_shards(trained, chunks, build_dir, files, workers, shard_size, truth,
                                     lambda done: notify("fill", done, count))
        if total == 0:
            raise OnDiskIndexError("no vectors to index")
        notify("merge", 0, len(shards))
        trained_path = build_dir / "trained.faiss"
        faiss.write_index(trained, str(trained_path))
        _merge_in_subprocess(trained_path, shards, files.ivfdata, files.staged_main)
        _fsync(files.ivfdata)
        shutil.rmtree(build_dir, ignore_errors=True)
        notify("merge", len(shards), len(shards))
        add_s = time.perf_counter() - started

        started = time.perf_counter()
        notify("tune", 0, 1)
        index = _read_main(files.staged_main, files)
        params = {"factory": factory, "nlist": nlist, "trained_on": int(total), "shards": len(shards)}
        if kind == IVF_PQ:
            params["pq_m"] = pq_m
        main_vi = VectorIndex(dim, index, index_type=kind, params=params)
        nprobe, recall, curve = tune_nprobe(main_vi, queries, truth.ids(), target_recall + RECALL_MARGIN)
        main_vi.set_nprobe(nprobe)
        main_vi.recall_at_10 = round(recall, 4)
        main_vi.params["target_recall"] = target_recall
        build = {"index_type": kind + ONDISK_SUFFIX, "params": dict(main_vi.params),
                 "recall_at_10": main_vi.recall_at_10, "count": int(total)}
        _atomic_write(files.build, lambda tmp: tmp.write_text(json.dumps(build)))
        tune_s = time.perf_counter() - started
        notify("tune", 1, 1)
    except BaseException as exc:
        shutil.rmtree(build_dir, ignore_errors=True)
        for path in files.owned():
            path.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, VectorIndexError):
            raise OnDiskIndexError(f"on-disk build failed: {exc}") from exc
        raise
    vi = OnDiskVectorIndex(dim, main_vi, files, _mmap_ids(files.ids, total))
    report = BuildReport(kind + ONDISK_SUFFIX, factory, dict(vi.params), vi.recall_at_10, target_recall,
                         recall >= target_recall, int(total), train_s, add_s, tune_s, curve)
    return vi, report


# -- the index ---------------------------------------------------------------------------------------


class OnDiskVectorIndex(MainAndDelta):
    """The on-disk main index + an in-memory delta + tombstones; the VectorIndex interface
    (add, remove, search, save, len, nprobe) that the indexer and the searcher use."""

    is_ivf = True  # searches always take the selector path (search.Searcher)

    def __init__(self, dim: int, main: VectorIndex, files: _Files, main_ids: np.ndarray,
                 delta: VectorIndex | None = None, tombstones: np.ndarray | None = None):
        self.dim = dim
        self.main = main
        self.files = files
        self.main_ids = main_ids  # sorted, memory-mapped
        self.delta = delta if delta is not None else VectorIndex(dim)
        self.tombstones = np.zeros(0, np.int64) if tombstones is None else np.asarray(tombstones, np.int64)
        self._dropped: tuple[Any, ...] | None = None  # (selector, bits) for the tombstones, built on demand

    # -- what it is ------------------------------------------------------------------------------

    @property
    def index_type(self) -> str:
        return self.main.index_type + ONDISK_SUFFIX

    def set_nprobe(self, nprobe: int) -> None:
        self.main.set_nprobe(nprobe)

    @property
    def token(self) -> str:
        return self.files.token

    @property
    def main_count(self) -> int:
        return len(self.main_ids)

    def __len__(self) -> int:
        return self.main_count - len(self.tombstones) + len(self.delta)

    def ivfdata_bytes(self) -> int:
        try:
            return self.files.ivfdata.stat().st_size
        except OSError:
            return 0

    # -- changes ---------------------------------------------------------------------------------

    def _in_main(self, ids: np.ndarray) -> np.ndarray:
        if self.main_count == 0:
            return np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.main_ids, ids), self.main_count - 1)
        return np.asarray(self.main_ids[pos]) == ids

    def _tombstone(self, ids: np.ndarray) -> int:
        fresh = np.setdiff1d(ids[self._in_main(ids)], self.tombstones)
        if len(fresh):
            self.tombstones = np.union1d(self.tombstones, fresh)
            self._dropped = None
        return len(fresh)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """To the delta. An id the main index holds gets a tombstone there (its vector was replaced)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        self._tombstone(ids)
        if len(self.delta):
            self.delta.remove(ids)
        self.delta.add(ids, vecs)

    def remove(self, ids: Iterable[int]) -> int:
        ids = np.unique(np.fromiter(ids, dtype=np.int64))
        if len(ids) == 0:
            return 0
        removed = self.delta.remove(ids) if len(self.delta) else 0
        return removed + self._tombstone(ids)

    def resync(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Make delta and tombstones agree with the stored vectors `chunks` yields (the catalog's,
        the truth): a vector the main index holds unchanged stays; a new or changed one goes to
        the delta; a main vector no longer stored, or changed, is tombstoned. One pass; compares
        vector hashes, not vectors."""
        hashes = _mmap_hashes(self.files.hashes, self.main_count)
        live = np.zeros(self.main_count, bool)
        delta = VectorIndex(self.dim)
        for ids, vecs in chunks:
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            if len(ids) == 0:
                continue
            pos = np.minimum(np.searchsorted(self.main_ids, ids), max(self.main_count - 1, 0))
            in_main = self._in_main(ids)
            same = in_main.copy()
            same[in_main] = np.asarray(hashes[pos[in_main]]) == vector_hashes(vecs[in_main])
            live[pos[same]] = True
            if not same.all():
                delta.add(ids[~same], vecs[~same])
        self.delta = delta
        self.tombstones = np.asarray(self.main_ids[~live], dtype=np.int64)
        self._dropped = None

    # -- search ----------------------------------------------------------------------------------

    def _dropped_selector(self):
        """The tombstones as a FAISS bitmap over the main index's ids (catalog ids are dense)."""
        if len(self.tombstones) == 0:
            return None
        if self._dropped is None:
            self._dropped = bitmap_selector(self.tombstones)
        return self._dropped[0]

    def _main_live(self) -> bool:
        return self.main_count > len(self.tombstones)

    def reconstruct(self, image_id: int) -> np.ndarray:
        ids = np.array([image_id], np.int64)
        if len(self.delta):
            try:
                return self.delta.reconstruct(image_id)
            except RuntimeError:
                pass
        if not self._in_main(ids)[0] or image_id in set(self.tombstones.tolist()):
            raise KeyError(image_id)
        return self.main.reconstruct(image_id)

    def clear(self) -> None:
        raise OnDiskIndexError("an on-disk index is refilled by a new build (retriever optimize), not cleared")

    # -- files -----------------------------------------------------------------------------------

    def info(self, generation: int) -> IndexInfo:
        params = dict(self.main.params)
        params.update({"token": self.token, "main_count": self.main_count, "delta_count": len(self.delta),
                       "tombstones": len(self.tombstones), "ivfdata": self.files.ivfdata.name})
        return IndexInfo(generation=generation, count=len(self), dim=self.dim, kind=self.factory,
                         index_type=self.index_type, params=params, recall_at_10=self.recall_at_10)

    def save(self, path: Path, generation: int) -> None:
        """The delta and tombstones, then the sidecar (the commit point). A freshly built index is
        installed first: the old sidecar goes, the new main file is renamed over vectors.faiss.
        Then the files of every other build are deleted."""
        import faiss

        path = Path(path)
        if path != self.files.main:
            raise OnDiskIndexError(f"an on-disk index is saved where it was built ({self.files.main}), not {path}")
        installing = self.files.staged_main.exists()
        if installing:
            # A kill between these renames leaves no sidecar or one naming another build: the
            # next open reopens the build vectors.faiss names (open_main) and resyncs it.
            _sidecar(path).unlink(missing_ok=True)
            os.replace(self.files.staged_main, path)
        _atomic_write(self.files.delta, lambda tmp: faiss.write_index(self.delta.index, str(tmp)))
        _atomic_write(self.files.tombstones, lambda tmp: _save_npy(tmp, self.tombstones))
        info = self.info(generation)
        _atomic_write(_sidecar(path), lambda tmp: tmp.write_text(json.dumps(asdict(info))))
        if installing:
            remove_ondisk_files(path, keep_token=self.token)

    @classmethod
    def load(cls, path: Path) -> tuple["OnDiskVectorIndex", IndexInfo]:
        """The index its sidecar describes. Raises FileNotFoundError / ValueError when a file is
        missing or disagrees with the sidecar (then `open_main` + `resync` repair it)."""
        import faiss

        path = Path(path)
        info = read_info(path)
        if info is None:
            raise FileNotFoundError(path)
        if not is_ondisk(info.index_type) or "token" not in info.params:
            raise ValueError(f"{path} is not an on-disk index")
        files = _Files(path, str(info.params["token"]))
        index = _read_main(path, files)
        params = {k: v for k, v in info.params.items()
                  if k not in ("token", "main_count", "delta_count", "tombstones", "ivfdata")}
        main_count = int(info.params.get("main_count", -1))
        if index.ntotal != main_count or index.d != info.dim:
            raise ValueError(f"{path} does not match its sidecar")
        main = VectorIndex(info.dim, index, index_type=base_kind(info.index_type), params=params,
                           recall_at_10=info.recall_at_10)
        try:
            delta = faiss.read_index(str(files.delta))
            tombstones = np.load(files.tombstones)
        except (RuntimeError, OSError) as exc:
            raise ValueError(f"the delta or tombstones of {path} are unreadable: {exc}") from exc
        if delta.ntotal != info.params.get("delta_count") or len(tombstones) != info.params.get("tombstones") \
                or delta.d != info.dim:
            raise ValueError(f"the delta or tombstones of {path} do not match its sidecar")
        vi = cls(info.dim, main, files, _mmap_ids(files.ids, main_count), VectorIndex(info.dim, delta), tombstones)
        if len(vi) != info.count:
            raise ValueError(f"{path} does not match its sidecar")
        return vi, info

    @classmethod
    def open_main(cls, path: Path) -> "OnDiskVectorIndex":
        """The build that vectors.faiss names, whatever the sidecar says, with an empty delta and no
        tombstones: call `resync` before use. Raises FileNotFoundError / ValueError."""
        import faiss

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(path)
        index = _read_main(path)
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
        files = _Files(path, _Files.token_of_ivfdata(path, lists.filename))
        try:
            build = json.loads(files.build.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{files.build} is missing or unreadable") from exc
        if build.get("count") != index.ntotal or not is_ondisk(build.get("index_type")):
            raise ValueError(f"{path} does not match {files.build.name}")
        main = VectorIndex(index.d, index, index_type=base_kind(build["index_type"]), params=build["params"],
                           recall_at_10=build.get("recall_at_10"))
        return cls(index.d, main, files, _mmap_ids(files.ids, int(index.ntotal)))


def build_size(vi: OnDiskVectorIndex) -> int:
    """Bytes of a build's files on disk: main file (or its staged copy), lists, ids and hashes."""
    files = vi.files
    main = files.main if files.main.is_file() else files.staged_main
    return sum(p.stat().st_size for p in (main, files.ivfdata, files.ids, files.hashes) if p.is_file())


def ondisk_status(main: Path, info: IndexInfo | None) -> dict[str, Any] | None:
    """For `retriever status`: the kind as shown ("ivf-sq8 on disk"), the parameters worth
    showing, and the files' figures; None when `info` is not an on-disk index's."""
    if info is None or not is_ondisk(info.index_type) or "token" not in info.params:
        return None
    files = _Files(Path(main), str(info.params["token"]))
    try:
        ivfdata_bytes = files.ivfdata.stat().st_size
    except OSError:
        ivfdata_bytes = None
    p = info.params
    shown = {key: p[key] for key in ("nlist", "nprobe", "pq_m", "trained_on", "target_recall") if key in p}
    shown["ivfdata"] = f"{ivfdata_bytes / 1e6:.1f} MB" if ivfdata_bytes is not None else "missing"
    shown["delta"] = p.get("delta_count", 0)
    shown["tombstones"] = p.get("tombstones", 0)
    return {
        "shown_kind": base_kind(info.index_type) + " on disk",
        "shown_params": shown,
        "files": {"ivfdata": files.ivfdata.name, "ivfdata_bytes": ivfdata_bytes,
                  "main_vectors": p.get("main_count"), "delta_vectors": p.get("delta_count", 0),
                  "tombstones": p.get("tombstones", 0), "shards": p.get("shards")},
    }


def load_any(path: Path):
    """VectorIndex.load or OnDiskVectorIndex.load, by the sidecar's kind. -> (index, IndexInfo)."""
    info = read_info(path)
    if info is not None and is_ondisk(info.index_type):
        return OnDiskVectorIndex.load(path)
    return VectorIndex.load(path)
