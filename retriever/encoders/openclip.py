"""open_clip backend: any architecture of `open_clip.list_models()` with a pretrained tag, a local
weights file, an `hf-hub:` id, a `local-dir:` folder, or a model-config JSON plus a weights file.

Model creation goes through `open_clip.create_model_and_transforms(name, pretrained=...)` and the
image preprocessing is exactly open_clip's validation transform for that model.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retriever.errors import UnknownModelError, WeightsNotFoundError
from retriever.encoders.base import Encoder, ModelSpec, default_batch_size, resolve_device, to_device
from retriever.encoders.cuda import cuda_errors_named, half_dtype, raise_if_cuda_failure

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def file_digest(path: Path) -> str:
    """The weights file's content hash, which names the model (remembered: retriever.digests)."""
    from retriever.digests import file_digest as remembered

    return remembered(path)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(".") or value.lower().endswith(WEIGHT_SUFFIXES)


class OpenClipEncoder(Encoder):
    def __init__(self, spec: ModelSpec):
        import torch  # noqa: F401  (fail early and clearly if torch is missing)
        import open_clip

        self.spec = spec
        arch, pretrained, self.model_id = self._resolve(open_clip, spec)
        cached = pretrained is not None and pretrained in open_clip.list_pretrained_tags_by_model(arch) \
            and _check_tag_reachable(open_clip, arch, pretrained)
        self.device = resolve_device(spec.device)
        self.batch_size = spec.batch_size or default_batch_size(self.device)
        self._half = half_dtype(self.device) if self.device.startswith("cuda") else None
        loading = f"could not load {spec.name} on {self.device}"
        try:
            with _hub_offline(cached):
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch, pretrained=pretrained, device=self.device
                )
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint fails in many ways (pickle, safetensors, shapes)
            raise_if_cuda_failure(exc, loading)  # the GPU's failure is not the weights' (out of memory, no kernel)
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsNotFoundError(
                f"could not load {spec.name} weights {pretrained or ''}: {first_line[:300]}"
            ) from exc
        model.eval()
        self.model = model
        self._preprocessor = TransformToArray(preprocess)
        size = model.visual.image_size
        self.input_size = int(min(size) if isinstance(size, (tuple, list)) else size)
        self.tokenizer = open_clip.get_tokenizer(arch)
        with cuda_errors_named(loading):  # the first forward pass: where a missing kernel shows
            self.dim = int(self._embed_text_batch(["a photo"]).shape[1])

    @staticmethod
    def _resolve(open_clip, spec: ModelSpec) -> tuple[str, str | None, str]:
        """-> (name for open_clip, pretrained for open_clip, model id)."""
        name, pretrained = spec.name, spec.pretrained
        if name.startswith("hf-hub:"):
            return name, None, f"open_clip/{name}"
        if name.startswith("local-dir:"):
            folder = Path(name[len("local-dir:") :]).expanduser().resolve()
            if not (folder / "open_clip_config.json").is_file():
                raise WeightsNotFoundError(f"no open_clip_config.json in {folder}")
            weights = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
            tag = file_digest(weights[0]) if weights else "no-weights"
            return f"local-dir:{folder}", None, f"open_clip/local-dir/{folder.name}/{tag}"
        if name.endswith(".json"):
            config = Path(name).expanduser()
            if not config.is_file():
                raise UnknownModelError(f"model config file not found: {config}")
            open_clip.add_model_config(str(config))
            name = config.stem
        if name not in open_clip.list_models():
            close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UnknownModelError(
                f"unknown model {name!r}{hint}; `retriever models` lists them, or use --model offline"
            )
        tags = open_clip.list_pretrained_tags_by_model(name)
        if not pretrained:
            offer = f" tags for {name}: {', '.join(tags)}" if tags else ""
            raise WeightsNotFoundError(
                f"{name} needs --pretrained TAG or a weights file;{offer or ' it has no published tags'}"
            )
        if pretrained in tags:
            return name, pretrained, f"open_clip/{name}/{pretrained}"
        path = Path(pretrained).expanduser()
        if path.is_file():
            return name, str(path.resolve()), f"open_clip/{name}/file-{file_digest(path)}"
        if _looks_like_path(pretrained):
            raise WeightsNotFoundError(f"weights file not found: {pretrained}")
        offer = f"; tags for {name}: {', '.join(tags)}" if tags else ""
        raise WeightsNotFoundError(f"{pretrained!r} is neither a pretrained tag of {name} nor a file{offer}")

    def preprocessor(self) -> "TransformToArray":
        return self._preprocessor

    def move_to(self, device: str) -> None:
        self.model.to(device)
        self.device = device
        self._half = half_dtype(device) if device.startswith("cuda") else None

    def _autocast(self):
        import torch

        if self._half is not None:  # bf16 where the GPU runs it natively, else fp16
            return torch.autocast("cuda", dtype=self._half)
        return contextlib.nullcontext()

    def _embed_preprocessed_batch(self, batch: Sequence[Any]) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            pixels = to_device(batch, self.device)
            features = self.model.encode_image(pixels)
        return features.float().cpu().numpy()

    def _embed_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            tokens = self.tokenizer(list(texts)).to(self.device)
            if _causal_argmax_text_tower(self.model):
                features = _encode_text_to_eot(self.model, tokens)
            else:
                features = self.model.encode_text(tokens)
        return features.float().cpu().numpy()


def _causal_argmax_text_tower(model) -> bool:
    """True for CLIP-style text towers (OpenAI CLIP, LAION ViT-*): causal attention, pooled at the
    end-of-text token (the highest id). Their output at the EOT position does not depend on the
    padding after it, so the padding need not be computed (see _encode_text_to_eot)."""
    import open_clip

    return (
        type(model) is open_clip.CLIP
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
    )


def _encode_text_to_eot(model, tokens):
    """model.encode_text(tokens), computed over the first n positions only, n = the last EOT
    position in the batch + 1. With a causal mask, position i attends to positions <= i, so the
    pooled EOT features are the same as over the full context (77 tokens), to float rounding; a
    short query costs a few positions instead of 77 (several times faster)."""
    import torch.nn.functional as F

    n = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch_arange(x), tokens.argmax(dim=-1)]
    if model.text_projection is not None:
        x = model.text_projection(x) if hasattr(model.text_projection, "weight") else x @ model.text_projection
    return F.normalize(x, dim=-1)


def torch_arange(x):
    import torch

    return torch.arange(x.shape[0], device=x.device)


class TransformToArray:
    """open_clip's own transform (a picklable torchvision Compose), returning a numpy array so that
    worker processes send plain buffers back, not tensors."""

    preload_modules = ("open_clip.transform", "torchvision.transforms")  # what unpickling it imports

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image) -> np.ndarray:
        return self.transform(image).numpy()


@contextlib.contextmanager
def _hub_offline(cached: bool):
    """While cached weights load: huggingface_hub asks no hub for a newer revision (no waiting on
    a network that may be down). Its flag, read at call time, is put back after: the rest of the
    process (a VLM download that `ask` offers) still reaches the hub."""
    if not cached:
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def _check_tag_reachable(open_clip, arch: str, tag: str) -> bool:
    """Fail within seconds when a tag's weights are neither cached nor downloadable. -> cached."""
    from retriever.encoders.hub import hub_reachable

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
        names = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename:
            names = [filename, os.path.splitext(filename)[0] + ".safetensors"]
        for candidate in names:
            found = try_to_load_from_cache(repo, candidate)
            if isinstance(found, str) and os.path.isfile(found):
                return True  # loaded with the hub off (_hub_offline)
    if hub_reachable():
        return False
    where = f"hf-hub:{hub.rstrip('/')}" if hub else cfg.get("url", "its URL")
    raise WeightsNotFoundError(
        f"{arch}/{tag} weights are not cached and the model hub is unreachable: on a machine with network "
        f"run `python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{tag}')\"` "
        f"({where}), then copy the weights file here and pass --pretrained FILE"
    )
