"""Progress of a long job (indexing, captioning, tagging, reranking), as one value the job hands to
its caller's callback. Nothing here prints: the command line shows it (retriever.cli.output)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class Progress:
    done: int  # items handled so far this run (done, reused or failed)
    total: int  # items to handle this run
    failed: int
    elapsed: float  # seconds since the job started
    stage: str | None = None  # a job of several stages: which ("text": reading the text in photos)

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


OnProgress = Callable[[Progress], None]
