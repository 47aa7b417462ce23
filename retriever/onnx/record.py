"""What an ONNX export records: its files and opset, the tolerance its towers are checked to
against PyTorch, the report of each tower and of the whole export (stored as the catalog setting
"onnx"), and the error for an export that is refused or cannot be used. Shared by the export
(retriever.onnx.export) and by the encoder that reads it (retriever.onnx)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from retriever.errors import RetrieverError

OPSET = 17  # LayerNormalization is a single op from 17; every onnxruntime >= 1.14 runs it
TOLERANCE = 1e-4  # max abs difference of unit embeddings, ONNX Runtime vs PyTorch
# The form of the exported graphs (part of the model cache's key): 2 writes a ViT's attention in
# plain ops with one transpose for q, k and v (retriever.onnx.export._block), 2-5 % faster on
# ONNX Runtime's CPU provider than nn.MultiheadAttention's traced graph (8 % of it transposes).
# 3 adds the offline encoder's dense regions tower (regions.onnx).
GRAPH = 3
TEXT_FILE, IMAGE_FILE, REGIONS_FILE = "text.onnx", "image.onnx", "regions.onnx"


class OnnxExportError(RetrieverError):
    """A model that cannot be exported to ONNX, or an export that cannot be used."""


@dataclass(frozen=True)
class TowerReport:
    file: str
    max_abs_diff: float  # against PyTorch, unit embeddings, on the fixed check batch
    seconds: float  # export + check
    data: str | None = None  # the weights' file beside the graph (ONNX external data)


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
    towers: dict[str, TowerReport] = field(default_factory=dict)  # "text", "image"; "regions" (dense region pass)
    tokenizer: dict[str, Any] | None = None  # kind, file, context_length | max_length
    # the PIL + numpy twin of the encoder's image preprocessing (preprocess.py) and its max abs
    # difference on the check images; None: no twin, image queries stay on PyTorch
    image_preprocess: dict[str, Any] | None = None
    # which backend indexing uses on the CPU, measured at export (see measure_indexing); None:
    # not measured (no image twin, or the export ran on CUDA): indexing stays on PyTorch
    indexing: dict[str, Any] | None = None

    def as_setting(self) -> dict[str, Any]:
        return asdict(self)
