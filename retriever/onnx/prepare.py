"""The first export of a model on a machine, in a child process, while the indexer gets on.
The child is `python -m retriever.onnx` (retriever/onnx/__main__.py runs `child`).

A new index whose model the cache (retriever.onnx.cache) does not hold yet needs the model
loaded in PyTorch, exported, checked and timed against ONNX Runtime: 10-20 s and about 1.5 GB
for ViT-B-32. Done in the indexing process, that process keeps torch and the model in memory
while ONNX Runtime indexes. Here a child process does it:

    child                                         parent (retriever index)
    load the model (torch)                        ...
    -> {"event": "model", model id, dim,          creates the index; photos start being
        the PIL + numpy preprocessing}            walked, read and decoded with that preprocessing
    export, check, time; the cache entry          decoded photos wait for the encoder
    -> {"event": "done", "entry": folder}         attaches the entry; ONNX Runtime encodes
                                                  (or PyTorch, where it measured faster)

The parent never imports torch when ONNX Runtime encodes. When the child fails (it cannot
start, it dies, the model cannot load) the parent is told and does the work itself, as before;
a cache that cannot be written is a one-line reason in the index, queries stay on PyTorch.
The child writes its messages to its own stdout (one JSON object a line) and anything else,
such as library warnings, to stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from retriever.errors import RetrieverError
from retriever.onnx.record import TOLERANCE


class PreparationFailed(RetrieverError):
    """The child could not prepare the model (it says why); the caller does the work itself."""


class Preparation:
    """The parent's handle on one child preparing a model's cache entry."""

    def __init__(self, spec, cache_dir: str | os.PathLike | None = None, tolerance: float = TOLERANCE):
        from retriever.onnx.cache import cache_root

        request = {"spec": asdict(spec), "cache_dir": str(cache_root(cache_dir)), "tolerance": tolerance}
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "retriever.onnx"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, start_new_session=True, bufsize=0)  # unbuffered: `ready` selects on it
        try:
            self.process.stdin.write(json.dumps(request).encode())
            self.process.stdin.close()
        except OSError:
            pass  # the child died at once: the next read says so
        self._model: dict[str, Any] | None = None
        self._done: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _next(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise PreparationFailed(f"the model preparation process ended ({self.process.returncode}): "
                                    f"{self._stderr_tail()}")
        try:
            message = json.loads(line)
        except ValueError:
            raise PreparationFailed(f"the model preparation process said {line[:200]!r}") from None
        if message.get("event") == "error":
            self.process.wait()
            raise PreparationFailed(message.get("message", "unknown error"))
        return message

    def model(self) -> dict[str, Any]:
        """{"model_id", "dim", "preprocess" (a twin's description or None)} once the child has the
        model loaded. Raises PreparationFailed."""
        with self._lock:
            if self._model is None:
                message = self._next()
                if message.get("event") != "model":
                    raise PreparationFailed(f"unexpected message from the preparation process: {message}")
                self._model = message
            return self._model

    def result(self) -> dict[str, Any]:
        """{"entry": the cache entry's folder} or {"cache_error": why the cache cannot be written},
        once the child is done. Raises PreparationFailed."""
        self.model()
        with self._lock:
            if self._done is None:
                message = self._next()
                if message.get("event") != "done":
                    raise PreparationFailed(f"unexpected message from the preparation process: {message}")
                self._done = message
                self.process.wait()
                self.close()
            return self._done

    def ready(self) -> bool:
        """Whether the child has said it is done (or ended): `result` would not wait."""
        if self._done is not None or self.process.poll() is not None:
            return True
        import select

        try:
            return bool(select.select([self.process.stdout], [], [], 0)[0])
        except (OSError, ValueError):
            return True  # closed: `result` says why

    def detach(self) -> None:
        """Leave the child to finish on its own (it is in its own session): it writes the cache
        entry, which later runs and searches find (retriever.onnx.PENDING)."""
        self.close()

    def cancel(self) -> None:
        """Stop the child (an interrupted run): whatever it was building is never used (the cache
        builds in a temporary folder)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.close()

    def close(self) -> None:
        for stream in (self.process.stdout, self._stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            lines = [ln for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        except (OSError, ValueError):
            return "no message"
        return lines[-1][:300] if lines else "no message"


class PendingEncoder:
    """The encoder of a new index while its model is prepared in a child (Preparation): it
    preprocesses at once (the child's PIL + numpy twin), and encodes with what the preparation
    chose once it is done (`resolve`): ONNX Runtime from the cache entry, or PyTorch loaded here
    where ONNX Runtime measured slower or the export was refused. `finish` (at the end of the run)
    attaches the export to the index even when nothing was encoded; `cancel` stops the child."""

    device = "cpu"

    def __init__(self, index, preparation: Preparation, backend: str = "auto", device: str = "auto",
                 batch_size: int | None = None, on_backend=None, cache_dir: str | os.PathLike | None = None):
        model = preparation.model()
        self.index = index
        self.preparation = preparation
        self.model_id = model["model_id"]
        self.dim = int(model["dim"])
        self.twin = model["preprocess"]
        from retriever.onnx.preprocess import preprocessor_from

        self._preprocess = preprocessor_from(self.twin)
        self.input_size = int(self.twin["size"])
        self.batch_size = int(batch_size or 32)
        self._backend, self._device, self._batch = backend, device, batch_size
        self._on_backend = on_backend or (lambda why: None)
        self._cache_dir = cache_dir
        self._attached = False
        self._lock = threading.Lock()
        self._choose_lock = threading.Lock()
        self._chosen = None
        self.resolved = None  # the encoder that encodes, once chosen
        self.outcome: str | None = None  # what the preparation did, in words, once finished (for the run summary)
        self._interim = None  # PyTorch, encoding while the export is prepared (see embed_preprocessed)
        self.interim_batches = 0

    def preprocessor(self):
        return self._preprocess

    def preprocess(self, image):
        return self._preprocess(image)

    def embed_preprocessed(self, items):
        interim = self._while_preparing()
        if interim is not None:
            self.interim_batches += 1
            return interim.embed_preprocessed(items)
        return self.resolve().embed_preprocessed(items)

    def embed_images(self, images):
        interim = self._while_preparing()
        return (interim or self.resolve()).embed_images(images)

    def _while_preparing(self):
        """PyTorch, loaded here, while the child still prepares the export and photos are ready.
        Measured on first indexes (benchmarks/first_run.py, 15 and 105 photos): waiting for
        ViT-B-32's export took 41-67 s, PyTorch meanwhile 24-36 s; the offline encoder's export
        is quick (16 s waiting) and a second PyTorch copy beside it only slowed the run (24 s),
        so it waits. None once the export is ready (then ONNX Runtime takes over, where it
        measured faster), for the offline encoder, for int8 indexes (only ONNX Runtime makes
        their vectors) and for --backend onnx."""
        from retriever.encoders.base import OFFLINE_MODEL_ID

        if self._chosen is not None or self._backend == "onnx" or getattr(self.index, "precision", "fp32") != "fp32":
            return None
        if self.model_id.split("/")[0] == OFFLINE_MODEL_ID.split("/")[0]:
            return None
        with self._choose_lock:
            if self._chosen is not None or self.preparation.ready():
                return None
            if self._interim is None:
                self._interim = self.index.load_encoder(self._device, self._batch)
                self.resolved = self._interim  # kept if PyTorch is the choice after all
                self._on_backend("PyTorch while this model's ONNX export is prepared (the first index of it on "
                                 "this machine); ONNX Runtime takes over once it is ready, where it measured faster")
            return self._interim

    def embed_texts(self, texts):
        return self.resolve().embed_texts(texts)

    def finish(self) -> None:
        """At the end of a run: the export attached to the index (see `_complete`), or, when
        PyTorch did the encoding and the child is not done yet, left to finish in the background:
        the index records it as PENDING, and searches and later runs use it once it is there."""
        with self._lock:
            if self._attached:
                return
            if self._interim is not None and not self.preparation.ready():
                from retriever.onnx import attach, pending_setting
                from retriever.onnx.cache import cache_root

                attach(self.index, None, pending_setting(self.index, str(cache_root(self._cache_dir)),
                                                         self.preparation.process.pid))
                self.preparation.detach()
                self._attached = True
                self.outcome = ("first index of this model on this machine: PyTorch encoded while the model's "
                                "ONNX export was prepared; the export goes on in the background (process "
                                f"{self.preparation.process.pid}) and searches and later runs use it once it is done")
                return
        self._complete()

    def _complete(self) -> None:
        """The export attached to the index: from the child's cache entry; where the child failed,
        made here (torch loaded), as an index created without a child would."""
        with self._lock:
            if self._attached:
                return
            from retriever.onnx import _refused, attach, export_index
            from retriever.onnx.cache import open_entry

            try:
                done = self.preparation.result()
            except PreparationFailed as exc:
                self._on_backend(f"model preparation failed ({exc}): exporting here")
                self.resolved = self.index.load_encoder(self._device, self._batch)
                export_index(self.index, self.resolved, cache_dir=self._cache_dir)
            else:
                entry = open_entry(Path(done["entry"]), self.model_id) if done.get("entry") else None
                if entry is not None:
                    attach(self.index, entry)
                    self.outcome = _outcome(done, entry.record)
                    if self.interim_batches:
                        self.outcome += f"; PyTorch encoded {self.interim_batches} batches while it was prepared"
                else:
                    reason = done.get("cache_error") or "the prepared cache entry is damaged"
                    attach(self.index, None, _refused(self.index, TOLERANCE, reason))
                    self.outcome = f"model prepared in {done.get('seconds', '?')} s, but not kept: {reason}"
            self._attached = True

    def resolve(self):
        """The encoder that encodes (see the class's docstring), chosen once."""
        with self._choose_lock:
            if self._chosen is None:
                self._complete()
                from retriever.onnx import indexing_encoder_for

                onnx, why = indexing_encoder_for(self.index, self._backend, self._device, self._batch)
                # a PyTorch model loaded by a failed preparation is dropped when ONNX Runtime encodes
                self._chosen = onnx or self.resolved or self.index.load_encoder(self._device, self._batch)
                self.resolved = self._chosen
                self._interim = None  # ONNX Runtime took over: the PyTorch model can go
                self._on_backend(why)
        return self._chosen

    def cancel(self) -> None:
        self.preparation.cancel()


def _outcome(done: dict[str, Any], record: dict[str, Any]) -> str:
    """The run summary's line on a preparation that ended with a cache entry."""
    if not done.get("built"):
        return "model export found in the model cache (another process made it meanwhile)"
    if not record.get("ok"):
        return (f"model exported in {done.get('seconds', '?')} s but refused ({record.get('reason')}): "
                "PyTorch encodes and answers queries for this model")
    return (f"first index of this model on this machine: exported for ONNX Runtime in {done.get('seconds', '?')} s "
            "while photos were read (kept in the model cache: the next index of this model skips it, and "
            "searches need no torch)")


def child() -> int:
    """The child's work (see the module's docstring). Exit status 0 when it could say what it had
    to say, even an error."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # prints of the libraries go to stderr: stdout carries the messages only

    def say(**message: Any) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    import time

    started = time.monotonic()
    try:
        request = json.loads(sys.stdin.read())
        from retriever.encoders import create_encoder
        from retriever.encoders.base import ModelSpec
        from retriever.onnx import build_export
        from retriever.onnx.cache import CacheError, ModelCache
        from retriever.onnx.export import check_images, image_preprocess_twin

        tolerance = float(request["tolerance"])
        model = create_encoder(ModelSpec(**request["spec"]))
        twin = image_preprocess_twin(model, check_images(), tolerance) if model.device == "cpu" else None
        say(event="model", model_id=model.model_id, dim=int(model.dim), preprocess=twin)
        try:
            entry, built = ModelCache(request["cache_dir"]).get_or_create(
                model.model_id, lambda folder: build_export(model, folder, None, tolerance), tolerance)
        except CacheError as exc:
            say(event="done", cache_error=str(exc), seconds=round(time.monotonic() - started, 1))
            return 0
        say(event="done", entry=str(entry.folder), built=built, seconds=round(time.monotonic() - started, 1))
    except Exception as exc:  # noqa: BLE001 - told to the parent, which does the work itself
        say(event="error", message=f"{type(exc).__name__}: {exc}"[:500])
    return 0

