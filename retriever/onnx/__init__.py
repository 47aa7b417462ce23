"""The towers of an index's encoder on ONNX Runtime: queries with no torch import.

    INDEX/onnx/text.onnx      token ids -> unit text embedding (dynamic batch axis; dynamic
                              length too for MiniLM and for CLIP-style causal towers, so a
                              short query runs its own few positions, not 77)
    INDEX/onnx/image.onnx     preprocessed pixels -> unit image embedding (dynamic batch axis)
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..encoders.base import Encoder
from ..errors import MissingDependencyError, RetrieverError

__all__ = ["OPSET", "TOLERANCE", "ONNX_SETTING", "ExportReport", "TowerReport", "OnnxExportError",
           "OnnxEncoder", "export_index", "onnx_encoder_for", "valid_record", "make_session"]

OPSET = 17  # LayerNormalization is a single op from 17; every onnxruntime >= 1.14 runs it
TOLERANCE = 1e-4  # max abs difference of unit embeddings, ONNX Runtime vs PyTorch
ONNX_SETTING = "onnx"  # catalog setting: the last export's ExportReport.as_setting()
ONNX_FOLDER = "onnx"
TEXT_FILE, IMAGE_FILE = "text.onnx", "image.onnx"


class OnnxExportError(RetrieverError):
    """A model that cannot be exported to ONNX, or an export that cannot be used."""


@dataclass(frozen=True)
class TowerReport:
    file: str
    max_abs_diff: float  # against PyTorch, unit embeddings, on the fixed check batch
    seconds: float  # export + check


@dataclass(frozen=True)
class ExportReport:
    ok: bool
    reason: str | None  # why it was refused (ok False)
    model_id: str
    opset: int
    onnxruntime: str
    torch: str
    tolerance: float
    dim: int
    towers: dict[str, TowerReport] = field(default_factory=dict)  # "text", "image"
    tokenizer: dict[str, Any] | None = None  # kind, file, context_length | max_length
    # the PIL + numpy twin of the encoder's image preprocessing (preprocess.py) and its max abs
    # difference on the check images; None: no twin, image queries stay on PyTorch
    image_preprocess: dict[str, Any] | None = None

    def as_setting(self) -> dict[str, Any]:
        return asdict(self)


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("ONNX Runtime is not installed: pip install 'retriever[onnx]'") from exc
    return onnxruntime


def make_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session, quiet, with every graph optimisation on. threads: intra-op
    threads (None: onnxruntime's default, one per physical core)."""
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: a library does not print; failures raise anyway
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxEncoder(Encoder):
    """An index's encoder on ONNX Runtime, with a torch-free tokenizer: `embed_texts` always;
    `embed_images` when the export recorded a PIL + numpy twin of the image preprocessing
    (`embeds_images`), else images go through the PyTorch encoder."""

    device = "cpu"

    def __init__(self, folder: str | os.PathLike, record: dict[str, Any], threads: int | None = None):
        from .preprocess import preprocessor_from
        from .text_tokens import ClipBpe, WordPiece

        self.folder = Path(folder)
        tok = record["tokenizer"]
        if tok["kind"] == "clip-bpe":
            self.tokenizer = ClipBpe(self.folder / tok["file"], int(tok["context_length"]), bool(tok.get("trim")))
        elif tok["kind"] == "wordpiece":
            self.tokenizer = WordPiece(self.folder / tok["file"], int(tok["max_length"]))
        else:
            raise OnnxExportError(f"unknown tokenizer kind {tok['kind']!r} in the ONNX record")
        self._threads = threads
        self._text_session = make_session(self.folder / record["towers"]["text"]["file"], threads)
        self._image_session = None
        self._image_file = (record["towers"].get("image") or {}).get("file")
        twin = record.get("image_preprocess")
        self._preprocess = preprocessor_from(twin) if twin and self._image_file else None
        self.embeds_images = self._preprocess is not None
        self.input_size = int(twin["size"]) if self.embeds_images else 0
        self.model_id = record["model_id"]
        self.dim = int(record["dim"])
        self.batch_size = 32

    def preprocessor(self):
        if self._preprocess is None:
            raise OnnxExportError("this ONNX export has no torch-free image preprocessing: use the PyTorch encoder")
        return self._preprocess

    def _embed_preprocessed_batch(self, batch: Sequence[Any]) -> np.ndarray:
        if self._image_session is None:
            if self._image_file is None:
                raise OnnxExportError("this ONNX export has no image tower")
            self._image_session = make_session(self.folder / self._image_file, self._threads)
        pixels = np.stack([np.asarray(x, dtype=np.float32) for x in batch])
        return self._image_session.run(["embedding"], {"pixels": pixels})[0]

    def _embed_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self._text_session.run(["embedding"], self.tokenizer(list(texts)))[0]


def valid_record(index) -> dict[str, Any] | None:
    """The index's ONNX record when it is a successful export of the index's own model whose
    files are all present; else None."""
    record = index.catalog.get_setting(ONNX_SETTING)
    if not record or not record.get("ok") or record.get("model_id") != index.model_id:
        return None
    folder = Path(index.folder) / ONNX_FOLDER
    files = [t["file"] for t in record.get("towers", {}).values()] + [(record.get("tokenizer") or {}).get("file", "")]
    if "text" not in record.get("towers", {}) or not all(f and (folder / f).is_file() for f in files):
        return None
    return record


def onnx_encoder_for(index, threads: int | None = None) -> OnnxEncoder | None:
    """The ONNX encoder of `index` when it holds a valid export and onnxruntime (and, for MiniLM,
    tokenizers) is installed; else None (the caller uses PyTorch)."""
    record = valid_record(index)
    if record is None:
        return None
    try:
        return OnnxEncoder(Path(index.folder) / ONNX_FOLDER, record, threads)
    except (MissingDependencyError, ImportError, OSError):
        return None


def export_index(index, encoder, images: Sequence[Any] | None = None, tolerance: float = TOLERANCE) -> ExportReport:
    """Export `encoder` (the index's own) into INDEX/onnx and record the outcome in the catalog
    (setting "onnx"). A refused export removes any earlier one, so search falls back to PyTorch.
    Raises MissingDependencyError when onnx/onnxruntime are not installed (nothing recorded)."""
    if encoder.model_id != index.model_id:
        raise OnnxExportError(f"the encoder is {encoder.model_id}, the index's model is {index.model_id}")
    for module, pip_name in (("onnx", "onnx"), ("onnxruntime", "onnxruntime")):
        try:
            __import__(module)
        except ImportError as exc:
            raise MissingDependencyError(f"ONNX export needs {pip_name}: pip install 'retriever[onnx]'") from exc
    from .export import export_onnx

    folder = Path(index.folder) / ONNX_FOLDER
    report = export_onnx(encoder, folder, images=images, tolerance=tolerance)
    if not report.ok:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    index.catalog.set_settings({ONNX_SETTING: report.as_setting()})
    return report
