"""The vision-language models retriever knows by name: published sizes and image-token counts,
and the default per device. Any other image-text-to-text model that transformers loads with
`AutoModelForImageTextToText` and whose processor has a chat template works too: pass its hub id
or its folder to `--vlm`.

The figures below are published ones (model cards, papers, the models' processor configs), not
measurements; `benchmarks/vlm.py` prints them as a table beside what it measures. "Image tokens"
is the count per photo with retriever's bounds (see `retriever.vlm.model.bound_image_tokens`):
no tile splitting for SmolVLM, at most QWEN_MAX_IMAGE_TOKENS for Qwen2-VL; the model's own default,
which retriever does not use, is given as `default_image_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Qwen2-VL / Qwen2.5-VL: one image token per (patch x merge)^2 pixels (28x28 for the released
# models); retriever sets the pixel budget so that a photo is at most this many tokens
# (448 x 448 = 200,704 pixels for the released models).
QWEN_MAX_IMAGE_TOKENS = 256


@dataclass(frozen=True)
class KnownVLM:
    id: str  # Hugging Face hub id
    family: str  # transformers model_type
    params: str  # total parameters, as published
    image_tokens: str  # per photo, as retriever runs it
    default_image_tokens: str  # per photo with the model's own processor defaults
    input: str  # what one photo becomes before the vision tower
    source: str  # where the figures come from


KNOWN_VLMS: tuple[KnownVLM, ...] = (
    KnownVLM(
        "HuggingFaceTB/SmolVLM-256M-Instruct", "idefics3", "256M", "64", "up to 1088 (4x4 tiles of 512 px + global)",
        "512x512 (SigLIP-B/16, pixel shuffle 4x)",
        "huggingface.co/blog/smolervlm; processor_config.json image_seq_len=64, size 2048 / tile 512",
    ),
    KnownVLM(
        "HuggingFaceTB/SmolVLM-500M-Instruct", "idefics3", "507M", "64", "up to 1088 (4x4 tiles of 512 px + global)",
        "512x512 (SigLIP-B/16, pixel shuffle 4x)",
        "huggingface.co/blog/smolervlm; processor_config.json image_seq_len=64",
    ),
    KnownVLM(
        "HuggingFaceTB/SmolVLM-Instruct", "idefics3", "2.25B", "81", "up to 1377 (4x4 tiles of 384 px + global)",
        "384x384 (SigLIP-SO400M/14, pixel shuffle 3x)",
        "huggingface.co/blog/smolvlm (81 tokens per 384x384 patch); preprocessor_config.json size 1536 / tile 384",
    ),
    KnownVLM(
        "llava-hf/llava-1.5-7b-hf", "llava", "7.06B", "576", "576",
        "336x336 centre crop (CLIP ViT-L/14-336)",
        "Liu et al. 2023, Improved Baselines with Visual Instruction Tuning; llava-hf model card",
    ),
    KnownVLM(
        "Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", "2.21B", "at most 256 (448x448 px budget)",
        "4 to 1280 (one per 28x28 px, max_pixels 1280*28*28 in the processor config)",
        "dynamic resolution, aspect kept (ViT/14, 2x2 merge)",
        "Wang et al. 2024, Qwen2-VL (arXiv:2409.12191); Qwen2-VL-2B-Instruct model card",
    ),
)

# Defaults: the smallest SmolVLM where every forward pass is slow (CPU), a larger one on CUDA.
DEFAULT_CPU = "HuggingFaceTB/SmolVLM-256M-Instruct"
DEFAULT_CUDA = "HuggingFaceTB/SmolVLM-Instruct"


# `retriever locate` without --vlm: Florence-2-base (0.23B, Microsoft's Florence-2 in transformers'
# own classes), made for grounding and quick on a CPU; the chat defaults above write no boxes.
DEFAULT_LOCATE = "florence-community/Florence-2-base"


def default_vlm(device: str) -> str:
    """The hub id used when no --vlm is given, for a resolved device ("cpu", "cuda", "cuda:1")."""
    return DEFAULT_CUDA if device.startswith("cuda") else DEFAULT_CPU


def known(model_id: str) -> KnownVLM | None:
    return next((m for m in KNOWN_VLMS if m.id == model_id), None)
