"""The one interface every encoder implements.

An encoder maps images and texts into one space: float32 arrays of shape (n, dim), each row
L2-normalised, so that inner product is cosine similarity. Batching is written once, here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


# The offline encoder's model id (retriever.encoders.offline), known without importing torch
OFFLINE_MODEL_ID = "offline/conse-effnetlite0-minilm/v1"


@dataclass(frozen=True)
class ModelSpec:
    """What a user asked for; stored in the catalog so later commands rebuild the same encoder."""

    name: str  # "offline", an open_clip architecture ("ViT-B-32"), "hf-hub:org/repo", "local-dir:/p", or a config .json
    pretrained: str | None = None  # open_clip tag ("laion2b_s34b_b79k") or a local weights file; None for offline
    device: str = "auto"  # "auto" | "cpu" | "cuda" (auto = CUDA when available); not part of the index's identity
    batch_size: int | None = None  # images per forward pass (None: 32 on CPU, 256 on CUDA); results do not depend on it


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (rows of zeros stay zero), as contiguous float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def batched(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Encoder(ABC):
    """Contrastive image/text encoder.

    Subclasses set `model_id` (identifies architecture + weights: two encoders with the same id
    give the same vectors), `dim`, `input_size`, and implement `preprocessor` and the two
    `_embed_*` methods on one batch.
    """

    model_id: str
    dim: int
    input_size: int  # the short side images are resized to first; decoding may stop at a multiple of it
    batch_size: int = 32
    device: str = "cpu"
    _fits: int | None = None  # the largest batch known to fit in GPU memory (after an out-of-memory error)
    _first_batch: int | None = None  # the image batch before out-of-memory errors made it smaller

    @abstractmethod
    def preprocessor(self) -> Callable[[Image.Image], np.ndarray]:
        """A picklable callable: one decoded RGB image -> float32 array (C, H, W), the model's
        input. It holds no model, so decode worker processes can run it."""

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.preprocessor()(image)

    @abstractmethod
    def _embed_preprocessed_batch(self, batch: Sequence[Any]) -> np.ndarray:
        """One batch of preprocessed images -> (len(batch), dim) float32, not yet normalised."""

    @abstractmethod
    def _embed_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        """One batch of texts -> (len(texts), dim) float32, not yet normalised."""

    def embed_preprocessed(self, items: Sequence[Any]) -> np.ndarray:
        """Preprocessed images -> (n, dim) float32, L2-normalised."""
        return self._run_batched(items, self._embed_preprocessed_batch)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Decoded RGB images -> (n, dim) float32, L2-normalised."""
        return self.embed_preprocessed([self.preprocess(im) for im in images])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim) float32, L2-normalised, in the same space as the images. Texts go in
        chunks of at least TEXT_BATCH (a label vocabulary is hundreds of short texts: per-call
        overhead, not memory, is their cost; 384 labels took 9.8 s at 32 a call, 3.4 s at 128)."""
        return self._run_batched(list(texts), self._embed_text_batch, max(self.batch_size, TEXT_BATCH))

    def _run_batched(self, items: Sequence[Any], fn, size: int | None = None) -> np.ndarray:
        """fn over batches of `size` (default: the batch size). When the GPU runs out of memory,
        the batch is halved and the same items tried again, down to one; the smaller image batch
        is kept for the rest of the encoder's life (a run), and said in `batch_note`."""
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        step = min(size or self.batch_size, self._fits or len(items))
        parts, start = [], 0
        while start < len(items):
            chunk = items[start : start + step]
            try:
                parts.append(np.asarray(fn(chunk), dtype=np.float32))
            except Exception as exc:
                from retriever.encoders import cuda

                if not cuda.is_out_of_memory(exc):
                    cuda.raise_if_cuda_failure(exc, f"encoding on {self.device} failed")  # said for what it is
                    raise
                cuda.release_cached_memory()
                if len(chunk) == 1:
                    raise cuda.out_of_memory_at_one("encoding", exc) from exc
                step = len(chunk) // 2
                self._fits = step
                if size is None and step < self.batch_size:  # images: the run's batch from now on
                    self._first_batch = self._first_batch or self.batch_size
                    self.batch_size = step
                continue
            start += len(chunk)
        return l2_normalize(np.concatenate(parts, axis=0))

    def move_to(self, device: str) -> None:
        """The model onto `device` ('cpu', 'cuda', 'cuda:N'), in place. Encoders whose model
        cannot move (ONNX Runtime's, on the CPU) stay where they are."""

    @property
    def batch_note(self) -> str | None:
        """One line when out-of-memory errors made the image batch smaller, else None."""
        if not self._first_batch:
            return None
        return (f"the GPU ran out of memory at batch {self._first_batch}: "
                f"encoded {self.batch_size} images per batch from then on")


TEXT_BATCH = 256  # texts encoded per call, at least (see Encoder.embed_texts)
CPU_BATCH, CUDA_BATCH = 32, 256  # CUDA: large enough to keep a GPU busy with ViT-B-sized models


def default_batch_size(device: str) -> int:
    return CUDA_BATCH if device.startswith("cuda") else CPU_BATCH


def to_device(batch: Sequence[Any], device: str):
    """Preprocessed arrays -> one float32 tensor on `device`. A plain copy: pinning the batch
    first would be one more blocking copy, and every batch ends in a blocking copy of its
    vectors back anyway, so nothing would overlap."""
    import torch

    tensor = torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) for x in batch]))
    return tensor.to(device) if device != "cpu" else tensor


# How `auto` tells, without importing torch (2-3 s), that there is no GPU: none of the files an
# NVIDIA driver makes exists. Linux (/dev/nvidia*, /proc/driver/nvidia), WSL2 (/dev/dxg: the GPU
# of the Windows host) and Jetson boards (/dev/nvhost-*, /etc/nv_tegra_release). Where one exists,
# torch decides; where a GPU is missed, --device cuda (or cuda:N) makes torch look.
NVIDIA_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/dxg",
                       "/dev/nvhost-ctrl-gpu", "/dev/nvhost-gpu", "/etc/nv_tegra_release")


DEVICE_ENV = "RETRIEVER_DEVICE"  # what `auto` means when set: cpu, cuda or cuda:N


def auto_device(device: str) -> str:
    """`device`, with 'auto' replaced by $RETRIEVER_DEVICE when that is set (e.g. cpu: never a
    GPU, for a shared GPU machine or a test suite)."""
    import os

    if device == "auto":
        chosen = os.environ.get(DEVICE_ENV, "").strip().lower()
        if chosen and chosen != "auto":
            return chosen
    return device


def surely_cpu(device: str) -> bool:
    """True when `device` can only mean the CPU: 'cpu', or 'auto' where $RETRIEVER_DEVICE says cpu
    or on a machine with none of the NVIDIA_DEVICE_FILES, decided without importing torch. False:
    ask torch."""
    import os

    device = auto_device(device)
    if device == "cpu":
        return True
    return device == "auto" and not any(os.path.exists(p) for p in NVIDIA_DEVICE_FILES)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'. 'cuda' or 'cuda:N' without that GPU is
    a DeviceError."""
    device = auto_device(device)
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        from retriever.encoders.cuda import check_cuda_device

        check_cuda_device(device)
    return device
