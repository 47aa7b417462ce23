"""The pipeline that moves files into catalog + vectors.

walk (stat only) -> compare with the catalog -> read + fingerprint + decode + preprocess in a
bounded pool of worker threads -> encode in batches -> commit each batch (rows + vectors, one
transaction: a checkpoint) -> bring the FAISS file up to date.

A file that cannot be decoded is recorded with its reason and never stops the run; a file whose
size and mtime are unchanged is not read again.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .catalog import STATUS_FAILED, STATUS_INDEXED
from .errors import ImageDecodeError
from .files import FileEntry, absolute, fingerprint_bytes, is_under, walk
from .images import decode


@dataclass
class IndexOptions:
    include_hidden: bool = False  # index .hidden files and folders, and system litter
    exclude: Sequence[str] = ()  # glob patterns on the full path or the base name
    workers: int = 0  # decode threads; 0 = from the core count
    prune: bool = True  # drop catalog entries under the roots whose files are gone


@dataclass
class Progress:
    done: int  # files processed this run (indexed or failed)
    total: int  # files to process this run
    failed: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class RunSummary:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of this run

    @property
    def indexed(self) -> int:
        return self.added + self.updated

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "indexed": self.indexed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.indexed / self.seconds, 2) if self.seconds > 0 and self.indexed else None,
            "interrupted": self.interrupted,
        }


@dataclass
class _Prepared:
    entry: FileEntry
    row: dict[str, Any]  # catalog fields
    pixels: Any = None  # encoder input when decoded


def _prepare(entry: FileEntry, preprocess: Callable[[Any], Any]) -> _Prepared:
    row: dict[str, Any] = {"path": entry.path, "size": entry.size, "mtime_ns": entry.mtime_ns}
    try:
        with open(entry.path, "rb") as f:
            data = f.read()
    except OSError as exc:
        row.update(status=STATUS_FAILED, error=f"cannot read: {exc.strerror or exc}")
        return _Prepared(entry, row)
    row["fingerprint"] = fingerprint_bytes(data)
    try:
        decoded = decode(data, entry.path)
        pixels = preprocess(decoded.image)
    except ImageDecodeError as exc:
        row.update(status=STATUS_FAILED, error=str(exc))
        return _Prepared(entry, row)
    except Exception as exc:  # noqa: BLE001 - a preprocessing bug on one odd file must not stop the run
        row.update(status=STATUS_FAILED, error=f"preprocessing failed: {type(exc).__name__}: {exc}"[:300])
        return _Prepared(entry, row)
    row.update(decoded.meta, status=STATUS_INDEXED, error=None)
    return _Prepared(entry, row, pixels)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


def run_index(
    index,
    encoder,
    roots: Sequence[str],
    options: IndexOptions | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Index `roots` into `index` (which must hold the writer lock). KeyboardInterrupt stops after
    the last committed batch; the summary then says interrupted=True and nothing committed is lost."""
    options = options or IndexOptions()
    started = time.monotonic()
    summary = RunSummary()
    catalog = index.catalog
    run_id = catalog.start_run(list(roots))

    known = catalog.known_files()
    seen: set[str] = set()
    todo: list[tuple[FileEntry, int | None]] = []  # (entry, existing id or None)
    for entry in walk(roots, include_hidden=options.include_hidden, exclude=options.exclude):
        if entry.path in seen:  # the same file reached through two roots
            continue
        seen.add(entry.path)
        prior = known.get(entry.path)
        if prior is not None and prior.size == entry.size and prior.mtime_ns == entry.mtime_ns:
            summary.unchanged += 1
            continue
        todo.append((entry, prior.id if prior else None))

    generation_before = catalog.generation()
    gone: list[int] = []
    if options.prune:
        for path, prior in known.items():
            if path not in seen and any(is_under(path, absolute(root)) for root in roots) and not os.path.exists(path):
                gone.append(prior.id)
    if gone:
        catalog.remove(gone)
        summary.removed = len(gone)

    vector_changes: list[tuple[list[int], np.ndarray | None, list[int]]] = []  # (added ids, vectors, dropped ids)
    status = "completed"
    batch_size = max(1, encoder.batch_size)
    workers = options.workers or default_workers()
    pending: deque[tuple[Future, int | None]] = deque()
    todo_iter = iter(todo)
    batch: list[tuple[_Prepared, int | None]] = []
    done = 0

    def commit(items: list[tuple[_Prepared, int | None]]) -> None:
        nonlocal done
        ok = [p for p, _ in items if p.row["status"] == STATUS_INDEXED]
        vecs = encoder.embed_preprocessed([p.pixels for p in ok]) if ok else None
        ids = catalog.write_batch([p.row for p, _ in items], vecs)
        added_ids = [i for (p, _), i in zip(items, ids) if p.row["status"] == STATUS_INDEXED]
        dropped = [prior for _, prior in items if prior is not None]
        vector_changes.append((added_ids, vecs, dropped))
        for p, prior in items:
            if p.row["status"] == STATUS_FAILED:
                summary.failed += 1
                summary.failures.append((p.entry.path, p.row["error"]))
            elif prior is None:
                summary.added += 1
            else:
                summary.updated += 1
        done += len(items)
        if on_progress:
            on_progress(Progress(done, len(todo), summary.failed, time.monotonic() - started))

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retriever-decode") as pool:
            lookahead = max(2 * batch_size, 4 * workers)  # bounded: memory stays flat

            def refill() -> None:
                while len(pending) < lookahead:
                    nxt = next(todo_iter, None)
                    if nxt is None:
                        return
                    entry, prior = nxt
                    pending.append((pool.submit(_prepare, entry, encoder.preprocess), prior))

            try:
                refill()
                while pending:
                    future, prior = pending.popleft()
                    batch.append((future.result(), prior))
                    refill()
                    if len(batch) >= batch_size:
                        commit(batch)
                        batch = []
                if batch:
                    commit(batch)
                    batch = []
            finally:
                for future, _ in pending:
                    future.cancel()
    except KeyboardInterrupt:
        status = "interrupted"
        summary.interrupted = True

    _sync_vectors(index, generation_before, vector_changes, removed=gone)
    summary.seconds = time.monotonic() - started
    catalog.finish_run(run_id, status, summary.as_dict())
    catalog.set_settings({"last_run_at": catalog.last_run()["finished_at"]})
    return summary


def _sync_vectors(index, generation_before: int, changes, removed: Iterable[int]) -> None:
    """Apply this run's changes to the saved FAISS index when it was current at the start of the
    run; otherwise rebuild it from the catalog. Either way it ends at the catalog's generation."""
    from .vectors import VectorIndex

    catalog = index.catalog
    generation = catalog.generation()
    vi = None
    try:
        vi, info = VectorIndex.load(index.vectors_path)
        if info.generation != generation_before:
            vi = None
    except (FileNotFoundError, ValueError):
        vi = None
    if vi is not None:
        vi.remove(removed)
        for added_ids, vecs, dropped in changes:
            vi.remove(dropped)
            if added_ids:
                vi.add(np.asarray(added_ids, dtype=np.int64), vecs)
    else:
        vi = VectorIndex.build(index.dim, catalog.iter_vectors(index.dim))
    vi.save(index.vectors_path, generation)
