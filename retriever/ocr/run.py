"""`retriever ocr`: read the text in each photo of an index, written to the catalog.

A run is incremental and resumable like a caption run: it reads the indexed items that were never
read, were read from other content (edited since), or were read by another engine or model (a
new rapidocr release re-reads); a copy of a photo already read gets its text without reading. In
batches, each committed in one transaction: Ctrl-C or a kill
loses at most the batch in progress. A photo without text is stored too (no lines), so it is
read once. A photo whose text is written is checked to still have the fingerprint it was read
from, so a run may go on beside indexing (its own lock, ocr.lock, keeps two runs apart).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from retriever.decode_pool import default_workers
from retriever.errors import RetrieverError
from retriever.progress import Progress
from retriever.store.catalog import utcnow
from retriever.store.ocr import known_texts, pending_text_rows, text_counts, texts_for, write_texts  # noqa: F401

OCR_LOCK_FILE = "ocr.lock"
BATCH = 16  # photos per committed batch


@dataclass
class OcrSummary:
    read: int = 0  # photos read and written this run
    with_text: int = 0  # of them, photos in which some text was found
    lines: int = 0  # text lines stored this run
    failed: int = 0  # could not be decoded this run (tried again next run)
    pending: int = 0  # photos that needed reading when the run started (after --limit)
    seconds: float = 0.0
    interrupted: bool = False
    engine: str | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "with_text": self.with_text,
            "lines": self.lines,
            "failed": self.failed,
            "pending": self.pending,
            "seconds": round(self.seconds, 3),
            "seconds_per_photo": round(self.seconds / self.read, 3) if self.read else None,
            "interrupted": self.interrupted,
            "engine": self.engine,
        }


def text_of(lines) -> tuple[list[dict[str, Any]], str, str]:
    """TextLines -> (their stored dicts, the text: one line per line, the squashed text)."""
    from retriever.ocr import squash_lines

    stored = [line.as_dict() for line in lines]
    return stored, "\n".join(line.text for line in lines), squash_lines(line.text for line in lines)


def read_photo(reader, path: str, frame_ms: int | None = None, size: tuple[int, int] | None = None):
    """The text lines of one catalog item: a still decoded at reduced size for reading (JPEGs at
    1/2, 1/4 or 1/8 scale while both sides keep DECODE_MIN_SIDE pixels), boxes in the photo's own
    pixels after EXIF orientation; a video frame from PyAV. Raises a RetrieverError for a file
    that is gone or cannot be decoded."""
    from retriever.ocr.reader import DECODE_MIN_SIDE

    if frame_ms is not None:
        from retriever.render.thumbnails import thumbnail

        image = thumbnail(path, frame_ms, 4096)
        return reader.read(image, full_size=size if size and all(size) else None)
    from retriever.images import load

    decoded = load(path, draft_min_side=DECODE_MIN_SIDE)
    return reader.read(decoded.image, full_size=(decoded.meta["width"], decoded.meta["height"]))


def run_ocr(
    index,
    reader=None,
    *,
    frames: bool = False,
    limit: int | None = None,
    workers: int = 0,
    on_progress: Callable[[Progress], None] | None = None,
) -> OcrSummary:
    """Read the text of the items of `index` that need it, one committed batch at a time.

    `reader`: an OcrReader, or a callable returning one (called only when something needs
    reading), or None for the default reader. `workers` photos are decoded and read at once (0:
    one per core, at most 8). KeyboardInterrupt stops after the last committed
    batch (interrupted=True); running again resumes. Holds the index's OCR lock
    (IndexLockedError if taken). MissingDependencyError without the `ocr` extra."""
    from retriever.ocr.reader import OcrReader, engine_version

    summary = OcrSummary()
    started = time.monotonic()
    engine = reader.version if hasattr(reader, "read") else engine_version()  # what the text will be stored as
    summary.engine = engine
    with ocr_lock(index):
        todo = pending_text_rows(index.catalog, engine, frames=frames, limit=limit)
        summary.pending = len(todo)
        done = 0
        try:
            if todo and not hasattr(reader, "read"):  # a loader, or None: the default reader
                reader = (reader or OcrReader)()
            pool = ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="retriever-ocr")
            try:
                for start in range(0, len(todo), BATCH):
                    batch = todo[start:start + BATCH]
                    summary.read += _read_batch(index.catalog, reader, batch, engine, pool, summary)
                    done += len(batch)
                    if on_progress:
                        on_progress(Progress(done, len(todo), summary.failed, time.monotonic() - started, stage="text"))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:
            summary.interrupted = True
    summary.seconds = time.monotonic() - started
    return summary


def _read_batch(catalog, reader, batch, engine: str, pool, summary: OcrSummary) -> int:
    """Read one batch (photos in parallel, one per worker) and commit it; returns how many items
    were written."""
    known = known_texts(catalog, [row[3] for row in batch if row[2] is None], engine)

    def read(row):
        image_id, path, frame_ms, fingerprint, width, height = row
        if frame_ms is None and fingerprint in known:  # a copy of a photo already read
            return known[fingerprint]
        try:
            return text_of(read_photo(reader, path, frame_ms, (width, height)))
        except RetrieverError as exc:
            return exc

    rows = []
    for row, result in zip(batch, pool.map(read, batch)):
        image_id, path, frame_ms, fingerprint = row[:4]
        if isinstance(result, RetrieverError):
            summary.failed += 1
            label = path if frame_ms is None else f"{path}@{frame_ms / 1000:.1f}s"
            summary.failures.append((label, str(getattr(result, "reason", result))))
            continue
        rows.append((image_id, fingerprint, *result))
        summary.lines += len(result[0])
        summary.with_text += bool(result[0])
    return write_texts(catalog, rows, engine, utcnow())


def photo_text(catalog, image_id: int) -> dict[str, Any] | None:
    """{"lines": [{"text", "score", "box", "quad"}...], "text", "engine", "created_at"} of one
    item, or None when its text has not been read."""
    found = texts_for(catalog, [image_id]).get(int(image_id))
    if found is None:
        return None
    return {**found, "text": "\n".join(line["text"] for line in found["lines"])}


@contextmanager
def ocr_lock(index) -> Iterator[None]:
    """One text-reading run per index at a time."""
    from retriever.durable import run_lock

    with run_lock(index.folder / OCR_LOCK_FILE, utcnow(), f"another text-reading run is writing to index {index.name!r}"):
        yield
