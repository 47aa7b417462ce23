"""CUDA against the CPU, on a real GPU. Every test here carries the `cuda` marker: it runs where
torch sees a CUDA GPU and is skipped elsewhere (tests/conftest.py). The models are the suite's own
(a tiny open_clip architecture with random weights from a file, the offline encoder, tiny random
VLMs); on CUDA they run in half precision (bf16 where the GPU runs it natively, else fp16), and
each result must agree with the CPU's float32 one within 1e-2 cosine.

tests/test_gpu.py checks on the CPU what retriever does with a GPU's answers (out of memory, a
cluster without GPUs, emulated bf16, NaN); this file checks that the CUDA paths compute the same
thing as the CPU's."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from retriever.encoders import ModelSpec, create_encoder
from retriever.index import Index
from retriever.indexer import IndexOptions, run_index
from tests.conftest import PHOTOS, copy_photos

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
MIN_COSINE = 1 - 1e-2
TEXTS = ["a cat", "a cup of coffee", "a rocket launch", "an astronaut", "grass", "", "x" * 500]


def photos(n: int = 15) -> list[Image.Image]:
    paths = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png", ".webp"))[:n]
    return [Image.open(p).convert("RGB") for p in paths]


def assert_agree(got, expected) -> None:
    """Row by row, cosine similarity at least MIN_COSINE."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape and np.isfinite(got).all()
    cos = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1) + 1e-12)
    assert cos.min() >= MIN_COSINE, f"least cosine {cos.min():.5f} (row {int(cos.argmin())})"


def stored_by_path(index) -> dict[str, np.ndarray]:
    files = index.catalog.known_files()
    vectors = index.catalog.vectors_for([f.ids[0] for f in files.values()], index.dim)
    return {path: vectors[f.ids[0]] for path, f in files.items() if f.ids[0] in vectors}


# -- encoders ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_open_clip_on_cuda_agrees_with_the_cpu(tiny_clip, batch_size):
    cpu = create_encoder(ModelSpec(tiny_clip["config"], tiny_clip["pt"], device="cpu", batch_size=batch_size))
    gpu = create_encoder(ModelSpec(tiny_clip["config"], tiny_clip["pt"], device=DEVICE, batch_size=batch_size))
    assert (gpu.device, gpu.batch_size, gpu.model_id) == (DEVICE, batch_size, cpu.model_id)
    inputs = [cpu.preprocess(im) for im in photos()]
    if batch_size == 256:  # one full batch of 256 and a part
        inputs = [inputs[i % len(inputs)] for i in range(300)]
    assert_agree(gpu.embed_preprocessed(inputs), cpu.embed_preprocessed(inputs))
    assert_agree(gpu.embed_texts(TEXTS), cpu.embed_texts(TEXTS))
    assert gpu.batch_note is None  # nothing ran out of memory


def test_open_clip_shortened_text_path_on_cuda_equals_the_full_one(tiny_clip):
    from retriever.encoders.openclip import _causal_argmax_text_tower

    gpu = create_encoder(ModelSpec(tiny_clip["config"], tiny_clip["pt"], device=DEVICE, batch_size=4))
    assert _causal_argmax_text_tower(gpu.model)  # embed_texts takes the shortened path
    with torch.inference_mode(), gpu._autocast():
        full = gpu.model.encode_text(gpu.tokenizer(TEXTS).to(DEVICE)).float().cpu().numpy()
    assert_agree(gpu.embed_texts(TEXTS), full)


def test_offline_encoder_on_cuda_agrees_with_the_cpu(offline_encoder):
    gpu = create_encoder(ModelSpec("offline", device=DEVICE))
    assert gpu.device == DEVICE and gpu.dim == offline_encoder.dim
    images = photos()
    assert_agree(gpu.embed_images(images), offline_encoder.embed_images(images))
    assert_agree(gpu.embed_texts(TEXTS), offline_encoder.embed_texts(TEXTS))


# -- indexing and search --------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_indexing_on_cuda_agrees_with_the_cpu(tmp_path, tiny_clip, tiny_encoder, pool):
    col = copy_photos(tmp_path / "col")
    gpu = create_encoder(ModelSpec(tiny_clip["config"], tiny_clip["pt"], device=DEVICE, batch_size=4))
    spec = ModelSpec(tiny_clip["config"], tiny_clip["pt"])
    stored = {}
    for name, encoder in (("cpu", tiny_encoder), ("cuda", gpu)):
        with Index.create(tmp_path / name, "default", spec, tiny_encoder.model_id, tiny_encoder.dim) as index:
            index.acquire_lock()
            summary = run_index(index, encoder, [str(col)], IndexOptions(pool=pool, workers=2))
            assert (summary.indexed, summary.failed) == (len(list(col.iterdir())), 0)
            assert summary.backend == f"pytorch ({encoder.device})" and summary.notices == []
            stored[name] = stored_by_path(index)
    paths = sorted(stored["cpu"])
    assert paths == sorted(stored["cuda"])
    assert_agree([stored["cuda"][p] for p in paths], [stored["cpu"][p] for p in paths])


def test_search_with_device_cuda_finds_what_the_cpu_finds(offline_copy):
    from retriever.cli import main

    def top(device: str) -> list[dict]:
        out = CliRunner().invoke(main, ["search", "a cat", "-k", "5", "--json", "--no-daemon", "--device", device,
                                        "--home", str(offline_copy)])
        assert out.exit_code == 0, out.output
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    cpu, gpu = top("cpu"), top(DEVICE)
    assert gpu[0]["path"] == cpu[0]["path"] and gpu[0]["path"].endswith("chelsea.png")
    np.testing.assert_allclose([h["score"] for h in gpu], [h["score"] for h in cpu], atol=1e-2)


# -- vision-language models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vlm_folders(tmp_path_factory) -> dict[str, str]:
    pytest.importorskip("transformers")
    from tests.tiny_vlm import BUILDERS

    root = tmp_path_factory.mktemp("tiny-vlm-cuda")
    return {name: str(build(root / name)) for name, build in BUILDERS.items()}


class DecodeRecorder:
    """Wraps a processor: keeps the token ids generate() hands to batch_decode."""

    def __init__(self, processor):
        self._processor = processor
        self.decoded: list[torch.Tensor] = []

    def __call__(self, *args, **kwargs):
        return self._processor(*args, **kwargs)

    def batch_decode(self, ids, **kwargs):
        self.decoded.append(ids.cpu())
        return self._processor.batch_decode(ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self._processor, name)


@pytest.mark.parametrize("family", ["idefics3", "llava", "qwen2_vl"])
def test_tiny_vlm_log_probs_and_generate_on_cuda_agree_with_the_cpu(tiny_vlm_folders, family):
    """Log-probs: the distributions (probabilities, and log-probs about their mean) within 1e-2
    cosine. Generate: a random model's best next tokens are often within rounding of each other
    (fp16 against float32 on the CPU flips some), so the token the GPU picks must be one the CPU
    ranks best to within a tenth of its log-probs' spread."""
    from retriever.vlm.model import load_vlm
    from retriever.vlm.photos import load_photo
    from retriever.vlm.prompts import caption_messages, rerank_messages

    folder = tiny_vlm_folders[family]
    cpu = load_vlm(folder, device="cpu", max_image_tokens=64)
    gpu = load_vlm(folder, device=DEVICE, max_image_tokens=64)
    assert gpu.device == DEVICE and gpu.dtype in ("bfloat16", "float16") and cpu.dtype == "float32"
    names = sorted(p.name for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png"))[:8]
    images = [load_photo(str(PHOTOS / name)) for name in names]
    for messages in (rerank_messages("a cat"), caption_messages()):
        prompts = [cpu.prompt(messages)] * len(images)
        expected = cpu.next_token_logprobs(prompts, images)
        got = gpu.next_token_logprobs(prompts, images)
        assert_agree(got.exp(), expected.exp())
        assert_agree(got - got.mean(-1, keepdim=True), expected - expected.mean(-1, keepdim=True))
        gpu.processor = recorder = DecodeRecorder(gpu.processor)
        texts = gpu.generate(prompts, images, 1)
        gpu.processor = recorder._processor
        assert len(texts) == len(images) and all(isinstance(t, str) for t in texts)
        picked = recorder.decoded[0][:, :1]
        behind = (expected.max(-1).values - expected.gather(1, picked).squeeze(1)) / expected.std(-1)
        assert behind.max() <= 0.1, behind.tolist()
    assert gpu.batch_note is None


# -- Ray ------------------------------------------------------------------------------------------------------


def test_ray_actors_get_one_gpu_each_leave_the_drivers_alone_and_agree_with_the_cpu(tmp_path, offline_encoder,
                                                                                     monkeypatch):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from retriever.distributed import run_index_ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    col = copy_photos(tmp_path / "col")
    spec = ModelSpec(name="offline")
    with Index.create(tmp_path / "home", "cpu", spec, offline_encoder.model_id, offline_encoder.dim) as local:
        local.acquire_lock()
        run_index(local, offline_encoder, [str(col)])
        expected = stored_by_path(local)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=256 << 20, log_to_driver=False)
    try:
        @ray.remote(num_gpus=1)
        def what_an_actor_sees():
            import torch

            return os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count()

        visible, count = ray.get(what_an_actor_sees.remote())
        assert visible not in (None, "") and count == 1
        before = torch.cuda.memory_allocated()
        with Index.create(tmp_path / "home", "ray", spec, offline_encoder.model_id, offline_encoder.dim) as index:
            index.acquire_lock()
            summary = run_index_ray(index, lambda: index.load_encoder(DEVICE), [str(col)], device=DEVICE,
                                    batch_size=4)
            assert (summary.indexed, summary.failed, summary.notices) == (len(expected), 0, [])
            assert summary.backend == "pytorch (cuda) in 1 Ray actor"
            got = stored_by_path(index)
        assert torch.cuda.memory_allocated() == before  # the driver's copy of the model is on the CPU
    finally:
        ray.shutdown()
    assert sorted(got) == sorted(expected)
    assert_agree([got[p] for p in sorted(got)], [expected[p] for p in sorted(got)])
