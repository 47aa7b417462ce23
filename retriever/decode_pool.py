"""Where an indexing run decodes its files: a pool of threads, or of worker processes (a
ProcessPoolExecutor, forked from a forkserver where there is one), chosen by `choose_pool`; and,
while decode threads share the CPU with a model's forward pass, how many threads torch gets
(`_ThreadTuner`). What each worker does to a file is retriever.indexer.prepare."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable

# Below this many files to read, threads in this process beat starting worker processes.
PROCESS_MIN_FILES = 64


def choose_pool(requested: str, n_files: int, device: str, after_crash: bool = False) -> str:
    """Where decoding runs.

    With the model on a GPU, decoding is the bottleneck: worker processes, free of the GIL. With
    the model on the CPU, the forward pass dominates and shares the same cores: decode threads
    beside it were measured faster than worker processes (ViT-B-32 on 2 cores, 12-MP JPEGs: 13.0
    vs 8.7 images/s; benchmarks/indexing.py), with less memory and no pool start-up. Only worker
    processes contain a decoder that crashes the process, so a run that follows a run that died
    uses them: the file that killed it is then found and recorded, and the next runs are fast again."""
    if requested != "auto":
        return requested
    if after_crash:
        return "process"
    if n_files < PROCESS_MIN_FILES:
        return "thread"
    return "process" if device.startswith("cuda") else "thread"


_worker_state: dict[str, Any] = {}


def _init_worker(prepare, preprocessor, draft_min_side, known_content, video_every_s, reader=None) -> None:
    # Ctrl-C reaches the whole process group: the main process decides what to keep; workers
    # must not die with tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch = sys.modules.get("torch")  # imported only if the preprocessor needs it (open_clip's transforms)
    if torch is not None:  # one thread each: the workers already use every core between them
        torch.set_num_threads(1)
    _worker_state.update(prepare=prepare, preprocessor=preprocessor, draft=draft_min_side, known=known_content,
                         every=video_every_s, reader=reader)


def _prepare_in_worker(task):
    s = _worker_state
    return s["prepare"](task, s["preprocessor"], s["draft"], s["known"], video_every_s=s["every"], reader=s["reader"])


def _ping() -> bool:
    return True


def _pool_starts(pool: Executor) -> bool:
    try:
        return pool.submit(_ping).result(timeout=120)
    except (BrokenExecutor, TimeoutError, OSError):
        return False


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 2))


def _make_pool(kind: str, workers: int, prepare, preprocessor, draft, known, every,
               reader=None) -> tuple[Executor, Callable]:
    """A pool of `workers` threads or processes ("thread", "process") that runs `prepare` (the
    indexer's, a module-level function: processes import it by name) on each task submitted,
    with the run's other arguments (`reader`: the OcrReader of a run that reads text, or None).
    -> (the pool, submit(task) -> Future)."""
    if kind == "process":
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            # Workers fork from a server that has already imported what unpickling the
            # preprocessor needs (open_clip's transforms import torch): seconds saved per worker.
            # It has started no threads, so forking it is safe.
            preload = [prepare.__module__, *getattr(preprocessor, "preload_modules", ())]
            context.set_forkserver_preload(preload)
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(prepare, preprocessor, draft, known, every, reader),
        )
        return pool, lambda task: pool.submit(_prepare_in_worker, task)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retriever-decode")
    return pool, lambda task: pool.submit(prepare, task, preprocessor, draft, known, False, every, reader)


class _ThreadTuner:
    """How many threads torch gets while decode threads share the CPU with the forward pass.

    The right split depends on the model: a light CNN (the offline encoder) runs best with one
    torch thread, leaving the other cores to decoding (29 vs 23 images/s on 2 cores); a heavy ViT
    needs every core (12 vs 8 images/s). So both are tried after a warm-up batch, one batch at a
    time in the order A B B A (A B for short runs), which cancels a steady drift, and the faster
    kept. Torch's setting is restored at the end of the run.

    A trial's rate counts what the pipeline *produced* while it ran: results taken from the
    workers plus the change in results decoded and waiting. Timing forward passes alone would
    reward whichever split ran while a backlog decoded earlier was being used up."""

    ABBA_MIN_BATCHES = 8  # below, A B only

    def __init__(self, workers: int, batches: int):
        import torch

        self.torch = torch
        self.original = torch.get_num_threads()
        lean = max(1, (os.cpu_count() or 1) - workers)
        self.candidates = [self.original, lean] if lean != self.original else []
        self.slots = [0, 1, 1, 0] if batches >= self.ABBA_MIN_BATCHES else [0, 1]
        self.step = 0
        self.last: tuple[float, int] | None = None  # (time, produced) at the last batch
        self.work = [0] * len(self.candidates)
        self.time = [0.0] * len(self.candidates)
        self.decided = not self.candidates
        self.choice: int | None = None if self.candidates else self.original
        self.report: dict[str, Any] | None = None  # images/s of each candidate, once decided

    def batch_done(self, produced: int) -> None:
        """After each forward pass; `produced` counts every result the workers have finished so
        far (taken or waiting)."""
        if self.decided:
            return
        now = time.monotonic()
        if self.last is not None:  # the first call ends the warm-up batch
            slot = self.slots[self.step]
            self.time[slot] += now - self.last[0]
            self.work[slot] += produced - self.last[1]
            self.step += 1
            if self.step == len(self.slots):
                rates = [w / t if t > 0 else 0.0 for w, t in zip(self.work, self.time)]
                self.choice = self.candidates[rates.index(max(rates))]
                self.report = {"torch_threads": self.choice,
                               "tried": {str(c): round(r, 2) for c, r in zip(self.candidates, rates)}}
                self.torch.set_num_threads(self.choice)
                self.decided = True
                return
        self.torch.set_num_threads(self.candidates[self.slots[self.step]])
        self.last = (time.monotonic(), produced)

    def restore(self) -> None:
        self.torch.set_num_threads(self.original)
