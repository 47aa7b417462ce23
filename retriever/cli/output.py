"""Everything the commands write: progress of long jobs, hits, durations, names that are not UTF-8."""

from __future__ import annotations

import json
import os
import sys
import time

import click


class ProgressReporter:
    """Progress of a long job on stderr (indexing, captioning, reranking): a bar with the rate and
    ETA on a terminal, a plain log line every few seconds otherwise. `update` takes a
    retriever.progress.Progress (done, total, failed, rate)."""

    LOG_EVERY_S = 5.0

    def __init__(self, enabled: bool = True, *, verb: str = "indexing", past: str = "indexed", unit: str = "img",
                 log_ends: bool = True):
        """log_ends: off a terminal, also a line at the first report and at the end (else only
        every LOG_EVERY_S after the first report, so a short job says nothing)."""
        self.enabled = enabled
        self.verb, self.past, self.unit = verb, past, unit
        self.log_ends = log_ends
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.last_log: float | None = 0.0 if log_ends else None  # None: set at the first report
        self.last_done = 0

    @property
    def callback(self):
        return self.update if self.enabled else None

    STAGES = {"text": ("reading text", "read text of", "photo"),
              "regions": ("encoding regions of", "encoded regions of", "photo")}  # Progress.stage -> (verb, past, unit)

    def update(self, p) -> None:
        stage = getattr(p, "stage", None)
        if stage in self.STAGES and (self.verb, self.past, self.unit) != self.STAGES[stage]:
            self.close()  # a new stage of the job (index --ocr: then the photos indexed before)
            self.bar, self.last_done = None, 0
            self.last_log = 0.0 if self.log_ends else None
            self.verb, self.past, self.unit = self.STAGES[stage]
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=p.total, unit=self.unit, desc=self.verb, file=sys.stderr, dynamic_ncols=True)
            self.bar.update(p.done - self.last_done)
            if p.failed:
                self.bar.set_postfix(failed=p.failed)
            self.last_done = p.done
            return
        now = time.monotonic()
        if self.last_log is None:
            self.last_log = now
        elif now - self.last_log >= self.LOG_EVERY_S or (self.log_ends and p.done == p.total):
            self.last_log = now
            eta = (p.total - p.done) / p.rate if p.rate > 0 else float("nan")
            click.echo(
                f"{self.past} {p.done}/{p.total} ({100 * p.done / max(p.total, 1):.0f}%), {p.failed} failed, "
                f"{p.rate:.1f} {self.unit}/s, ETA {duration(eta)}",
                err=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def duration(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"



def shown(text: str) -> str:
    """For a terminal or a log: a name that is not valid UTF-8 shows replacement characters."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def print_hits(hits, as_json: bool, paths_only: bool, null_sep: bool) -> None:
    from retriever.render.terminal import hit_line  # the standard library only

    if null_sep or paths_only:
        # The exact bytes of each name, so that xargs opens the very file whatever its name.
        out = sys.stdout.buffer
        out.write(b"".join(os.fsencode(h.path) + (b"\0" if null_sep else b"\n") for h in hits))
        out.flush()
        return
    for hit in hits:
        if as_json:
            click.echo(shown(json.dumps(hit.as_dict(), ensure_ascii=False)))
        else:
            click.echo(hit_line(hit))



def query_encoder_text(backend: str | None) -> str:
    """The query encoder in words, from the class that embeds texts (Collection.query_backend)."""
    return "ONNX Runtime, no torch" if backend == "OnnxEncoder" else f"PyTorch ({backend})"
