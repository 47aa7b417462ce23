"""The FAISS file of an in-memory kind kept current by its delta log (retriever.vector_log):
readers take the file plus the log's records up to the catalog's generation (a warm reader only
the records it has not seen: retriever.layered), writers log each checkpoint inside its catalog
transaction and fold the log into a new file once it passes a measured size.

    VectorWriter    what the indexer and `Index.remove_images` write through: `on_commit` (handed
                    to Catalog.write_batch) logs a checkpoint; `apply` keeps an in-memory copy in
                    step when the writer holds one (after a fold); `finish` folds when due.
    DirectWriter    the same for an on-disk index (retriever.ondisk): its own delta is changed in
                    memory and saved at the end of the run.

When to fold (benchmarks/scale.py measures both sides): the exact delta a reader searches costs
~0.2 ms a query up to 5,000 vectors and ~2 ms at 10,000 on 2 cores (cache-bound), while a fold
rewrites the whole file (~1 s a million vectors of ivf-sq8). At the end of a run the log is folded
once it holds more than max(FOLD_MIN_VECTORS, FOLD_SHARE of the file); during a long run only past
RUN_FOLD_SHARE of the file, so that a first run over a new collection rewrites the file a
logarithmic number of times, not once every few thousand photos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retriever import vector_log
from retriever.vector_log import HEADER_SIZE, LogFormatError

FOLD_MIN_VECTORS = 5_000
FOLD_SHARE = 0.005
RUN_FOLD_SHARE = 0.25


def bridge(index, token: str, offset: int, after: int, upto: int):
    """The log's records taking the file `token` from generation `after` to `upto`, one by one,
    read from `offset`; None when the log does not reach (an older log, a checkpoint committed
    by a writer that did not log, a record lost with the disk's cache)."""
    try:
        records = vector_log.read(index.vector_log_path, token, index.dim, offset, upto)
    except LogFormatError:
        return None
    records = [r for r in records if r.generation > after]
    if [r.generation for r in records] != list(range(after + 1, upto + 1)):
        return None
    return records


def read_view(index, generation: int, previous=None):
    """A reader's index for `generation` from the FAISS file and its log, without rebuilding:
    `previous` (a view this process holds) extended by the new records when it is of the same
    file, else the file loaded and the log laid over it. -> (view, stale): view None when the
    file and log cannot give `generation`; stale the loaded file then (its training reusable)."""
    from retriever.layered import LayeredVectorIndex, LogPosition
    from retriever.vectors import VectorIndex, read_info

    info = read_info(index.vectors_path)
    position = getattr(previous, "position", None)
    if info is not None and info.token and position is not None and position.token == info.token \
            and previous.dim == index.dim:
        if position.generation >= generation:
            return previous, None
        records = bridge(index, info.token, position.offset, position.generation, generation)
        if records is not None:
            moved = LogPosition(info.token, generation, records[-1].end)
            if isinstance(previous, LayeredVectorIndex):
                return previous.extended(records, moved), None
            return LayeredVectorIndex.over(previous, records, moved), None
    # A one-query process maps the file (it is never changed there): milliseconds, not a read of
    # the whole file. A warm one reads it into its own memory, so that its searches never wait
    # for pages the kernel dropped from its cache (measured: filtered searches at 1M went from
    # 2.3-3.9 ms to 4.6-6.6 ms mapped, beside a process reading 2 GB).
    mmap = index._lock_fd is None and getattr(index, "one_query", False)
    try:
        vi, info = VectorIndex.load(index.vectors_path, mmap=mmap)
    except (FileNotFoundError, ValueError):
        return None, None
    if info.dim != index.dim:
        return None, None
    if info.generation >= generation:
        vi.position = LogPosition(info.token, info.generation, HEADER_SIZE) if info.token else None
        return vi, None
    records = bridge(index, info.token, HEADER_SIZE, info.generation, generation) if info.token else None
    if records is None:  # stale: its training is lent to a refill, which changes it
        return None, _loaded(index) if mmap else vi
    return LayeredVectorIndex.over(vi, records, LogPosition(info.token, generation, records[-1].end)), None


def _loaded(index):
    from retriever.vectors import VectorIndex

    try:
        return VectorIndex.load(index.vectors_path)[0]
    except (FileNotFoundError, ValueError):
        return None


def save_base(index, vi, generation: int) -> str:
    """`vi` saved as the index's FAISS file at `generation`, with a new, empty log."""
    token = vi.save(index.vectors_path, generation)
    vector_log.reset(index.vector_log_path, token, index.dim)
    return token


def log_status(index, info) -> dict[str, Any] | None:
    """For `retriever status`: the records and vectors the log adds to the FAISS file, its
    bytes, and the generation it reaches; None without a log of that file."""
    if info is None or not info.token:
        return None
    try:
        records = vector_log.read(index.vector_log_path, info.token, index.dim)
        size = index.vector_log_path.stat().st_size
    except (LogFormatError, OSError):
        return None
    return {"records": len(records), "added": int(sum(len(r.added_ids) for r in records)),
            "removed": int(sum(len(r.removed) for r in records)), "bytes": size,
            "generation": records[-1].generation if records else info.generation}


def open_writer(index):
    """With the writer lock: the index's VectorWriter (or DirectWriter for an on-disk index).
    A log that does not bring the file to the catalog's generation is replaced: the file is
    rebuilt from the stored vectors (as any stale file is) and a new log begun."""
    from retriever.ondisk import is_ondisk
    from retriever.vectors import VectorIndex, read_info

    info = read_info(index.vectors_path)
    if (info is not None and is_ondisk(info.index_type)) or index.on_disk_wanted():
        vi = index.vector_index()
        if is_ondisk(vi.index_type):
            return DirectWriter(index, vi)
        info = read_info(index.vectors_path)  # an in-memory stand-in, saved: log over it
    generation = index.catalog.generation()
    if info is not None and info.token and info.dim == index.dim:
        writer = _resume(index, info, generation)
        if writer is not None:
            return writer
    vi = index.vector_index()  # rebuilt from the catalog and saved with a new log (we hold the lock)
    if not isinstance(vi, VectorIndex):  # a view over a log the writer could not resume: start afresh
        vi = index._rebuild_vectors(None)
        save_base(index, vi, generation)
    info = read_info(index.vectors_path)
    if info is None or not info.token or info.generation != generation:  # (saved only with the lock)
        return DirectWriter(index, vi)
    writer = _resume(index, info, generation)
    if writer is None:
        return DirectWriter(index, vi)
    writer.memory = vi if isinstance(vi, VectorIndex) else None
    return writer


def _resume(index, info, generation: int):
    """A VectorWriter continuing the file's log when it reaches `generation` (records of
    checkpoints that never committed, and a torn tail, are cut off); a new log when the file
    itself is current and its log missing or foreign; else None."""
    path = index.vector_log_path
    try:
        records = vector_log.read(path, info.token, index.dim)
    except LogFormatError:
        if info.generation != generation:
            return None
        vector_log.reset(path, info.token, index.dim)
        return VectorWriter(index, info, HEADER_SIZE, generation, info.count, 0)
    kept = [r for r in records if r.generation <= generation]
    if [r.generation for r in kept] != list(range(info.generation + 1, generation + 1)):
        return None
    end = kept[-1].end if kept else HEADER_SIZE
    if path.stat().st_size != end:
        vector_log.truncate(path, end)
    return VectorWriter(index, info, end, generation, kept[-1].count if kept else info.count,
                        sum(len(r.added_ids) for r in kept))


class VectorWriter:
    """Logs each checkpoint of one writer (see the module's docstring). Looks like the index it
    extends for `Index.adapt_vector_index` (index_type, is_ivf, params, len)."""

    def __init__(self, index, info, offset: int, generation: int, count: int, logged: int):
        self.index = index
        self.info = info  # the FAISS file's sidecar (kind, token, count at its save)
        self.offset = offset
        self.generation = generation
        self.count = count
        self.logged = logged  # vectors added in the log (a bound on a reader's exact delta)
        self.memory = None  # the index in memory, in step with the log, once a fold has loaded it
        self.broken = False  # a checkpoint committed unlogged: finish() rebuilds the file

    @property
    def index_type(self) -> str:
        return self.info.index_type

    @property
    def is_ivf(self) -> bool:
        from retriever.vectors import IVF_PQ, IVF_SQ8

        return self.index_type in (IVF_SQ8, IVF_PQ)  # as VectorIndex.is_ivf

    @property
    def params(self) -> dict[str, Any]:
        return self.info.params

    def __len__(self) -> int:
        return self.count

    @property
    def path(self) -> Path:
        return self.index.vector_log_path

    def on_commit(self, rows, ids, remove_ids, generation: int, count: int):
        """Called by Catalog.write_batch inside its transaction, before COMMIT: the checkpoint's
        record appended. -> undo, which the catalog calls when the transaction did not commit."""
        if self.broken or generation != self.generation + 1:
            self.broken = True  # another writer's commit came between: readers rebuild from the catalog
            return None
        # a row's old vector is gone or replaced, unless the row says it had none (the indexer's new files)
        removed = np.array(list(remove_ids) + [i for row, i in zip(rows, ids) if "vector" in row
                                               and row.get("_in_index", True)], dtype=np.int64)
        added = [(i, row["vector"]) for row, i in zip(rows, ids) if row.get("vector") is not None]
        added_ids = np.array([i for i, _ in added], dtype=np.int64)
        vectors = np.stack([v for _, v in added]) if added else np.zeros((0, self.index.dim), np.float32)
        before = (self.offset, self.generation, self.count, self.logged)
        try:
            self.offset = vector_log.append(self.path, self.offset, generation, count, removed, added_ids, vectors)
        except OSError:  # the log is a cache of the catalog: the commit goes on, readers rebuild
            self.broken = True
            return None
        self.generation, self.count = generation, count
        self.logged += len(added_ids)

        def undo() -> None:
            try:
                vector_log.truncate(self.path, before[0])
                self.offset, self.generation, self.count, self.logged = before
            except OSError:
                self.broken = True

        return undo

    def apply(self, stale, changed_ids: np.ndarray, changed: np.ndarray | None) -> None:
        """After a commit: the in-memory copy (when held) changed alike; a fold when the log has
        grown past RUN_FOLD_SHARE of the file."""
        if self.memory is not None:
            if len(stale):
                self.memory.remove(stale)
            if changed is not None and len(changed_ids):
                self.memory.add(changed_ids, changed)
        if not self.broken and self.logged > max(FOLD_MIN_VECTORS, RUN_FOLD_SHARE * self.info.count):
            self.fold()

    def lagging(self) -> None:
        """A commit was interrupted after the catalog and log, before the copy in memory."""
        self.memory = None

    def finish(self, interrupted: bool = False) -> None:
        """The end of a run: a fold when the log has passed its measured size, or when the index
        is in memory anyway (a new collection, a run that folded before): writing it then costs
        no load."""
        if self.broken:
            self.index.vector_index()  # stale: rebuilt from the catalog and saved with a new log
        elif not interrupted and self.logged and (
                self.memory is not None or self.logged > max(FOLD_MIN_VECTORS, FOLD_SHARE * self.info.count)):
            self.fold()

    def fold(self) -> None:
        """The log folded into a new FAISS file (the one in memory, else the file loaded and the
        records replayed into it); a new, empty log."""
        from retriever.layered import replayed
        from retriever.vectors import VectorIndex, read_info

        if self.memory is None:
            vi, info = VectorIndex.load(self.index.vectors_path)
            records = vector_log.read(self.path, info.token, self.index.dim, HEADER_SIZE, self.generation)
            self.memory = replayed(vi, records)
        save_base(self.index, self.memory, self.generation)
        self.info = read_info(self.index.vectors_path)
        self.offset, self.logged, self.count = HEADER_SIZE, 0, len(self.memory)


class DirectWriter:
    """An on-disk index (or one that cannot be logged) changed in memory, saved at the end."""

    on_commit = None

    def __init__(self, index, vi):
        self.index = index
        self.vi = vi
        self.skip_save = False

    def __getattr__(self, name):
        return getattr(self.vi, name)

    def __len__(self) -> int:
        return len(self.vi)

    def apply(self, stale, changed_ids: np.ndarray, changed: np.ndarray | None) -> None:
        if len(stale):
            self.vi.remove(stale)
        if changed is not None and len(changed_ids):
            self.vi.add(changed_ids, changed)

    def lagging(self) -> None:
        self.skip_save = True  # left to be rebuilt from the catalog

    def finish(self, interrupted: bool = False) -> None:
        from retriever.ondisk import is_ondisk

        if self.skip_save:
            return
        if is_ondisk(self.vi.index_type):
            self.vi.save(self.index.vectors_path, self.index.catalog.generation())
        else:
            save_base(self.index, self.vi, self.index.catalog.generation())
