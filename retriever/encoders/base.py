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
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [np.asarray(fn(chunk), dtype=np.float32) for chunk in batched(items, size or self.batch_size)]
        return l2_normalize(np.concatenate(parts, axis=0))


TEXT_BATCH = 256  # texts encoded per call, at least (see Encoder.embed_texts)
CPU_BATCH, CUDA_BATCH = 32, 256  # CUDA: large enough to keep a GPU busy with ViT-B-sized models


def default_batch_size(device: str) -> int:
    return CUDA_BATCH if device.startswith("cuda") else CPU_BATCH


def to_device(batch: Sequence[Any], device: str):
    """Preprocessed arrays -> one float32 tensor on `device`; on CUDA through pinned memory with
    a non-blocking copy, so the transfer overlaps the work already queued on the GPU."""
    import torch

    tensor = torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) for x in batch]))
    if device.startswith("cuda"):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


NVIDIA_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version")


def surely_cpu(device: str) -> bool:
    """True when `device` can only mean the CPU: 'cpu', or 'auto' on a machine with no NVIDIA
    driver (no device files), decided without importing torch (2-3 s). False: ask torch."""
    import os

    if device == "cpu":
        return True
    return device == "auto" and not any(os.path.exists(p) for p in NVIDIA_DEVICE_FILES)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'. 'cuda' without a GPU is an error."""
    import torch

    from retriever.errors import RetrieverError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RetrieverError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise RetrieverError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device
