"""The value types of an indexing run (retriever/indexer.py): what it is asked to do
(IndexOptions) and what it did (RunSummary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from retriever.video import DEFAULT_EVERY_S


@dataclass
class IndexOptions:
    include_hidden: bool = False  # index .hidden files and folders, and system litter
    exclude: Sequence[str] = ()  # glob patterns on the full path or the base name
    workers: int = 0  # decode workers; 0 = one per core (at most 8)
    pool: str = "auto"  # "process", "thread", or "auto" (see choose_pool)
    retry_failed: bool = False  # read failed files again even if they have not changed
    draft: bool = True  # reduced-size JPEG decoding (see DRAFT_FACTOR)
    video_every_s: float = DEFAULT_EVERY_S  # seconds between the sampled frames of a video
    ocr: bool = False  # read the text in each still photo decoded (retriever/ocr/), beside encoding
    regions: bool = False  # encode region vectors of each still photo after the run (retriever/regions.py)


@dataclass
class RunSummary:
    added: int = 0  # new files (copies of known content included)
    updated: int = 0  # changed content, re-embedded
    moved: int = 0  # a known file found under a new path; its vector reused
    removed: int = 0  # gone from disk, dropped
    unchanged: int = 0  # same size and mtime, or same content
    failed: int = 0  # could not be read or decoded this run
    copied: int = 0  # of `added`: content already indexed elsewhere, vector reused
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of this run
    warnings: list[str] = field(default_factory=list)  # folders that could not be listed, ...
    tuning: dict[str, Any] | None = None  # torch threads tried beside decode threads, and the choice
    engine: str = "local"  # where files were decoded and encoded: "local" (this process's pools) or "ray"
    backend: str | None = None  # what ran the image tower: "onnxruntime" or "pytorch (cpu|cuda)"; None: no model
    preparation: str | None = None  # a new index's first export of its model on this machine, in words
    notices: list[str] = field(default_factory=list)  # how the run ran: a batch halved for GPU memory, Ray on CPUs
    error: str | None = None  # why the run stopped, when an error ended it (the run is recorded as failed)
    text_read: int = 0  # with IndexOptions.ocr: photos whose text was read in this run
    text_found: int = 0  # of them, photos with some text
    region_photos: int = 0  # with IndexOptions.regions: photos whose regions were encoded in this run
    regions: int = 0  # the region vectors they got

    @property
    def indexed(self) -> int:
        return self.added + self.updated

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "copied": self.copied,
            "indexed": self.indexed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.indexed / self.seconds, 2) if self.seconds > 0 and self.indexed else None,
            "interrupted": self.interrupted,
            "engine": self.engine,
            **({"backend": self.backend} if self.backend else {}),
            **({"tuning": self.tuning} if self.tuning else {}),
            **({"preparation": self.preparation} if self.preparation else {}),
            **({"notices": self.notices} if self.notices else {}),
            **({"error": self.error} if self.error else {}),
            **({"text_read": self.text_read, "text_found": self.text_found} if self.text_read else {}),
            **({"region_photos": self.region_photos, "regions": self.regions} if self.region_photos else {}),
        }


NON_FINITE_REASON = "the model gave a vector with NaN or infinite values for this file; nothing stored"
