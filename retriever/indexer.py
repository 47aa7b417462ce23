"""The pipeline that moves files into catalog + vectors.

    walk (stat only) -> compare with the catalog -> in decode workers (threads, or the worker
    processes of a ProcessPoolExecutor: retriever.decode_pool): read, fingerprint, decode (JPEGs
    at reduced size), preprocess (`prepare`) -> bounded queue, in order -> reuse a stored vector
    when the content is already known (moved, copied, touched files), else encode in batches ->
    checkpoints: rows + vectors in one SQLite transaction -> the FAISS index, kept in step.

Crash safety: every checkpoint is one transaction, so a SIGKILL at any moment leaves a catalog
in which each file is present once with its vector, or absent; the next run carries on from
there (at most one checkpoint of work is lost). The FAISS file records the catalog generation it
reflects and is rebuilt from the stored vectors when a killed run left it behind.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import BrokenExecutor, Future
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from retriever.decode_pool import (  # noqa: F401  (PROCESS_MIN_FILES: re-exported)
    PROCESS_MIN_FILES,
    _make_pool,
    _pool_starts,
    _ThreadTuner,
    choose_pool,
    default_workers,
)
from retriever.store.catalog import STATUS_FAILED, STATUS_INDEXED, KnownFile
from retriever.progress import Progress
from retriever.run_types import NON_FINITE_REASON, IndexOptions, RunSummary  # noqa: F401  (re-exported)
from retriever.errors import ImageDecodeError
from retriever.files import absolute, fingerprint_bytes, fingerprint_file, is_under, walk
from retriever.images import MAX_FILE_BYTES, NEEDS_INSTALL, decode, optional_decoders, read_file
from retriever.remote import is_url, read_url
from retriever.remote import vanished as _url_vanished
from retriever.video import DEFAULT_EVERY_S, is_video_name, sample_frames

# JPEGs are decoded by libjpeg at 1/2, 1/4 or 1/8 scale as long as both sides stay at least
# DRAFT_FACTOR x the model's input size (see benchmarks/draft_agreement.py for the measurement).
DRAFT_FACTOR = 2
# A checkpoint is committed after every encoded batch, and for files that need no encoding
# (moved, touched, failed) at least this often.
CHECKPOINT_SECONDS = 5.0
CHECKPOINT_ROWS = 256




# -- the worker side --------------------------------------------------------------------------------


@dataclass
class _Task:
    path: str
    size: int
    mtime_ns: int
    known: KnownFile | None  # the catalog's row for this path, if any


@dataclass
class _Prepared:
    task: _Task
    fingerprint: str | None = None
    meta: dict[str, Any] | None = None  # image metadata when decoded
    pixels: np.ndarray | None = None  # encoder input when decoded
    frames: list[tuple[int, np.ndarray]] | None = None  # a video's (timestamp ms, encoder input)
    error: str | None = None  # one line, when the file failed
    # (1, dim), a video's (frames, dim): set when an engine encoded the file elsewhere (Ray's
    # encoder actors), which then drops the encoder input (pixels None, frames' arrays None).
    vectors: np.ndarray | None = None
    text: list | None = None  # the photo's text lines (retriever.ocr.reader.TextLine), when read

    @property
    def decoded(self) -> bool:
        return self.pixels is not None or self.frames is not None or self.vectors is not None


def prepare(
    task: _Task,
    preprocessor,
    draft_min_side: int | None,
    known_content: frozenset[str],
    force: bool = False,
    video_every_s: float = DEFAULT_EVERY_S,
    reader=None,
) -> _Prepared:
    """Read, fingerprint, and (unless the content is already known, or `force`) decode and
    preprocess one file, and with a `reader` (retriever.ocr.reader.OcrReader) read a still
    photo's text from the same decoded image. Never raises for a bad file: the reason goes into
    `error`; a photo whose text could not be read is indexed all the same (text None: a later
    `retriever ocr` reads it)."""
    if is_video_name(task.path):
        return _prepare_video(task, preprocessor, known_content, force, video_every_s)
    try:
        data = read_url(task.path, max_bytes=MAX_FILE_BYTES) if is_url(task.path) else read_file(task.path)
    except ImageDecodeError as exc:
        return _Prepared(task, error=str(exc))
    fp = fingerprint_bytes(data)
    if not force and _content_known(task, fp, known_content):
        return _Prepared(task, fingerprint=fp)
    try:
        decoded = decode(data, task.path, draft_min_side=draft_min_side)
        pixels = preprocessor(decoded.image)
    except ImageDecodeError as exc:
        return _Prepared(task, fingerprint=fp, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a preprocessing bug on one odd file must not stop the run
        return _Prepared(task, fingerprint=fp, error=f"preprocessing failed: {type(exc).__name__}: {exc}"[:300])
    text = None
    if reader is not None:
        try:
            text = reader.read(decoded.image, full_size=(decoded.meta["width"], decoded.meta["height"]))
        except Exception:  # noqa: BLE001 - OCR trouble on one photo leaves its text unread, not the photo
            text = None
    return _Prepared(task, fingerprint=fp, meta=decoded.meta, pixels=np.asarray(pixels, dtype=np.float32), text=text)


def _content_known(task: _Task, fp: str, known_content: frozenset[str]) -> bool:
    same_as_before = task.known is not None and task.known.status == STATUS_INDEXED and task.known.fingerprint == fp
    return fp in known_content or same_as_before


def _prepare_video(task: _Task, preprocessor, known_content, force: bool, every_s: float) -> _Prepared:
    """Videos are fingerprinted while streamed (they can be gigabytes), then sampled."""
    if is_url(task.path):
        return _Prepared(task, error="videos are indexed from local paths only (not from a URL)")
    try:
        fp = fingerprint_file(task.path)
    except OSError as exc:
        return _Prepared(task, error=f"cannot read: {exc.strerror or exc}")
    if not force and _content_known(task, fp, known_content):
        return _Prepared(task, fingerprint=fp)
    try:
        frames, meta = sample_frames(task.path, every_s)
        inputs = [(frame.ms, np.asarray(preprocessor(frame.image), dtype=np.float32)) for frame in frames]
    except ImageDecodeError as exc:
        return _Prepared(task, fingerprint=fp, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one odd video must not stop the run
        return _Prepared(task, fingerprint=fp, error=f"video decoding failed: {type(exc).__name__}: {exc}"[:300])
    meta.pop("duration_ms", None)
    return _Prepared(task, fingerprint=fp, meta=meta, frames=inputs)


# -- the main side ----------------------------------------------------------------------------------


class Engine(Protocol):
    """Reads, decodes and encodes files somewhere other than this process's pools (see
    retriever.distributed.RayEngine). Planning and every checkpoint stay with the run: the
    engine only turns tasks into results."""

    name: str  # recorded in the run's summary

    def prepare(self, tasks: list[_Task], encoder, draft_min_side: int | None, known_content: frozenset[str],
                options: IndexOptions) -> Iterator[list[_Prepared]]:
        """Yields batches of results, in any order, one per task: failed (error set), content
        already known (fingerprint only, as `prepare` returns it), or encoded (vectors set). The
        run commits a checkpoint after each batch. `encoder` is the run's, loaded here."""
        ...


def encoder_backend(encoder) -> str:
    """What runs `encoder`'s image tower, for run summaries: "onnxruntime" or "pytorch (DEVICE)".
    An encoder still being prepared (retriever.onnx.prepare.PendingEncoder) answers with what it
    chose once it has (its `resolved`)."""
    encoder = getattr(encoder, "resolved", None) or encoder
    if type(encoder).__name__ == "OnnxEncoder":
        return "onnxruntime"
    return f"pytorch ({getattr(encoder, 'device', 'cpu')})"


def run_index(
    index,
    encoder,
    roots: Sequence[str],
    options: IndexOptions | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    engine: Engine | None = None,
) -> RunSummary:
    """Index `roots` into `index`, which must hold the writer lock. `encoder` is an Encoder or a
    callable returning one: it is loaded only when some file needs reading. `engine`: None to
    decode and encode here, or an Engine (e.g. Ray's) feeding the same plan and checkpoints.

    KeyboardInterrupt stops at the last checkpoint: the summary says interrupted=True and nothing
    committed is lost; running again resumes."""
    options = options or IndexOptions()
    return _Run(index, encoder, roots, options, on_progress, engine).run()


class _Run:
    def __init__(self, index, encoder, roots, options: IndexOptions, on_progress, engine: Engine | None = None):
        self.index = index
        self.engine = engine
        self.catalog = index.catalog
        self._encoder = encoder
        self.roots = [absolute(r) for r in roots]
        self.options = options
        self.on_progress = on_progress
        self.summary = RunSummary(engine=engine.name if engine is not None else "local")
        self.started = time.monotonic()
        self.pending: list[dict[str, Any]] = []  # rows of the next checkpoint
        self.pending_remove: list[int] = []  # items the next checkpoint drops (a video's old frames)
        self.to_encode: list[_Prepared] = []
        self.last_flush = time.monotonic()
        self.done = 0
        self.total = 0
        self.vectors = None  # the FAISS index, loaded when the run has anything to change
        self.in_commit = False
        self.after_crash = False
        self.draft: int | None = None
        self.tuner: _ThreadTuner | None = None
        self.in_flight: deque = deque()  # (task, future) sent to the workers, oldest first
        self.reader = None  # with options.ocr: the OcrReader of the decode workers
        self.taken = 0  # results taken from the workers

    @property
    def encoder(self):
        if not hasattr(self._encoder, "embed_preprocessed"):  # a loader, called on first need
            self._encoder = self._encoder()
        if self.summary.backend is None and getattr(self._encoder, "resolved", True) is not None:
            self.summary.backend = encoder_backend(self._encoder)  # (not while a PendingEncoder waits)
        return self._encoder

    def run(self) -> RunSummary:
        catalog = self.catalog
        # We hold the lock: a run still marked running was killed (or crashed).
        self.after_crash = catalog.close_abandoned_runs() > 0
        run_id = catalog.start_run(self.roots)
        status = "completed"
        try:
            tasks, gone = self._plan()
            if tasks or gone:
                self.vectors = self.index.vector_writer()  # retriever.index_log
                self._process(tasks, gone)
        except KeyboardInterrupt:
            status = "interrupted"
            self.summary.interrupted = True
            if self.in_commit and self.vectors is not None:  # a copy in memory may lag the catalog
                self.vectors.lagging()
        except Exception as exc:
            # Out of GPU memory even one image at a time, a lost cluster, a full disk: the run
            # is recorded as failed (not left "running"), its checkpoints kept, the error raised.
            # Every committed checkpoint is in the delta log (an on-disk index's delta is not
            # saved: the next open makes it again from the stored vectors).
            self.summary.error = " ".join(str(exc).split())[:300] or type(exc).__name__
            self._finish(run_id, "failed")
            raise
        if self.vectors is not None:
            self.vectors.finish(interrupted=self.summary.interrupted)  # a fold when the log has grown
        self._finish(run_id, status)
        self.index.adapt_vector_index(None if self.summary.interrupted else self.vectors)  # the kind for the size
        return self.summary

    def _finish(self, run_id: int, status: str) -> None:
        if self.summary.backend is None and getattr(self._encoder, "resolved", None) is not None:
            self.summary.backend = encoder_backend(self._encoder)
        encoder = getattr(self._encoder, "resolved", None) or self._encoder
        if callable(getattr(encoder, "wait_background", None)):
            encoder.wait_background()
        note = getattr(encoder, "batch_note", None)  # the GPU ran out of memory: a smaller batch since
        if isinstance(note, str) and note not in self.summary.notices:
            self.summary.notices.append(note)
        self.summary.seconds = time.monotonic() - self.started
        self.catalog.finish_run(run_id, status, self.summary.as_dict())
        self.catalog.set_settings({"last_run_at": self.catalog.last_run()["finished_at"]})

    def _plan(self) -> tuple[list[_Task], list[KnownFile]]:
        """Stat only: which files to read, and which known files are gone."""
        known = self.catalog.known_files()
        # Files that failed only for want of an optional decoder are tried again once it is there.
        available = {name for name, ok in optional_decoders().items() if ok}
        retry_ids = {
            f["id"]
            for f in self.catalog.failures()
            if NEEDS_INSTALL in (f["error"] or "") and _DECODER_OF_REASON.get((f["error"] or "").split()[0]) in available
        }
        seen: set[str] = set()
        tasks: list[_Task] = []

        def unlistable(path: str, exc: OSError) -> None:
            self.summary.warnings.append(f"cannot list {path}: {exc.strerror or exc}")

        walker = walk(self.roots, include_hidden=self.options.include_hidden, exclude=self.options.exclude,
                      on_error=unlistable)
        for entry in walker:
            if entry.path in seen:  # the same file reached through two roots
                continue
            seen.add(entry.path)
            prior = known.get(entry.path)
            if prior is not None and prior.size == entry.size and prior.mtime_ns == entry.mtime_ns:
                if not (prior.status == STATUS_FAILED and (self.options.retry_failed or prior.id in retry_ids)):
                    self.summary.unchanged += 1
                    continue
            tasks.append(_Task(entry.path, entry.size, entry.mtime_ns, prior))
        gone = [
            prior
            for path, prior in known.items()
            if path not in seen and any(is_under(path, root) for root in self.roots) and _vanished(path)
        ]
        return tasks, gone

    def _process(self, tasks: list[_Task], gone: list[KnownFile]) -> None:
        # Content of files that are gone may reappear under a new path (a move): such files are
        # fingerprinted but not decoded. Copies of content still present are caught after reading.
        self.gone_by_fp: dict[str, list[KnownFile]] = {}
        for g in gone:
            if g.fingerprint and g.status == STATUS_INDEXED:
                self.gone_by_fp.setdefault(g.fingerprint, []).append(g)
        self.total = len(tasks)
        if tasks and self.engine is not None:
            self._receive(tasks)
        elif tasks:
            self._read_all(tasks)
        self._flush(force=True)
        leftover = [i for items in self.gone_by_fp.values() for g in items for i in g.ids]
        leftover += [i for g in gone if not (g.fingerprint and g.status == STATUS_INDEXED) for i in g.ids]
        if leftover:
            self._commit([], remove_ids=leftover)
            self.summary.removed += len(leftover)

    def _read_all(self, tasks: list[_Task]) -> None:
        encoder = self.encoder
        opts = self.options
        workers = opts.workers or default_workers()
        kind = choose_pool(opts.pool, len(tasks), getattr(encoder, "device", "cpu"), self.after_crash)
        self.draft = DRAFT_FACTOR * encoder.input_size if opts.draft else None
        reader = None
        if opts.ocr:
            from retriever.ocr.reader import DECODE_MIN_SIDE, OcrReader

            reader = self.reader = OcrReader()  # its models load in each worker, on its first photo
            self.draft = max(self.draft, DECODE_MIN_SIDE) if self.draft else None
        cpu_model = not str(getattr(encoder, "device", "cpu")).startswith("cuda")
        if kind == "thread" and cpu_model and "torch" in sys.modules and len(tasks) >= 5 * encoder.batch_size:
            self.tuner = _ThreadTuner(workers, len(tasks) // encoder.batch_size)
        args = (encoder.preprocessor(), self.draft, frozenset(self.gone_by_fp), opts.video_every_s, reader)
        lookahead = max(2 * encoder.batch_size, 4 * workers)  # bounded: memory stays flat
        queue: deque[_Task] = deque(tasks)
        suspects: deque[_Task] = deque()  # in flight when a worker died
        while queue or suspects:
            pool, submit = _make_pool(kind, workers, prepare, *args)
            if kind == "process" and not _pool_starts(pool):
                pool.shutdown(wait=True, cancel_futures=True)
                kind = "thread"  # worker processes cannot start here (e.g. no importable __main__)
                continue
            in_flight: deque[tuple[_Task, Future]] = deque()
            self.in_flight = in_flight

            def send(source: deque[_Task]) -> None:
                task = source.popleft()
                try:
                    in_flight.append((task, submit(task)))
                except BrokenExecutor:
                    source.appendleft(task)  # not yet sent: not a suspect
                    raise

            try:
                while queue or suspects or in_flight:
                    # After a worker died, the files that were in flight go through one at a
                    # time: the file that kills a worker is found and recorded, no other file
                    # pays for it.
                    if suspects:
                        if not in_flight:
                            send(suspects)
                    else:
                        while queue and len(in_flight) < lookahead:
                            send(queue)
                    prepared = in_flight[0][1].result()
                    in_flight.popleft()
                    self.taken += 1
                    self._handle(prepared)
            except BrokenExecutor:
                if len(in_flight) == 1:
                    self._handle(_Prepared(in_flight[0][0], error="the decoder crashed on this file"))
                else:
                    suspects.extend(t for t, _ in in_flight)
                in_flight.clear()  # and on to a new pool
            finally:
                for _, future in in_flight:
                    future.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
                if self.tuner is not None:
                    self.summary.tuning = self.tuner.report
                    self.tuner.restore()
                    self.tuner = None

    def _receive(self, tasks: list[_Task]) -> None:
        """Results of another engine, committed here: one checkpoint per batch received."""
        encoder = self.encoder
        self.draft = DRAFT_FACTOR * encoder.input_size if self.options.draft else None
        batches = self.engine.prepare(tasks, encoder, self.draft, frozenset(self.gone_by_fp), self.options)
        try:
            for batch in batches:
                for prepared in batch:
                    self.taken += 1
                    self._handle(prepared)
                self._flush(force=True)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:  # a generator: stops the engine's pipeline now, not at garbage collection
                close()
            if getattr(self.engine, "backend", None):  # what encoded there, not the driver's encoder
                self.summary.backend = self.engine.backend
            self.summary.notices.extend(n for n in getattr(self.engine, "notices", ()) if n not in self.summary.notices)

    def _handle(self, p: _Prepared) -> None:
        task = p.task
        base = {"path": task.path, "size": task.size, "mtime_ns": task.mtime_ns}
        if p.error is not None:
            self._fail(task, p.fingerprint, p.error)
            return
        if task.known is not None and task.known.fingerprint == p.fingerprint and task.known.status == STATUS_INDEXED:
            self.summary.unchanged += 1  # touched, same content: new size/mtime only
            self._queue([{"id": i, **base} for i in task.known.ids])
            return
        if task.known is None and p.fingerprint in self.gone_by_fp:
            source = self.gone_by_fp[p.fingerprint].pop()
            if not self.gone_by_fp[p.fingerprint]:
                del self.gone_by_fp[p.fingerprint]
            self.summary.moved += 1  # same rows, same ids, same vectors: only the path changes
            self._queue([{"id": i, **base} for i in source.ids])
            return
        sources = self.catalog.indexed_with_fingerprint(p.fingerprint) if p.fingerprint else []
        if sources and sources[0]["path"] != task.path:
            # Known content under another path: reuse its metadata and vectors, encode nothing.
            stored = self.catalog.vectors_for([r["id"] for r in sources], self.index.dim)
            self._count_new(task)
            self.summary.copied += 1
            self._replace(task, [{**base, **{k: r[k] for k in _META_KEYS}, "fingerprint": p.fingerprint,
                                  "status": STATUS_INDEXED, "error": None, "vector": stored[r["id"]],
                                  "_in_index": False} for r in sources])  # (_replace drops its old items)
            return
        if not p.decoded:  # decode was skipped for content that has since become unavailable
            p = prepare(task, self.encoder.preprocessor(), self.draft, frozenset(), True, self.options.video_every_s)
            if p.error is not None:
                self._handle(p)
                return
        if p.vectors is not None:  # encoded by the engine
            self._add_encoded(p, p.vectors)
            return
        if p.frames is not None:
            self._encode_video(p)
            return
        self.to_encode.append(p)
        if len(self.to_encode) >= self.encoder.batch_size:
            self._encode_batch()

    def _fail(self, task: _Task, fingerprint: str | None, reason: str) -> None:
        """The file is recorded as failed, with its reason and no vector (its old items dropped)."""
        self.summary.failed += 1
        self.summary.failures.append((task.path, reason))
        self._replace(task, [{"path": task.path, "size": task.size, "mtime_ns": task.mtime_ns,
                              "fingerprint": fingerprint, "status": STATUS_FAILED, "error": reason,
                              "frame_ms": None, "vector": None}])

    def _count_new(self, task: _Task) -> None:
        if task.known is None:
            self.summary.added += 1
        else:
            self.summary.updated += 1

    def _encode_batch(self) -> None:
        """Still images: a changed file keeps its id, its vector is replaced."""
        batch, self.to_encode = self.to_encode, []
        vectors = self.encoder.embed_preprocessed([p.pixels for p in batch])
        if self.tuner is not None:
            self.tuner.batch_done(self.taken + sum(1 for _, f in self.in_flight if f.done()))
        for p, vector in zip(batch, vectors):
            self._add_encoded(p, vector[None])
        self._flush(force=True)

    def _encode_video(self, p: _Prepared) -> None:
        """All frames of a video are encoded and committed together: a crash never leaves a
        video with some of its frames."""
        vectors = self.encoder.embed_preprocessed([pixels for _, pixels in p.frames])
        self._add_encoded(p, vectors)
        self._flush(force=True)

    def _add_encoded(self, p: _Prepared, vectors: np.ndarray) -> None:
        """One encoded file into the next checkpoint: a still image's one row (vectors (1, dim)),
        or a video's frames (one row each). A vector with NaN or inf in it (a model overflowing in
        half precision, a broken GPU) fails the file: it would never be found, and would poison
        the IVF training and every search that scores it."""
        if not np.isfinite(vectors).all():
            self._fail(p.task, p.fingerprint, NON_FINITE_REASON)
            return
        self._count_new(p.task)
        base = {"path": p.task.path, "size": p.task.size, "mtime_ns": p.task.mtime_ns, **(p.meta or {}),
                "fingerprint": p.fingerprint, "status": STATUS_INDEXED, "error": None}
        if p.frames is None:
            text = {} if p.text is None else {"_text": p.text}
            self._queue([{**base, "frame_ms": None, "vector": vectors[0], "_in_index": p.task.known is not None, **text}])
        else:
            self._replace(p.task, [{**base, "frame_ms": ms, "vector": v, "_in_index": False}
                                   for (ms, _), v in zip(p.frames, vectors)])

    def _replace(self, task: _Task, rows: list[dict[str, Any]]) -> None:
        """A file's items replaced by `rows` in one checkpoint (its old items, e.g. a video's
        frames, dropped in the same transaction)."""
        if task.known is not None:
            self.pending_remove.extend(task.known.ids)
        self._queue(rows)

    def _queue(self, rows: list[dict[str, Any]]) -> None:
        """One file handled; its rows go into the next checkpoint."""
        self.pending.extend(rows)
        self.done += 1
        self._flush(force=False)

    def _flush(self, force: bool) -> None:
        if force and self.to_encode:
            self._encode_batch()  # flushes again itself
            return
        due = len(self.pending) >= CHECKPOINT_ROWS or time.monotonic() - self.last_flush >= CHECKPOINT_SECONDS
        if (self.pending or self.pending_remove) and (force or due):
            rows, self.pending = self.pending, []
            removes, self.pending_remove = self.pending_remove, []
            self._commit(rows, remove_ids=removes)
        if self.on_progress and (force or due):
            self.on_progress(Progress(self.done, self.total, self.summary.failed, time.monotonic() - self.started))

    def _commit(self, rows: list[dict[str, Any]], remove_ids: Sequence[int] = ()) -> None:
        """One checkpoint: the catalog (the truth) and, in its transaction, the FAISS delta log;
        then the writer's copy in memory, if it holds one (retriever.index_log).
        Rows marked _in_index may already have a vector there (removal scans the whole index, so
        it is skipped for files that are new to the catalog)."""
        self.in_commit = True
        texts = None
        if any("_text" in row for row in rows):
            from retriever.ocr.run import text_of

            texts = (self.reader.version, {n: (row["fingerprint"], *text_of(row["_text"]))
                                           for n, row in enumerate(rows) if "_text" in row})
            self.summary.text_read += len(texts[1])
            self.summary.text_found += sum(1 for row in rows if row.get("_text"))
        ids = self.catalog.write_batch(rows, remove_ids=remove_ids, texts=texts, on_commit=self.vectors.on_commit)
        self.last_flush = time.monotonic()
        stale = list(remove_ids) + [i for row, i in zip(rows, ids) if "vector" in row and row.get("_in_index")]
        changed = [(i, row["vector"]) for row, i in zip(rows, ids) if row.get("vector") is not None]
        self.vectors.apply(stale, np.array([i for i, _ in changed], dtype=np.int64),
                           np.stack([v for _, v in changed]) if changed else None)
        self.in_commit = False


def _vanished(path: str) -> bool:
    """Gone for certain. A file we merely cannot reach now (permissions, an I/O error, an
    unmounted share) is kept: nothing that exists is ever dropped."""
    if is_url(path):
        return _url_vanished(path)
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


# The first word of a missing-decoder reason (images.HEIF_MISSING, ...) -> optional_decoders() key.
_DECODER_OF_REASON = {"HEIC": "heif", "AVIF": "avif", "camera": "raw"}

_META_KEYS = ("width", "height", "format", "taken_at", "camera_make", "camera_model", "gps_lat", "gps_lon")
