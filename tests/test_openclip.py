"""The open_clip backend against open_clip's own reference pipeline, with a tiny architecture and
seeded random weights loaded from a local file (the path a user's downloaded weights take)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from retriever.encoders import DEFAULT_OPEN_CLIP, DEFAULT_OPEN_CLIP_HUB_REPO, ModelSpec, create_encoder
from retriever.encoders import default_model_spec
from retriever.errors import UnknownModelError, WeightsNotFoundError
from tests.conftest import PHOTOS

TEXTS = ["a cat", "a cup of coffee", "a rocket launch", "an astronaut", "grass", "", "x" * 500]


def photos(n=7):
    paths = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png", ".webp"))[:n]
    return [Image.open(p).convert("RGB") for p in paths]


def reference(tiny_clip, weights):
    """open_clip's own pipeline, image by image."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip["name"], pretrained=weights)
    model.eval()
    tokenizer = open_clip.get_tokenizer(tiny_clip["name"])
    with torch.no_grad():
        img = torch.cat([model.encode_image(preprocess(im).unsqueeze(0)) for im in photos()])
        txt = torch.cat([model.encode_text(tokenizer([t])) for t in TEXTS])
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return img.numpy(), txt.numpy()


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_embeddings_equal_open_clip_reference(tiny_clip, fmt):
    ref_img, ref_txt = reference(tiny_clip, tiny_clip[fmt])
    enc = create_encoder(ModelSpec(name=tiny_clip["config"], pretrained=tiny_clip[fmt], device="cpu", batch_size=4))
    assert enc.dim == 32
    np.testing.assert_allclose(enc.embed_images(photos()), ref_img, atol=1e-5, rtol=0)
    np.testing.assert_allclose(enc.embed_texts(TEXTS), ref_txt, atol=1e-5, rtol=0)


def test_batch_size_does_not_change_results(tiny_clip):
    results = []
    for batch_size in (1, 3, 32):
        enc = create_encoder(ModelSpec(tiny_clip["config"], tiny_clip["pt"], device="cpu", batch_size=batch_size))
        results.append((enc.embed_images(photos()), enc.embed_texts(TEXTS)))
    for img, txt in results[1:]:
        np.testing.assert_allclose(img, results[0][0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(txt, results[0][1], atol=1e-5, rtol=0)
    norms = np.linalg.norm(results[0][0], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_model_id_names_architecture_and_weights(tiny_clip, tmp_path):
    enc = create_encoder(ModelSpec(tiny_clip["config"], tiny_clip["pt"], device="cpu"))
    same = create_encoder(ModelSpec(tiny_clip["config"], tiny_clip["pt"], device="cpu"))
    assert enc.model_id == same.model_id and enc.model_id.startswith(f"open_clip/{tiny_clip['name']}/file-")
    other = tmp_path / "other.pt"
    state = torch.load(tiny_clip["pt"], weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, other)
    assert create_encoder(ModelSpec(tiny_clip["config"], str(other), device="cpu")).model_id != enc.model_id


def test_unknown_model_and_missing_weights_are_clear_errors(tiny_clip, tmp_path):
    with pytest.raises(UnknownModelError, match="did you mean ViT-B-32"):
        create_encoder(ModelSpec("ViT-B-33", "x.pt"))
    with pytest.raises(WeightsNotFoundError, match="weights file not found"):
        create_encoder(ModelSpec(tiny_clip["config"], str(tmp_path / "missing.safetensors")))
    with pytest.raises(WeightsNotFoundError, match="needs --pretrained"):
        create_encoder(ModelSpec("ViT-B-32", None))
    with pytest.raises(WeightsNotFoundError, match="neither a pretrained tag"):
        create_encoder(ModelSpec("ViT-B-32", "no_such_tag"))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match="could not load"):
        create_encoder(ModelSpec(tiny_clip["config"], str(broken), device="cpu"))


def test_uncached_tag_without_hub_fails_within_seconds():
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="not cached and the model hub is unreachable"):
        create_encoder(ModelSpec("ViT-B-32", "laion2b_s34b_b79k", device="cpu"))
    assert time.monotonic() - start < 10


def test_default_model_table_matches_open_clip():
    import open_clip

    cfg = open_clip.get_pretrained_cfg(DEFAULT_OPEN_CLIP.name, DEFAULT_OPEN_CLIP.pretrained)
    assert cfg["hf_hub"].rstrip("/") == DEFAULT_OPEN_CLIP_HUB_REPO


def test_default_model_is_offline_without_cache_or_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import retriever.encoders as encoders

    monkeypatch.setattr(encoders, "_default_weights_cached", lambda: False)
    spec, note = default_model_spec()
    assert spec.name == "offline" and spec.pretrained is None
    assert "offline encoder" in note and "--model" in note


def test_default_model_is_vit_b_32_when_cached(monkeypatch):
    import retriever.encoders as encoders

    monkeypatch.setattr(encoders, "_default_weights_cached", lambda: True)
    spec, note = default_model_spec()
    assert (spec.name, spec.pretrained, note) == ("ViT-B-32", "laion2b_s34b_b79k", None)


def test_cuda_request_without_gpu_is_a_clear_error(tiny_clip):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from retriever.errors import RetrieverError

    with pytest.raises(RetrieverError, match="no CUDA GPU"):
        create_encoder(ModelSpec(tiny_clip["config"], tiny_clip["pt"], device="cuda"))


def test_text_queries_skip_the_padding_with_the_same_result(tiny_encoder):
    """CLIP-style text towers are causal and pool at the end-of-text token: the encoder computes
    only up to the last EOT of the batch, and must match open_clip's full-context encode_text."""
    import torch

    from retriever.encoders.openclip import _causal_argmax_text_tower

    model = tiny_encoder.model
    assert _causal_argmax_text_tower(model)
    texts = ["a cat", "a dog on the beach at sunset", "x", "word " * 100, "ünïcødé 写真"]
    with torch.inference_mode():
        full = torch.nn.functional.normalize(model.encode_text(tiny_encoder.tokenizer(texts)), dim=-1).numpy()
    ours = tiny_encoder.embed_texts(texts)
    assert np.abs(ours - full).max() < 1e-5
    for i, text in enumerate(texts):  # alone (a shorter batch) or together: the same vectors
        assert np.abs(tiny_encoder.embed_texts([text])[0] - full[i]).max() < 1e-5


def test_cached_tag_weights_load_with_the_hub_off_and_the_process_keeps_it_on():
    """Cached weights of a tag load without asking the hub (its flag on while they load), and the
    flag is put back: a later hub download in the process (a VLM for `ask`) is not refused."""
    import huggingface_hub.constants as hub_constants

    from retriever.encoders.openclip import _hub_offline

    before = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = False
    try:
        with _hub_offline(True):
            assert hub_constants.HF_HUB_OFFLINE is True
        assert hub_constants.HF_HUB_OFFLINE is False
        with pytest.raises(RuntimeError), _hub_offline(True):
            raise RuntimeError("a load that fails")
        assert hub_constants.HF_HUB_OFFLINE is False
        with _hub_offline(False):
            assert hub_constants.HF_HUB_OFFLINE is False
    finally:
        hub_constants.HF_HUB_OFFLINE = before
