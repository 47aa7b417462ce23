"""What a CUDA GPU answered, in words, and the choices that depend on the GPU.

- A failure named for what it is (`cuda_failure`): out of memory, a torch built for another CUDA
  (or for none), no kernel for this GPU's architecture. Without this a load that ran out of
  memory reads as missing weights, and a run as a traceback.
- Out of memory while encoding (`is_out_of_memory`): the batch is halved and tried again (see
  encoders.base.Encoder and vlm.model.VLM, which remember the smaller batch for the run).
- Half precision (`half_dtype`): bfloat16 where the chosen GPU runs it natively (compute
  capability 8.0 and up: A100, RTX 30xx, H100), float16 elsewhere. torch >= 2.3 counts bf16
  that is only emulated (T4, V100: slow) as supported unless asked not to.

torch is imported inside functions only (and looked up in sys.modules where a failure is being
classified: an error cannot be a torch error if torch was never imported).
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from retriever.errors import DeviceError, DeviceOutOfMemoryError, RetrieverError

_CUDA_DEVICE = re.compile(r"^cuda(:\d+)?$")


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (torch.cuda.OutOfMemoryError, or a CUDA error saying so)."""
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and "out of memory" in text and "CUDA" in text


def cuda_failure(exc: BaseException) -> str | None:
    """What a CUDA failure means, in words, with what to do; None when `exc` is no CUDA failure."""
    if isinstance(exc, RetrieverError):
        return None
    text = str(exc)
    first = _first_line(exc)
    if is_out_of_memory(exc):
        return f"out of memory on the GPU ({first}); free GPU memory (nvidia-smi lists who holds it), or use --device cpu"
    if "no kernel image is available" in text:
        return ("no kernel for this GPU: this torch build was not compiled for its architecture "
                f"({_build()}); install a torch build that supports it, or use --device cpu")
    if "not compiled with CUDA" in text:
        return "this torch build has no CUDA (a CPU-only wheel): install a CUDA build of torch, or use --device cpu"
    lowered = text.lower()
    if "driver" in lowered and ("too old" in lowered or "insufficient" in lowered):
        return (f"wrong CUDA build: the NVIDIA driver is older than the CUDA this torch was built for ({_build()}); "
                "update the driver or install a torch build for an older CUDA, or use --device cpu")
    if "CUDA error" in text or "CUDA driver" in text or "cuDNN error" in text or "CUBLAS_STATUS" in text:
        return f"a CUDA error ({first}); --device cpu runs without the GPU"
    return None


def raise_if_cuda_failure(exc: BaseException, doing: str) -> None:
    """DeviceError("{doing}: {what it is}") when `exc` is a CUDA failure (DeviceOutOfMemoryError
    for out of memory); returns otherwise."""
    meaning = cuda_failure(exc)
    if meaning is not None:
        error = DeviceOutOfMemoryError if is_out_of_memory(exc) else DeviceError
        raise error(f"{doing}: {meaning}") from exc


@contextmanager
def cuda_errors_named(doing: str) -> Iterator[None]:
    """Inside: a CUDA failure becomes a DeviceError (raise_if_cuda_failure); other errors pass."""
    try:
        yield
    except Exception as exc:
        raise_if_cuda_failure(exc, doing)
        raise


def out_of_memory_at_one(what: str, exc: BaseException) -> DeviceOutOfMemoryError:
    """The error when even a batch of one does not fit."""
    return DeviceOutOfMemoryError(f"the GPU ran out of memory {what} even one at a time ({_first_line(exc)}); "
                                  "free GPU memory, or use --device cpu")


def release_cached_memory() -> None:
    """After an out-of-memory error: the failed attempt's blocks back to the GPU, so that the
    smaller batch finds them (a no-op where CUDA was never initialised)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def check_cuda_device(device: str) -> None:
    """'cuda' or 'cuda:N' naming a GPU that exists. Raises DeviceError otherwise (torch sees no
    GPU, N too large, a malformed name)."""
    import torch

    if not _CUDA_DEVICE.match(device):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device} was asked for, but torch sees no CUDA GPU ({_build()}); "
                          "use --device cpu or auto")
    index = torch.device(device).index
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise DeviceError(f"--device {device}: this machine has {count} CUDA GPU{'s' if count != 1 else ''} "
                          f"(cuda:0 to cuda:{count - 1})")


def half_dtype(device: str) -> Any:
    """torch.bfloat16 where the GPU `device` names ('cuda': the current one, 'cuda:N': that one)
    runs bf16 natively, else torch.float16."""
    import torch

    index = torch.device(device).index
    if index is None:
        index = torch.cuda.current_device()
    with torch.cuda.device(index):  # is_bf16_supported asks about the current device
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3: emulation was never counted
            native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16


def _build() -> str:
    torch = sys.modules.get("torch")
    version = getattr(getattr(torch, "version", None), "cuda", None)
    return f"torch {getattr(torch, '__version__', '?')}, " + (f"CUDA {version}" if version else "built without CUDA")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
