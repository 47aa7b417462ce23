"""Encoder registry: a model name -> an Encoder.

"offline" is the encoder built from pip-shipped weights (see offline.py); any other name is an
open_clip architecture (`open_clip.list_models()`), an `hf-hub:` / `local-dir:` id, or the path of
an open_clip model-config JSON. Backends are imported only when used: importing this package
costs nothing.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from retriever.errors import UnknownModelError
from retriever.encoders.base import OFFLINE_MODEL_ID, Encoder, ModelSpec, l2_normalize
from retriever.encoders.hub import HUB_PROBE_SECONDS, hub_reachable  # noqa: F401  (re-exported)

__all__ = [
    "Encoder",
    "ModelSpec",
    "l2_normalize",
    "create_encoder",
    "default_model_spec",
    "list_available_models",
    "OFFLINE",
    "DEFAULT_OPEN_CLIP",
]

OFFLINE = "offline"

# The default model when its weights are cached or the hub answers. Its hub repo is written here
# so the decision does not import open_clip (6-7 s); tests check it matches open_clip's table.
DEFAULT_OPEN_CLIP = ModelSpec(name="ViT-B-32", pretrained="laion2b_s34b_b79k")
DEFAULT_OPEN_CLIP_HUB_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
DEFAULT_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def create_encoder(spec: ModelSpec) -> Encoder:
    """Build the encoder a spec names. Raises UnknownModelError / WeightsNotFoundError."""
    if spec.name == OFFLINE:
        if spec.pretrained:
            raise UnknownModelError("the offline encoder takes no --pretrained (its weights ship with pip packages)")
        from retriever.encoders.offline import OfflineEncoder

        return OfflineEncoder(device=spec.device, batch_size=spec.batch_size)
    from retriever.encoders.openclip import OpenClipEncoder

    return OpenClipEncoder(spec)


def model_id_of(spec: ModelSpec) -> str | None:
    """The model id `create_encoder(spec)` gives, worked out without loading torch or the model;
    None where only loading can tell (hf-hub:, local-dir:, no weights named). A wrong name or
    file is not caught here: it gives an id no cache entry has, and the model is then loaded."""
    if spec.name == OFFLINE:
        return None if spec.pretrained else OFFLINE_MODEL_ID
    from retriever.encoders.openclip import _looks_like_path, file_digest

    name, pretrained = spec.name, spec.pretrained
    if name.startswith(("hf-hub:", "local-dir:")) or not pretrained:
        return None
    if name.endswith(".json"):
        name = Path(name).stem
    path = Path(pretrained).expanduser()
    if path.is_file():
        return f"open_clip/{name}/file-{file_digest(path)}"
    return None if _looks_like_path(pretrained) else f"open_clip/{name}/{pretrained}"


def _default_weights_cached() -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on it
        return False
    for filename in DEFAULT_OPEN_CLIP_FILES:
        found = try_to_load_from_cache(DEFAULT_OPEN_CLIP_HUB_REPO, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return True
    return False


def default_model_spec(device: str = "auto", batch_size: int | None = None) -> tuple[ModelSpec, str | None]:
    """The model for a new index when the user names none, and a note saying why (or None).

    ViT-B-32 / laion2b_s34b_b79k when its weights are cached or the hub answers within a few
    seconds; otherwise the offline encoder.
    """
    default = replace(DEFAULT_OPEN_CLIP, device=device, batch_size=batch_size)
    if _default_weights_cached():
        return default, None
    if hub_reachable():
        return default, None
    note = (
        f"{DEFAULT_OPEN_CLIP.name} weights are not cached and the model hub is unreachable: "
        "using the offline encoder (choose another with --model ARCH --pretrained TAG_OR_FILE)"
    )
    return replace(default, name=OFFLINE, pretrained=None), note


def list_available_models() -> list[dict[str, object]]:
    """Every model name with its pretrained tags (imports open_clip: slow, for `retriever models`)."""
    rows: list[dict[str, object]] = [
        {"name": OFFLINE, "pretrained": [], "note": "EfficientNet-Lite0 + MiniLM (ConSE); needs no network"}
    ]
    import open_clip

    tags: dict[str, list[str]] = {}
    for arch, tag in open_clip.list_pretrained():
        tags.setdefault(arch, []).append(tag)
    for arch in open_clip.list_models():
        rows.append({"name": arch, "pretrained": tags.get(arch, []), "note": ""})
    return rows


def is_config_path(name: str) -> bool:
    return name.endswith(".json") and Path(name).expanduser().is_file()
