"""ONNX Runtime sessions on the CPU: onnxruntime imported on first need (a clear error when it
is missing), one quiet session per graph with every optimisation on."""

from __future__ import annotations

import os

from retriever.errors import MissingDependencyError


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("ONNX Runtime is not installed (it comes with retriever): pip install onnxruntime") from exc
    return onnxruntime


def make_session(path: str | os.PathLike, threads: int | None = None, one_shot: bool = False,
                 spinning: bool = True):
    """An ONNX Runtime CPU session, quiet, with every graph optimisation on. threads: intra-op
    threads (None: onnxruntime's default, one per physical core). one_shot: for a process that
    runs the model once or twice (a CLI search): the weights are not repacked for the matrix
    kernels, which halves the session's start (ViT-B-32 text: 0.14 s of CPU, not 0.28) for
    a slower run (+20-30 ms). spinning False: idle intra-op threads sleep instead of spinning,
    leaving the cores to other work between runs (indexing: the decode workers)."""
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: a library does not print; failures raise anyway
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if one_shot:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
