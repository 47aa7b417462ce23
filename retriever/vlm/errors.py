"""Typed errors of the VLM features. Each message is one line, ready for the CLI to print."""

from __future__ import annotations

from retriever.errors import RetrieverError, WeightsNotFoundError


class VLMError(RetrieverError):
    """Something about the vision-language model or its use went wrong."""


class VLMNotFoundError(VLMError, WeightsNotFoundError):
    """The model's weights are neither in a local folder, nor in the local Hugging Face cache,
    nor downloadable (the hub is unreachable)."""


class VLMLoadError(VLMError):
    """A folder was found but transformers cannot load it as an image-text-to-text model."""


class NoGroundingError(VLMError):
    """The model's family writes no boxes (grounding needs Qwen2-VL, PaliGemma, Florence-2, ...)."""
