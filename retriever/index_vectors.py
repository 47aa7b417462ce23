"""Which FAISS index an index folder holds, kept in step with its catalog: the current file, or
one rebuilt from the stored vectors when it is stale or missing (refilled in the kind it has,
without training again, while that kind still suits the size); the kind that suits the size
(the catalog settings `retriever optimize` records); on-disk builds (retriever.ondisk); and
`retriever optimize` itself. The vector half of retriever.index.Index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retriever.errors import RetrieverError

VECTORS_FILE = "vectors.faiss"
# Catalog settings for the kind of vector index (written by `retriever optimize`).
INDEX_KIND_SETTING = "vector_index_kind"  # auto | flat | ivf-sq8 | ivf-pq
TARGET_RECALL_SETTING = "target_recall"  # recall@10 an IVF index must reach against exact search
EXACT_MAX_SETTING = "exact_max_vectors"  # auto: exact up to this many vectors
ON_DISK_SETTING = "vector_index_on_disk"  # true: IVF lists on disk (retriever.ondisk), kept until --in-memory
# An IVF index is trained again once the collection has grown this much since its training.
GROWTH_BEFORE_RETRAINING = 4


class IndexVectors:
    """The vector index of an Index (which this is a base class of): uses its `folder`,
    `catalog`, `dim`, `name` and `_lock_fd` (the writer lock, when this process holds it)."""

    @property
    def vectors_path(self) -> Path:
        return self.folder / VECTORS_FILE

    @property
    def vector_log_path(self) -> Path:
        from retriever.vector_log import log_path

        return log_path(self.vectors_path)

    def vector_index(self, previous=None):
        """The FAISS index for the catalog's current generation: the saved file when it is current,
        or the file with its delta log's records laid over it (retriever.index_log; `previous`, a
        view this process already holds, is extended by the new records only), else rebuilt from
        the stored vectors (and saved, when this process holds the writer lock).

        A rebuild makes the kind that suits the count (see `wanted_index_kind`). A stale file of
        that kind lends its training (IVF lists, codebooks, nprobe) and is refilled from the
        catalog: none of its vectors is trusted, and nothing is trained again."""
        from retriever.index_log import read_view, save_base
        from retriever.ondisk import is_ondisk
        from retriever.vectors import read_info

        generation = self.catalog.generation()
        info = read_info(self.vectors_path)
        on_disk = (info is not None and is_ondisk(info.index_type)) or self.on_disk_wanted()
        if on_disk:
            ondisk = self._ondisk_vector_index(generation)
            if ondisk is not None:
                return ondisk
        stale = None
        if info is None or not is_ondisk(info.index_type):  # unusable on-disk files: never opened read-write
            for _ in range(2):  # a writer may fold the log into a new file between two reads: look again
                view, stale = read_view(self, generation, previous)
                if view is not None:
                    return view
                previous = None
        vi = self._rebuild_vectors(stale)
        if self._lock_fd is not None:
            save_base(self, vi, generation)
        return vi

    def vector_writer(self):
        """With the writer lock: what a run writes the vectors through (retriever.index_log)."""
        from retriever.index_log import open_writer

        return open_writer(self)

    def on_disk_wanted(self) -> bool:
        """Whether `retriever optimize --on-disk` put the index on disk (until --in-memory)."""
        return bool(self.catalog.get_setting(ON_DISK_SETTING, False))

    def _ondisk_vector_index(self, generation: int):
        """The on-disk index when it is current; else the build vectors.faiss names, its delta and
        tombstones made again from the catalog (saved, with the lock); else, with the lock, a new
        on-disk build. None when none can be had (no lock and no usable build: the caller builds
        in memory, so that search always works)."""
        from retriever.ondisk import OnDiskVectorIndex

        for _ in range(2):  # a concurrent optimize may swap the files between two reads: look again
            try:
                vi, info = OnDiskVectorIndex.load(self.vectors_path)
            except (FileNotFoundError, ValueError):
                continue
            if info.dim == self.dim and info.generation == generation:
                return vi
            break
        try:
            vi = OnDiskVectorIndex.open_main(self.vectors_path)
        except (FileNotFoundError, ValueError):
            vi = None
        if vi is not None and vi.dim == self.dim:
            vi.resync(self.catalog.iter_vectors(self.dim))
            if self._lock_fd is not None:
                vi.save(self.vectors_path, generation)
            return vi
        count = self.catalog.counts()["stored_vectors"]
        if self._lock_fd is None or count == 0 or not self.on_disk_wanted():
            return None
        from retriever.vectors import VectorIndexError

        try:
            vi, _ = self._build_ondisk(None, count)
        except VectorIndexError:  # e.g. ivf-pq on a collection shrunk under its training minimum
            return None
        vi.save(self.vectors_path, generation)
        return vi

    def _build_ondisk(self, kind: str | None, count: int, target_recall: float | None = None,
                      workers: int | None = None, shard_size: int | None = None, progress=None):
        """A new on-disk index (not yet saved) of `kind` (None: the recorded kind when it is an IVF
        one, else ivf-sq8) from the stored vectors. -> (OnDiskVectorIndex, BuildReport)."""
        from retriever.ondisk import DEFAULT_SHARD_SIZE, build_ondisk, ondisk_kind
        from retriever.vectors import IVF_PQ, IVF_SQ8

        settings = self.vector_index_settings()
        if kind is None:
            kind = settings["kind"] if settings["kind"] in (IVF_SQ8, IVF_PQ) else IVF_SQ8
        return build_ondisk(
            self.dim,
            lambda: self.catalog.iter_vectors(self.dim),
            count,
            self.vectors_path,
            ondisk_kind(kind),
            target_recall=settings["target_recall"] if target_recall is None else target_recall,
            workers=workers,
            shard_size=shard_size or DEFAULT_SHARD_SIZE,
            progress=progress,
        )

    # -- the kind of vector index ---------------------------------------------------------------

    def vector_index_settings(self) -> dict[str, Any]:
        """kind (auto | flat | ivf-sq8 | ivf-pq), target_recall, exact_max: catalog settings that
        `retriever optimize` writes, else the defaults of retriever.vectors."""
        from retriever.vectors import DEFAULT_TARGET_RECALL, default_exact_max

        exact_max = self.catalog.get_setting(EXACT_MAX_SETTING)
        return {
            "kind": self.catalog.get_setting(INDEX_KIND_SETTING, "auto"),
            "target_recall": float(self.catalog.get_setting(TARGET_RECALL_SETTING, DEFAULT_TARGET_RECALL)),
            "exact_max": default_exact_max(self.dim) if exact_max is None else int(exact_max),
        }

    def wanted_index_kind(self, count: int, current=None) -> str:
        """The kind to hold `count` vectors: the one `retriever optimize --kind` pinned, else exact
        up to exact_max vectors and ivf-sq8 above. An IVF index goes back to exact only below half
        the threshold, so a collection that hovers around it is not rebuilt back and forth; an
        exact index that `auto` fell back to (IVF missed the recall target) stays exact until
        the collection has grown fourfold."""
        from retriever.vectors import FLAT, choose_kind

        settings = self.vector_index_settings()
        if settings["kind"] != "auto":
            return settings["kind"]
        exact_max = settings["exact_max"]
        if current is not None and current.is_ivf and count > exact_max // 2:
            return current.index_type
        if current is not None and not current.is_ivf and "fallback_at" in current.params:
            if count < GROWTH_BEFORE_RETRAINING * int(current.params["fallback_at"]):
                return FLAT
        return choose_kind(count, exact_max)

    def _suits(self, vi, count: int) -> bool:
        """Whether `vi` is the wanted kind and, for IVF, trained on a collection of about this size."""
        if vi.index_type != self.wanted_index_kind(count, vi):
            return False
        if vi.is_ivf:
            trained_on = int(vi.params.get("trained_on") or 0)
            return trained_on * GROWTH_BEFORE_RETRAINING >= count
        return True

    def _rebuild_vectors(self, stale=None):
        count = self.catalog.counts()["stored_vectors"]
        if stale is not None and self._suits(stale, count):
            stale.clear()
            for ids, vecs in self.catalog.iter_vectors(self.dim):
                stale.add(ids, vecs)
            return stale
        vi, _ = self._build_or_exact(count)
        return vi

    def _build_or_exact(self, count: int):
        """The recorded kind, or exact when it cannot be built (ivf-pq pinned on a collection that
        has shrunk under its training minimum): search must always work."""
        from retriever.vectors import FLAT, VectorIndexError

        try:
            return self.build_vector_index(None, count)
        except VectorIndexError:
            return self.build_vector_index(FLAT, count)

    def build_vector_index(self, kind: str | None = None, count: int | None = None,
                           target_recall: float | None = None, exact_max: int | None = None):
        """A new index of `kind` (None: the recorded setting, auto unless pinned) from the stored
        vectors (no encoder), not saved. target_recall, exact_max: None for the recorded ones.
        -> (VectorIndex, vectors.BuildReport)."""
        from retriever.vectors import FLAT, FACTORY_FLAT, BuildReport, VectorIndex, build_tuned

        if count is None:
            count = self.catalog.counts()["stored_vectors"]
        settings = self.vector_index_settings()
        kind = kind or settings["kind"]
        if count == 0:
            return VectorIndex(self.dim), BuildReport(FLAT, FACTORY_FLAT, {}, None, None, True, 0)
        return build_tuned(
            self.dim,
            lambda: self.catalog.iter_vectors(self.dim),
            count,
            kind,
            target_recall=settings["target_recall"] if target_recall is None else target_recall,
            exact_max=settings["exact_max"] if exact_max is None else exact_max,
        )

    def adapt_vector_index(self, vectors=None):
        """After an indexing run, with the writer lock: rebuild the FAISS file when the collection
        has outgrown its kind (exact past the threshold, IVF grown fourfold since training, IVF
        shrunk below half the threshold). `vectors`: the run's current in-memory index (None when
        the run changed nothing: then nothing is done). -> the BuildReport, or None.

        An on-disk index stays on disk: its delta grows until `retriever optimize` folds it in."""
        from retriever.index_log import save_base
        from retriever.ondisk import is_ondisk

        if vectors is None or self._lock_fd is None:
            return None
        if is_ondisk(vectors.index_type):
            return None
        if self.on_disk_wanted() and len(vectors):  # an in-memory stand-in (the on-disk files were lost)
            from retriever.vectors import VectorIndexError

            try:
                vi, report = self._build_ondisk(None, len(vectors))
            except VectorIndexError:  # cannot be built (too few vectors for ivf-pq): stays in memory
                vi = None
            if vi is not None:
                vi.save(self.vectors_path, self.catalog.generation())
                return report
        if self._suits(vectors, len(vectors)):
            return None
        vi, report = self._build_or_exact(len(vectors))
        save_base(self, vi, self.catalog.generation())
        return report

    def optimize(self, kind: str | None = "auto", target_recall: float | None = None, exact_max: int | None = None,
                 on_disk: bool | None = None, workers: int | None = None, shard_size: int | None = None,
                 progress=None):
        """`retriever optimize`: rebuild from the stored vectors, save, and record the choices
        (kind, target_recall, exact_max: None keeps the recorded one; on_disk) for later rebuilds,
        once the build has succeeded. Needs the writer lock. -> (BuildReport, bytes of the saved
        files).

        on_disk: True builds an on-disk IVF index (retriever.ondisk; kind ivf-sq8 or ivf-pq, None
        or auto: the recorded IVF kind, else ivf-sq8) from `workers` parallel shards of at most
        `shard_size` vectors; False builds in memory; None keeps an on-disk index on disk when no
        kind is given (folding its delta and tombstones into a fresh build), else in memory.
        `progress(stage, done, total)` hears how an on-disk build goes."""
        from retriever.index_log import save_base
        from retriever.ondisk import build_size, remove_ondisk_files
        from retriever.vectors import VectorIndexError, check_kind

        if self._lock_fd is None:
            raise RetrieverError("optimize needs the writer lock (Index.acquire_lock)")
        if on_disk is None:
            on_disk = kind is None and self.on_disk_wanted()
        if on_disk:
            if kind == "auto":
                kind = None
            if kind is not None:
                check_kind(kind)
        else:
            kind = kind or "auto"
            check_kind(kind)
        if target_recall is not None and not 0 < target_recall <= 1:
            raise VectorIndexError(f"the target recall must be in (0, 1], not {target_recall}")
        count = self.catalog.counts()["stored_vectors"]
        if count == 0:
            raise VectorIndexError(f"index {self.name!r} holds no vectors yet: run `retriever index PATH` first")
        generation = self.catalog.generation()
        if on_disk:
            vi, report = self._build_ondisk(kind, count, target_recall, workers, shard_size, progress)
            vi.save(self.vectors_path, generation)
            values: dict[str, Any] = {INDEX_KIND_SETTING: vi.main.index_type, ON_DISK_SETTING: True}
            size = build_size(vi)
        else:
            vi, report = self.build_vector_index(kind, count, target_recall, exact_max)
            save_base(self, vi, generation)
            remove_ondisk_files(self.vectors_path)  # an on-disk index it replaces
            values = {INDEX_KIND_SETTING: kind, ON_DISK_SETTING: False}
            size = self.vectors_path.stat().st_size
        if target_recall is not None:
            values[TARGET_RECALL_SETTING] = target_recall
        if exact_max is not None:
            values[EXACT_MAX_SETTING] = int(exact_max)
        self.catalog.set_settings(values)
        return report, size
