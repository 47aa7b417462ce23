"""The towers of an index's encoder on ONNX Runtime: queries with no torch import.

    INDEX/onnx/text.onnx      token ids -> unit text embedding (dynamic batch axis; dynamic
                              length too for MiniLM and for CLIP-style causal towers, so a
                              short query runs its own few positions, not 77)
    INDEX/onnx/image.onnx     preprocessed pixels -> unit image embedding (dynamic batch axis)
    INDEX/onnx/regions.onnx   the offline encoder's dense region pass: pixels (1, 3, H, W), H and
                              W any multiples of 32, and pooling windows -> unit region vectors
    INDEX/onnx/<tokenizer>    CLIP's BPE merges or MiniLM's tokenizer.json, copied from the packages

`export_index` writes them (at index creation and on `retriever optimize`) and records the
catalog setting "onnx": files, opset, the max abs difference of each tower against PyTorch on a
fixed batch, the onnxruntime version, the model id — or, when an export is refused (a tower
differs by more than TOLERANCE, the model or its tokenizer has no export path), the reason.
`onnx_encoder_for(index)` gives the ONNX encoder (texts; images too when the export found a
PIL + numpy twin of the preprocessing) when that record is valid, else None.
This module imports neither torch nor onnxruntime at its top; exporting imports torch.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retriever.encoders.base import Encoder
from retriever.errors import MissingDependencyError
from retriever.onnx.record import (  # noqa: F401  (re-exported: the package's interface)
    IMAGE_FILE,
    OPSET,
    TEXT_FILE,
    TOLERANCE,
    ExportReport,
    OnnxExportError,
    TowerReport,
)
from retriever.onnx.session import make_session

__all__ = ["OPSET", "TOLERANCE", "ONNX_SETTING", "ExportReport", "TowerReport", "OnnxExportError",
           "OnnxEncoder", "export_index", "onnx_encoder_for", "valid_record", "make_session",
           "BACKENDS", "measure_indexing", "indexing_encoder_for", "OnnxRegions", "onnx_regions_for"]

ONNX_SETTING = "onnx"  # catalog setting: the last export's ExportReport.as_setting()
ONNX_FOLDER = "onnx"
BACKENDS = ("auto", "onnx", "pytorch")  # retriever index --backend
# ONNX Runtime indexes when its image tower ran at least this much faster than PyTorch's at export
INDEXING_MIN_SPEEDUP = 1.05
MEASURE_BATCH = 8  # images per timed call at export (about 5 s in all for ViT-B-32 on 2 cores)
ORDER = ("pytorch", "onnx", "onnx", "pytorch", "onnx", "pytorch", "pytorch", "onnx")


class OnnxEncoder(Encoder):
    """An index's encoder on ONNX Runtime, with a torch-free tokenizer: `embed_texts` always;
    `embed_images` when the export recorded a PIL + numpy twin of the image preprocessing
    (`embeds_images`), else images go through the PyTorch encoder."""

    device = "cpu"

    def __init__(self, folder: str | os.PathLike, record: dict[str, Any], threads: int | None = None,
                 batch_size: int | None = None, one_shot: bool = False, spinning: bool = True):
        from retriever.onnx.preprocess import preprocessor_from
        from retriever.onnx.text_tokens import ClipBpe, WordPiece

        self.folder = Path(folder)
        tok = record["tokenizer"]
        if tok["kind"] == "clip-bpe":
            self.tokenizer = ClipBpe(self.folder / tok["file"], int(tok["context_length"]), bool(tok.get("trim")))
        elif tok["kind"] == "wordpiece":
            self.tokenizer = WordPiece(self.folder / tok["file"], int(tok["max_length"]))
        else:
            raise OnnxExportError(f"unknown tokenizer kind {tok['kind']!r} in the ONNX record")
        self._threads = threads
        self._one_shot = one_shot  # see make_session
        self._spinning = spinning
        self._text_file = record["towers"]["text"]["file"]
        self._text_session = None  # made on first use: indexing needs only the image tower
        self._image_session = None
        self._session_thread = None  # making the image session in the background (start_image_session)
        self._session_error: Exception | None = None
        self._image_file = (record["towers"].get("image") or {}).get("file")
        twin = record.get("image_preprocess")
        self._preprocess = preprocessor_from(twin) if twin and self._image_file else None
        self.embeds_images = self._preprocess is not None
        self.input_size = int(twin["size"]) if self.embeds_images else 0
        self.model_id = record["model_id"]
        self.dim = int(record["dim"])
        self.batch_size = int(batch_size or 32)

    def preprocessor(self):
        if self._preprocess is None:
            raise OnnxExportError("this ONNX export has no torch-free image preprocessing: use the PyTorch encoder")
        return self._preprocess

    def start_image_session(self) -> None:
        """Make the image tower's session in a background thread (0.5 s for ViT-B-32): indexing
        starts reading photos meanwhile. The first batch waits for it."""
        if self._image_file is None or self._image_session is not None or self._session_thread is not None:
            return
        import threading

        def make() -> None:
            try:
                self._image_session = self._new_image_session()
            except Exception as exc:  # noqa: BLE001 - raised again by the first batch, in its thread
                self._session_error = exc

        self._session_thread = threading.Thread(target=make, name="retriever-onnx-session", daemon=True)
        self._session_thread.start()

    def wait_background(self) -> None:
        """Wait for the image session being made in the background, if any: its thread must not
        outlive the run (a process exiting while ONNX Runtime builds a session aborts with
        "terminate called without an active exception": a run that encodes nothing, such as one
        that only finds moved files, ends in well under the 0.5 s the session takes)."""
        thread = self._session_thread
        if thread is not None:
            thread.join()

    def _new_image_session(self):
        return make_session(self.folder / self._image_file, self._threads, self._one_shot, self._spinning)

    def _embed_preprocessed_batch(self, batch: Sequence[Any]) -> np.ndarray:
        if self._session_thread is not None:
            self._session_thread.join()
            self._session_thread, error, self._session_error = None, self._session_error, None
            if error is not None:
                raise error
        if self._image_session is None:
            if self._image_file is None:
                raise OnnxExportError("this ONNX export has no image tower")
            self._image_session = self._new_image_session()
        pixels = np.stack([np.asarray(x, dtype=np.float32) for x in batch])
        return self._image_session.run(["embedding"], {"pixels": pixels})[0]

    def _embed_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        if self._text_session is None:
            self._text_session = make_session(self.folder / self._text_file, self._threads, self._one_shot, self._spinning)
        return self._text_session.run(["embedding"], self.tokenizer(list(texts)))[0]


class OnnxRegions:
    """The offline encoder's dense region pass on ONNX Runtime (the export's "regions" tower):
    `embed_regions` as OfflineEncoder's, without torch. About 2x faster than PyTorch on the CPU
    (EfficientNet-Lite0 at 448 x 608: 31 ms against 45 ms a photo, 2 cores)."""

    def __init__(self, folder: str | os.PathLike, record: dict[str, Any], threads: int | None = None):
        self.folder = Path(folder)
        self.model_id = record["model_id"]
        self.dim = int(record["dim"])
        self._file = record["towers"]["regions"]["file"]
        self._threads = threads
        self._session = None

    def embed_regions(self, image: Any, boxes: Sequence[Sequence[float]], full_size: tuple[int, int],
                      short_side: int) -> tuple[list[list[float]], np.ndarray]:
        from retriever.encoders import region_pass

        if not boxes:
            return [], np.zeros((0, self.dim), np.float32)
        if self._session is None:
            self._session = make_session(self.folder / self._file, self._threads)
        snapped, pixels, windows = region_pass.prepare(image, boxes, full_size, short_side)
        out = self._session.run(["embedding"], {"pixels": pixels, "windows": windows})[0]
        return snapped, out.astype(np.float32, copy=False)


def onnx_regions_for(index, threads: int | None = None) -> OnnxRegions | None:
    """The dense region pass of `index`'s ONNX export when it has one (the offline encoder's,
    exported with GRAPH 3 or later) and onnxruntime is installed; else None (PyTorch runs it)."""
    record = valid_record(index)
    if record is None or not (record.get("towers") or {}).get("regions"):
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    return OnnxRegions(export_folder(index, record), record, threads)


def export_folder(index, record: dict[str, Any]) -> Path:
    """Where the files of an index's export are: its entry of the shared model cache, or (an
    index exported before the cache) INDEX/onnx."""
    if record.get("cache_folder"):
        return Path(record["cache_folder"])
    return Path(index.folder) / ONNX_FOLDER


PENDING = "pending"  # in the setting: the export goes on in a background process (prepare.py)


def pending_setting(index, cache_root: str, pid: int) -> dict[str, Any]:
    """The setting of an index whose model's export a background process is still making."""
    reason = f"the model's export is being made in the background (process {pid})"
    return {**_refused(index, TOLERANCE, reason), PENDING: True, "cache_root": str(cache_root), "pid": int(pid)}


def _finished_pending(index, record: dict[str, Any]):
    """The cache entry a background export made for `index` (record: its pending setting), or None."""
    from retriever.onnx.cache import ModelCache

    try:
        return ModelCache(record.get("cache_root")).lookup(index.model_id)
    except (OSError, ImportError, ValueError):
        return None


def attach_pending(index) -> bool:
    """An index left with a background export (PENDING) gets the export attached once the cache
    holds it; needs the writer lock. -> whether it was attached."""
    record = index.catalog.get_setting(ONNX_SETTING)
    if not record or not record.get(PENDING):
        return False
    entry = _finished_pending(index, record)
    if entry is None:
        return False
    attach(index, entry)
    return True


def valid_record(index) -> dict[str, Any] | None:
    """The index's ONNX record when it is a successful export of the index's own model whose
    files are all present (and, in the shared cache, intact: sizes and hashes); else None. An
    export still PENDING at the last run counts once the cache holds it (the next writing run
    records it)."""
    record = index.catalog.get_setting(ONNX_SETTING)
    if record and record.get(PENDING):
        entry = _finished_pending(index, record)
        record = entry.record if entry is not None else None
    if not record or not record.get("ok") or record.get("model_id") != index.model_id:
        return None
    folder = export_folder(index, record)
    if record.get("cache_folder"):
        from retriever.onnx.cache import open_entry

        return record if open_entry(folder, record.get("cache_key") or index.model_id) is not None else None
    files = [f for t in record.get("towers", {}).values() for f in (t["file"], t.get("data")) if f is not None]
    files.append((record.get("tokenizer") or {}).get("file", ""))
    if "text" not in record.get("towers", {}) or not all(f and (folder / f).is_file() for f in files):
        return None
    return record


def onnx_encoder_for(index, threads: int | None = None, one_shot: bool = False) -> OnnxEncoder | None:
    """The ONNX encoder of `index` when it holds a valid export and onnxruntime (and, for MiniLM,
    tokenizers) is installed; else None (the caller uses PyTorch). one_shot: see make_session."""
    record = valid_record(index)
    if record is None:
        return None
    try:
        return OnnxEncoder(export_folder(index, record), record, threads, one_shot=one_shot)
    except (MissingDependencyError, ImportError, OSError):
        return None


def export_index(index, encoder, images: Sequence[Any] | None = None, tolerance: float = TOLERANCE,
                 cache_dir: str | os.PathLike | None = None) -> ExportReport:
    """The index's export, from the shared model cache (retriever.onnx.cache): made once per
    machine and model, so a second index of the model exports and measures nothing. Made here
    when the cache has no intact entry: `encoder` (the index's own) exported, checked against
    PyTorch and, on the CPU, timed against ONNX Runtime for indexing. The outcome is recorded in
    the catalog (setting "onnx") and in INDEX/onnx.json; a refused export (or a cache that cannot
    be written) leaves search on PyTorch. `encoder` may be a callable that loads it, called only
    when the export is made here. Raises MissingDependencyError when onnx/onnxruntime are not
    installed (nothing recorded)."""
    if hasattr(encoder, "embed_texts"):
        _same_model(encoder, index)
        loaded = encoder

        def encoder():
            return loaded
    for module, pip_name in (("onnx", "onnx"), ("onnxruntime", "onnxruntime")):
        try:
            __import__(module)
        except ImportError as exc:
            raise MissingDependencyError(f"ONNX export needs {pip_name}, which comes with retriever: "
                                         f"pip install {pip_name}") from exc
    from retriever.onnx.cache import CacheError, ModelCache

    def build(folder: Path) -> dict[str, Any]:
        return build_export(_same_model(encoder(), index), folder, images, tolerance)

    try:
        entry, _ = ModelCache(cache_dir).get_or_create(index.model_id, build, tolerance)
    except CacheError as exc:
        return attach(index, None, _refused(index, tolerance, str(exc)))
    return attach(index, entry)


def build_export(model, folder: Path, images: Sequence[Any] | None = None, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """A cache entry's content: `model` (a loaded encoder) exported into `folder`, checked against
    PyTorch and, on the CPU, timed against ONNX Runtime for indexing. -> the record."""
    from retriever.onnx.export import export_onnx

    report = export_onnx(model, folder, images=images, tolerance=tolerance)
    if report.ok and report.image_preprocess is not None and model.device == "cpu":
        report = replace(report, indexing=measure_indexing(model, OnnxEncoder(folder, report.as_setting()), images))
    return report.as_setting()


def attach(index, entry, setting: dict[str, Any] | None = None) -> ExportReport:
    """Record that `index` uses the cache `entry` (or, without one, the refusal `setting`): the
    catalog setting "onnx", INDEX/onnx.json (what the daemon watches), the entry's users."""
    import json
    import shutil

    from retriever.onnx.cache import POINTER

    if entry is not None:
        if getattr(index, "precision", "fp32") == "int8" and entry.record.get("precision") != "int8":
            from retriever.onnx.int8 import int8_entry

            entry = int8_entry(entry, OnnxEncoder)
        setting = entry.record
        entry.add_user(index.folder)
    index.catalog.set_settings({ONNX_SETTING: setting})
    pointer = {k: setting.get(k) for k in ("cache", "cache_folder", "model_id", "ok")}
    from retriever.durable import atomic_write

    atomic_write(Path(index.folder) / POINTER, lambda tmp: tmp.write_text(json.dumps(pointer)))
    shutil.rmtree(Path(index.folder) / ONNX_FOLDER, ignore_errors=True)  # an export from before the cache
    return report_from_setting(setting)


def cached_indexing_encoder(model_id: str, backend: str = "auto", batch_size: int | None = None,
                            cache_dir: str | os.PathLike | None = None, device: str = "auto"):
    """(cache entry, ONNX encoder, why) when the model cache holds an intact export of `model_id`
    that indexes on ONNX Runtime here (measured faster, or backend "onnx"), so that a new index
    of the model needs neither torch nor the model; else None."""
    if backend == "pytorch":
        return None
    from retriever.encoders.base import surely_cpu
    from retriever.onnx.cache import ModelCache

    if not surely_cpu(device):
        return None
    try:
        entry = ModelCache(cache_dir).lookup(model_id)
    except (OSError, ImportError):
        return None
    record = entry.record if entry is not None else {}
    measured = record.get("indexing") or {}
    if not (record.get("ok") and (record.get("towers") or {}).get("image") and record.get("image_preprocess")):
        return None
    if backend == "auto" and measured.get("backend") != "onnx":
        return None
    try:
        encoder = OnnxEncoder(entry.folder, record, batch_size=batch_size, spinning=False)
    except (MissingDependencyError, ImportError, OSError):
        return None
    encoder.start_image_session()
    why = ("ONNX Runtime, as asked (--backend onnx)" if backend == "onnx" else
           f"ONNX Runtime: faster when measured for this model ({measured['onnx_images_per_s']} against "
           f"PyTorch's {measured['pytorch_images_per_s']} images/s), from the model cache")
    return entry, encoder, why


def _same_model(encoder, index):
    if encoder.model_id != index.model_id:
        raise OnnxExportError(f"the encoder is {encoder.model_id}, the index's model is {index.model_id}")
    return encoder


def _refused(index, tolerance: float, reason: str) -> dict[str, Any]:
    import onnxruntime

    return ExportReport(ok=False, reason=reason, model_id=index.model_id, opset=OPSET,
                        onnxruntime=onnxruntime.__version__, torch="", tolerance=tolerance,
                        dim=int(index.dim)).as_setting()


def report_from_setting(setting: dict[str, Any]) -> ExportReport:
    """The ExportReport a record (the catalog setting "onnx") was made from."""
    fields = {k: v for k, v in setting.items() if k in ExportReport.__dataclass_fields__}
    fields["towers"] = {name: TowerReport(**t) for name, t in (setting.get("towers") or {}).items()}
    return ExportReport(**fields)


def measure_indexing(encoder, onnx: OnnxEncoder, images: Sequence[Any] | None = None,
                     batch: int = MEASURE_BATCH) -> dict[str, Any]:
    """Time the image tower on the CPU, PyTorch (`encoder`) against ONNX Runtime (`onnx`), on one
    batch of preprocessed photos (`images`, repeated to `batch`; else the export's check images):
    two warm-up calls each, then calls in the order P O O P O P P O, which cancels a steady drift
    of the machine's speed. -> {"backend": "onnx" | "pytorch", images/s of each, the speed-up, the rule}.
    ONNX Runtime is chosen when it is at least INDEXING_MIN_SPEEDUP times as fast."""
    import time

    if images is None:
        from retriever.onnx.export import check_images

        images = check_images()
    images = list(images)
    pixels = [onnx.preprocess(images[i % len(images)]) for i in range(batch)]
    runners = {"pytorch": encoder.embed_preprocessed, "onnx": onnx.embed_preprocessed}
    seconds = {name: 0.0 for name in runners}
    for name in (*runners, *runners):
        runners[name](pixels)  # warm-up: lazy session creation, first-call allocations, oneDNN's kernels
    for name in ORDER:
        start = time.perf_counter()
        runners[name](pixels)
        seconds[name] += time.perf_counter() - start
    rates = {name: ORDER.count(name) * batch / max(s, 1e-9) for name, s in seconds.items()}
    speedup = rates["onnx"] / rates["pytorch"]
    return {"backend": "onnx" if speedup >= INDEXING_MIN_SPEEDUP else "pytorch",
            "onnx_images_per_s": round(rates["onnx"], 2), "pytorch_images_per_s": round(rates["pytorch"], 2),
            "speedup": round(speedup, 3), "batch": batch, "min_speedup": INDEXING_MIN_SPEEDUP}


def indexing_encoder_for(index, backend: str = "auto", device: str = "auto",
                         batch_size: int | None = None) -> tuple[OnnxEncoder | None, str]:
    """The ONNX encoder to index `index` with, or None for PyTorch; and why, in words.

    backend "pytorch": None. On CUDA: None (PyTorch runs fp16 there). "auto": ONNX Runtime when
    the export measured it faster (ExportReport.indexing). "onnx": ONNX Runtime whenever the
    export has an image tower and a torch-free preprocessing, else OnnxExportError. The CPU is
    recognised without importing torch when the machine has no NVIDIA driver."""
    from retriever.encoders.base import resolve_device, surely_cpu

    if backend not in BACKENDS:
        raise OnnxExportError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "pytorch" and getattr(index, "precision", "fp32") == "int8":
        from retriever.onnx.int8 import PrecisionError

        raise PrecisionError(f"index {index.name!r} holds int8 vectors, which only ONNX Runtime makes: "
                             "drop --backend pytorch")
    if backend == "pytorch":
        return None, "PyTorch, as asked (--backend pytorch)"
    if not surely_cpu(device) and resolve_device(device) != "cpu":
        if backend == "onnx":
            raise OnnxExportError("--backend onnx runs on the CPU only: add --device cpu")
        return None, "PyTorch on CUDA"
    record = valid_record(index)
    usable = record is not None and (record.get("towers") or {}).get("image") and record.get("image_preprocess")
    if usable and getattr(index, "precision", "fp32") != (record.get("precision") or "fp32"):
        usable = False
    if not usable and getattr(index, "precision", "fp32") == "int8":
        from retriever.onnx.int8 import PrecisionError

        raise PrecisionError(f"index {index.name!r} holds int8 vectors and its int8 image tower is missing or "
                             "damaged: run `retriever optimize --onnx` to make it again")
    if not usable:
        why = "no valid ONNX export with an image tower and a torch-free preprocessing"
        if backend == "onnx":
            raise OnnxExportError(f"--backend onnx: {why} (run `retriever optimize --onnx`)")
        return None, f"PyTorch: {why}"
    measured = record.get("indexing") or {}
    if backend == "auto" and measured.get("backend") != "onnx":
        if not measured:
            return None, "PyTorch: ONNX Runtime not measured for this model (`retriever optimize --onnx` measures it)"
        return None, (f"PyTorch: faster at export ({measured['pytorch_images_per_s']} against ONNX Runtime's "
                      f"{measured['onnx_images_per_s']} images/s)")
    try:
        # no spinning: between batches the cores belong to the decode workers
        encoder = OnnxEncoder(export_folder(index, record), record, batch_size=batch_size, spinning=False)
        encoder.start_image_session()
    except (MissingDependencyError, ImportError, OSError) as exc:
        if backend == "onnx":
            raise OnnxExportError(f"--backend onnx: {exc}") from exc
        return None, f"PyTorch: ONNX Runtime cannot load ({exc})"
    if backend == "onnx":
        return encoder, "ONNX Runtime, as asked (--backend onnx)"
    return encoder, (f"ONNX Runtime: faster at export ({measured['onnx_images_per_s']} against PyTorch's "
                     f"{measured['pytorch_images_per_s']} images/s)")
