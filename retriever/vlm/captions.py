"""`retriever caption`: a one-sentence caption for each photo of an index, written to the catalog.

Storage (catalog migration 003_captions; the SQL is in retriever/store/captions.py):
`captions(image_id, caption, model, fingerprint, created_at)`, one row per captioned item. A
caption belongs to the content it describes: when an image's fingerprint changes (the file was
edited) or the image leaves the catalog, SQLite triggers drop its caption, and the FTS `keywords`
table (see retriever/keywords.py) follows. A caption is written only if its image still has the
fingerprint it was made from (one conditional statement), so an indexing run going on at the same
time can never leave a stale or orphaned caption: that is why a caption run does not take the
index's writer lock (indexing may go on for hours beside a caption run), but a lock of its own
(caption.lock), so that two caption runs do not duplicate work.

A run is incremental and resumable like indexing: it captions the indexed items that have no
caption (new, edited, or failed to decode last time), in batches, and commits each batch in one
transaction: Ctrl-C or a kill loses at most the batch in progress, and the next run carries on.
With `replace`, captions made by another model are made again. Still images only, unless
`frames` (each sampled video frame is then an item to caption, which costs one caption each).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from retriever.errors import RetrieverError
from retriever.progress import Progress
from retriever.store.captions import (  # noqa: F401  (caption_counts, captions_for: re-exported)
    caption_counts,
    caption_rows,
    captions_for,
    pending_rows,
    write_captions,
)
from retriever.store.catalog import utcnow
from retriever.vlm.errors import VLMError
from retriever.vlm.photos import load_photo
from retriever.vlm.prompts import caption_messages

CAPTION_MAX_NEW_TOKENS = 60  # one sentence
CAPTION_MAX_CHARS = 500
CAPTION_LOCK_FILE = "caption.lock"

@dataclass
class CaptionSummary:
    captioned: int = 0  # written this run
    failed: int = 0  # could not be decoded this run (tried again next run)
    pending: int = 0  # items that needed a caption when the run started (after --limit)
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)
    notices: list[str] = field(default_factory=list)  # how the run ran (a batch made smaller for GPU memory)

    def as_dict(self) -> dict[str, Any]:
        return {
            "captioned": self.captioned,
            "failed": self.failed,
            "pending": self.pending,
            "seconds": round(self.seconds, 3),
            "seconds_per_photo": round(self.seconds / self.captioned, 3) if self.captioned else None,
            "interrupted": self.interrupted,
            **({"notices": self.notices} if self.notices else {}),
        }


@dataclass(frozen=True)
class PendingItem:
    id: int
    path: str
    frame_ms: int | None
    fingerprint: str | None

    @property
    def label(self) -> str:
        from retriever.video import format_timestamp

        return self.path if self.frame_ms is None else f"{self.path}@{format_timestamp(self.frame_ms)}"


# -- reading and writing captions -------------------------------------------------------------------


def pending_items(catalog, model: str, *, replace: bool = False, frames: bool = False,
                  limit: int | None = None) -> list[PendingItem]:
    """Indexed items that need a caption, by id: none yet, or one made from other content (kept
    only if a trigger was bypassed), or (replace) one made by another model."""
    return [PendingItem(*row) for row in pending_rows(catalog, model, replace=replace, frames=frames, limit=limit)]


# write_captions, captions_for and caption_counts are the store's (retriever/store/captions.py).


def all_captions(catalog) -> Iterator[dict[str, Any]]:
    """Every stored caption with its item: {"id", "path", "frame_ms", "label", "caption", "model",
    "created_at"}, by path then time in the video."""
    from retriever.video import format_timestamp

    for image_id, path, frame_ms, caption, model, created_at in caption_rows(catalog):
        label = path if frame_ms is None else f"{path}@{format_timestamp(frame_ms)}"
        yield {"id": image_id, "path": path, "frame_ms": frame_ms, "label": label,
               "caption": caption, "model": model, "created_at": created_at}


def clean_caption(raw: str) -> str:
    return " ".join(raw.split())[:CAPTION_MAX_CHARS]


# -- the run ----------------------------------------------------------------------------------------


def caption_photos(vlm, photos: Sequence[Any], max_new_tokens: int = CAPTION_MAX_NEW_TOKENS) -> list[str]:
    """One caption per PIL image, generated in one batch (each row holds its own photo)."""
    if not photos:
        return []
    prompt = vlm.prompt(caption_messages())
    return [clean_caption(t) for t in vlm.generate([prompt] * len(photos), list(photos), max_new_tokens)]


def run_captions(
    index,
    vlm,
    *,
    model: str | None = None,
    replace: bool = False,
    frames: bool = False,
    limit: int | None = None,
    batch_size: int | None = None,
    max_new_tokens: int = CAPTION_MAX_NEW_TOKENS,
    on_progress: Callable[[Progress], None] | None = None,
    load: Callable[..., Any] = load_photo,
) -> CaptionSummary:
    """Caption the items of `index` that need it (see pending_items), one committed batch at a time.

    `vlm`: a loaded VLM, or a callable returning one, called only when something needs a caption
    (then `model`, the id it will have, is required: it decides what `replace` redoes).
    KeyboardInterrupt stops after the last committed batch: interrupted=True, nothing committed is
    lost; running again resumes. Holds the index's caption lock (IndexLockedError if taken)."""
    model = model or getattr(vlm, "model_id", None)
    if model is None:
        raise VLMError("run_captions: pass model= with a VLM loader")
    summary = CaptionSummary()
    started = time.monotonic()
    with caption_lock(index):
        todo = pending_items(index.catalog, model, replace=replace, frames=frames, limit=limit)
        summary.pending = len(todo)
        done = 0
        try:
            if todo and not hasattr(vlm, "generate"):  # a loader: load only when there is work
                vlm = vlm()
            size = (batch_size or vlm.default_batch_size) if todo else 1
            for start in range(0, len(todo), size):
                batch = todo[start:start + size]
                ready, photos = [], []
                for item in batch:
                    try:
                        photos.append(load(item.path, item.frame_ms))
                        ready.append(item)
                    except RetrieverError as exc:
                        summary.failed += 1
                        summary.failures.append((item.label, str(getattr(exc, "reason", exc))))
                texts = caption_photos(vlm, photos, max_new_tokens)
                summary.captioned += write_captions(
                    index.catalog, [(item.id, caption, item.fingerprint) for item, caption in zip(ready, texts)], model
                )
                done += len(batch)
                if on_progress:
                    on_progress(Progress(done, len(todo), summary.failed, time.monotonic() - started))
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            note = getattr(vlm, "batch_note", None)  # None too while vlm is still a loader
            if note:
                summary.notices.append(note)
    summary.seconds = time.monotonic() - started
    return summary


@contextmanager
def caption_lock(index) -> Iterator[None]:
    """One caption run per index at a time."""
    from retriever.durable import run_lock

    with run_lock(index.folder / CAPTION_LOCK_FILE, utcnow(), f"another caption run is writing to index {index.name!r}"):
        yield
