"""The CUDA paths on the CPU: the GPU's answers are simulated (an encoder whose forward pass raises
torch.cuda.OutOfMemoryError above a batch size, a Ray cluster that reports no GPUs, a GPU that
only emulates bf16, a model that gives NaN), and what retriever does with them is checked for
real: the run, its catalog, its summary, its one-line errors. tests/test_gpu_cuda.py runs the
same paths on a real GPU, where there is one."""

from __future__ import annotations

import contextlib
import json
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from retriever.encoders.base import Encoder
from retriever.errors import DeviceError, DeviceOutOfMemoryError
from retriever.index import Index
from retriever.indexer import NON_FINITE_REASON, IndexOptions, run_index

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 14.75 GiB total capacity; 13.1 GiB already allocated)"


# -- an encoder that answers as a GPU would --------------------------------------------------------


class SolidColour:
    """Preprocessing: a photo -> its mean colour as a (3, 1, 1) array (picklable)."""

    def __call__(self, image) -> np.ndarray:
        return np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)).reshape(3, 1, 1)


def colour_vector(pixels: np.ndarray) -> np.ndarray:
    """The vector of one preprocessed photo: its colour, so a vector shows which photo it came from."""
    r, g, b = np.asarray(pixels, dtype=np.float32).reshape(3)
    return np.array([r, g, b, 100.0, 0, 0, 0, 0], dtype=np.float32)


class SimulatedGPUEncoder(Encoder):
    """Room on its 'GPU' for `fits` images a pass: a larger batch raises torch's CUDA out-of-memory
    error, as a real one would. A photo whose red channel is `nan_red` comes out as NaN."""

    model_id = "test/simulated-gpu"
    dim = 8
    input_size = 1
    device = "cuda"

    def __init__(self, batch_size: int = 256, fits: int = 64, nan_red: float | None = None):
        self.batch_size, self.fits, self.nan_red = batch_size, fits, nan_red
        self.calls: list[int] = []
        self.moves: list[str] = []
        self.preprocessor_asked_on: list[str] = []

    def preprocessor(self):
        self.preprocessor_asked_on.append(self.device)
        return SolidColour()

    def move_to(self, device: str) -> None:
        self.moves.append(device)
        self.device = device

    def _embed_preprocessed_batch(self, batch):
        self.calls.append(len(batch))
        if len(batch) > self.fits:
            raise torch.cuda.OutOfMemoryError(CUDA_OOM)
        out = np.stack([colour_vector(x) for x in batch])
        if self.nan_red is not None:
            out[out[:, 0] == self.nan_red] = np.nan
        return out

    def _embed_text_batch(self, texts):
        return np.ones((len(texts), self.dim), dtype=np.float32)


def colour_photos(folder, n: int):
    """n small PNGs of n different colours (distinct content: no copy shares a vector)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i % 256, (i // 256) * 40, 200)).save(folder / f"p{i:04d}.png")
    return folder


def new_index(home) -> Index:
    from retriever.encoders import ModelSpec

    index = Index.create(home, "default", ModelSpec(name="offline"), SimulatedGPUEncoder.model_id,
                         SimulatedGPUEncoder.dim)
    index.acquire_lock()
    return index


def stored_by_path(index) -> dict[str, np.ndarray | None]:
    files = index.catalog.known_files()
    ids = [i for f in files.values() for i in f.ids]
    vectors = index.catalog.vectors_for(ids, index.dim)
    return {path: vectors.get(f.ids[0]) for path, f in files.items()}


THREADS = IndexOptions(pool="thread", workers=2)  # processes would be the default on "cuda"


# -- out of memory while encoding ------------------------------------------------------------------


def test_out_of_memory_at_256_halves_to_64_and_the_run_completes_and_says_so(tmp_path, capsys):
    from retriever.cli.indexing import _print_index_summary

    col = colour_photos(tmp_path / "col", 300)
    encoder = SimulatedGPUEncoder(batch_size=256, fits=64)
    with new_index(tmp_path / "home") as index:
        summary = run_index(index, encoder, [str(col)], THREADS)
        assert (summary.indexed, summary.failed, summary.interrupted) == (300, 0, False)
        # 256 and 128 ran out of memory; 64 fitted and stayed the batch for the rest of the run.
        assert encoder.calls[:3] == [256, 128, 64] and max(encoder.calls[3:]) <= 64
        assert encoder.batch_size == 64 and sum(encoder.calls[2:]) == 300
        note = "the GPU ran out of memory at batch 256: encoded 64 images per batch from then on"
        assert summary.notices == [note]
        last = index.catalog.last_run()
        assert last["status"] == "completed" and last["summary"]["notices"] == [note]
        # Every photo has the vector of its own colour: the retried batches stayed in step.
        stored = stored_by_path(index)
        assert len(stored) == 300 and len(index.vector_index()) == 300
        for i in (0, 63, 64, 255, 256, 299):
            colour = np.array([i % 256, (i // 256) * 40, 200], dtype=np.float32).reshape(3, 1, 1)
            expected = colour_vector(colour) / np.linalg.norm(colour_vector(colour))
            np.testing.assert_allclose(stored[str(col / f"p{i:04d}.png")], expected, atol=1e-6)
        _print_index_summary(summary, index.status())
    assert f"note: {note}" in capsys.readouterr().err


def test_out_of_memory_even_one_at_a_time_fails_the_run_and_says_out_of_memory(tmp_path):
    col = colour_photos(tmp_path / "col", 3)
    with new_index(tmp_path / "home") as index:
        with pytest.raises(DeviceOutOfMemoryError, match="ran out of memory encoding even one at a time"):
            run_index(index, SimulatedGPUEncoder(batch_size=4, fits=0), [str(col)], THREADS)
        last = index.catalog.last_run()
        assert last["status"] == "failed" and "out of memory" in last["summary"]["error"]
        assert index.catalog.close_abandoned_runs() == 0  # no run is left marked "running"
        # The next run, with room on the GPU, indexes everything.
        assert run_index(index, SimulatedGPUEncoder(batch_size=4, fits=4), [str(col)], THREADS).indexed == 3


def test_a_nan_vector_fails_its_photo_and_nothing_is_stored_for_it(tmp_path):
    col = colour_photos(tmp_path / "col", 5)  # red channels 0..4
    with new_index(tmp_path / "home") as index:
        summary = run_index(index, SimulatedGPUEncoder(batch_size=4, nan_red=2.0), [str(col)], THREADS)
        assert (summary.indexed, summary.failed) == (4, 1)
        bad = str(col / "p0002.png")
        assert summary.failures == [(bad, NON_FINITE_REASON)]
        [failure] = index.catalog.failures()
        assert failure["path"] == bad and "NaN" in failure["error"]
        stored = stored_by_path(index)
        assert stored[bad] is None and all(v is not None and np.isfinite(v).all()
                                           for p, v in stored.items() if p != bad)
        assert len(index.vector_index()) == 4


# -- out of memory, no kernel, a CUDA build without CUDA: while loading ---------------------------------


@pytest.mark.parametrize("error, expected", [
    (torch.cuda.OutOfMemoryError(CUDA_OOM), (DeviceOutOfMemoryError, "out of memory on the GPU")),
    (RuntimeError("CUDA error: no kernel image is available for execution on the device\nCUDA kernel errors ..."),
     (DeviceError, "no kernel for this GPU")),
    (AssertionError("Torch not compiled with CUDA enabled"), (DeviceError, "has no CUDA")),
    (RuntimeError("The NVIDIA driver on your system is too old (found version 11040)."),
     (DeviceError, "wrong CUDA build")),
])
def test_a_gpu_failure_while_loading_open_clip_is_named_not_called_missing_weights(
        tiny_clip, monkeypatch, error, expected):
    import open_clip

    from retriever.encoders import ModelSpec, create_encoder

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fail)
    kind, words = expected
    with pytest.raises(kind, match=words) as caught:
        create_encoder(ModelSpec(tiny_clip["config"], tiny_clip["pt"], device="cpu"))
    assert "weights" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_gpu_failure_while_loading_a_vlm_is_named(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from retriever.vlm.model import load_vlm

    (tmp_path / "config.json").write_text("{}")

    def fail(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", fail)
    with pytest.raises(DeviceOutOfMemoryError, match=f"cannot load {tmp_path} on cpu: out of memory on the GPU"):
        load_vlm(str(tmp_path), device="cpu")


# -- bf16: native or emulated, on the device chosen ----------------------------------------------------


@pytest.mark.parametrize("native, expected", [(False, torch.float16), (True, torch.bfloat16)])
def test_half_precision_is_bf16_only_where_the_chosen_gpu_runs_it_natively(monkeypatch, native, expected):
    from retriever.encoders.cuda import half_dtype
    from retriever.vlm.model import model_dtype

    entered: list[int] = []

    @contextlib.contextmanager
    def on_device(index):
        entered.append(index)
        yield

    def is_bf16_supported(including_emulation=True):
        return native or including_emulation  # an emulating GPU (T4, V100) says yes unless asked

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", on_device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert half_dtype("cuda:1") is expected and entered == [1]  # the GPU chosen, not the current one
    assert model_dtype("cuda") is expected and entered == [1, 0]
    assert model_dtype("cpu") is torch.float32


def test_cuda_n_must_name_a_gpu_that_exists(monkeypatch):
    from retriever.encoders.cuda import check_cuda_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_cuda_device("cuda:1")
    with pytest.raises(DeviceError, match=r"--device cuda:2: this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        check_cuda_device("cuda:2")
    out = CliRunner().invoke(_main(), ["search", "cat", "--device", "gpu"])
    assert out.exit_code == 2 and "'gpu' is not auto, cpu, cuda or cuda:N" in out.output


def _main():
    from retriever.cli import main

    return main


# -- the VLM: out of memory halves its batch too ---------------------------------------------------------


class _Rows(dict):
    def to(self, *args):
        return self


class EchoProcessor:
    """Each prompt's row starts with its photo's number; the model answers with that number."""

    tokenizer = types.SimpleNamespace(pad_token_id=0, eos_token_id=0)

    def apply_chat_template(self, messages, **kwargs):
        return "describe"

    def __call__(self, text, images, **kwargs):
        return _Rows(input_ids=torch.tensor([[photo, 7, 7] for photo in images]))

    def batch_decode(self, new, skip_special_tokens=True):
        return [f"photo {int(row[0])}" for row in new]


class SmallGPUModel:
    def __init__(self, fits: int):
        self.fits, self.calls = fits, []

    def generate(self, input_ids, **kwargs):
        self.calls.append(len(input_ids))
        if len(input_ids) > self.fits:
            raise torch.cuda.OutOfMemoryError(CUDA_OOM)
        return torch.cat([input_ids, input_ids[:, :1]], dim=1)


def simulated_vlm(fits: int):
    from retriever.vlm.model import VLM

    return VLM(model=SmallGPUModel(fits), processor=EchoProcessor(), model_id="test/simulated-vlm", folder="",
               family="test", device="cpu", dtype="float32", image_policy="")


def test_vlm_out_of_memory_halves_the_batch_keeps_it_and_the_caption_summary_says_so(offline_copy):
    from retriever.vlm.captions import all_captions, run_captions

    vlm = simulated_vlm(fits=4)
    assert vlm.generate(["p"] * 16, list(range(16)), 1) == [f"photo {i}" for i in range(16)]
    assert vlm.model.calls == [16, 8, 4, 4, 4, 4] and vlm.batch_limit == 4
    assert vlm.batch_note == "the GPU ran out of memory at 16 photos per pass: 4 per pass from then on"
    vlm.generate(["p"] * 6, list(range(6)), 1)
    assert vlm.model.calls[6:] == [4, 2]  # remembered: no second try at 6

    with Index.open(offline_copy, "default") as index:
        number = {path: i + 100 for i, path in enumerate(sorted(index.catalog.known_files()))}
        vlm = simulated_vlm(fits=4)
        summary = run_captions(index, vlm, batch_size=16, load=lambda path, frame_ms=None: number[path])
        assert summary.captioned == len(number) == 15 and summary.notices == [vlm.batch_note]
        assert json.loads(json.dumps(summary.as_dict()))["notices"] == [vlm.batch_note]
        assert {c["path"]: c["caption"] for c in all_captions(index.catalog)} == {
            p: f"photo {n}" for p, n in number.items()}  # each caption on its own photo


# -- Ray: a cluster without GPUs ----------------------------------------------------------------------


class _Dataset:
    """Ray Data's calls, run in this process, one batch: what RayEngine asks of it."""

    def __init__(self, batch):
        self.batch = batch

    def map_batches(self, fn, fn_kwargs=None, fn_constructor_kwargs=None, **options):
        if isinstance(fn, type):
            fn = fn(**fn_constructor_kwargs)
        return _Dataset(fn(self.batch, **(fn_kwargs or {})))

    def iter_batches(self, **options):
        return iter([self.batch])


def fake_ray(resources: dict[str, float]):
    """A Ray already initialised, whose cluster has `resources`."""
    from retriever.distributed import _objects

    def from_items(items, **kwargs):
        return _Dataset({"key": np.array([i["key"] for i in items]), "task": _objects([i["task"] for i in items])})

    data = types.SimpleNamespace(DataContext=types.SimpleNamespace(get_current=lambda: types.SimpleNamespace()),
                                 from_items=from_items, ActorPoolStrategy=lambda size: size)
    return types.SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: dict(resources),
                                 data=data, exceptions=types.SimpleNamespace(RayError=type("RayError", (Exception,), {})),
                                 shutdown=lambda: None)


def test_device_cuda_on_a_cluster_without_gpus_is_one_clear_line(offline_copy, tmp_path, monkeypatch,
                                                                  offline_encoder):
    import retriever.distributed as distributed

    monkeypatch.setattr(distributed, "import_ray", lambda: fake_ray({"CPU": 8.0}))
    monkeypatch.setattr(Index, "indexing_encoder", lambda self, device, *a, **k: (offline_encoder, None))
    col = colour_photos(tmp_path / "new", 2)
    out = CliRunner().invoke(_main(), ["index", str(col), "--engine", "ray", "--device", "cuda", "-q",
                                       "--home", str(offline_copy)])
    assert out.exit_code == 1, out.output
    assert out.output.strip().splitlines() == [
        "Error: --device cuda: the Ray cluster has no GPUs (ray.cluster_resources() lists none); start its nodes "
        "with GPUs (ray start --num-gpus N), or use --device cpu or auto"]
    with Index.open(offline_copy, "default") as index:
        assert index.catalog.last_run()["status"] == "failed"


def test_auto_on_a_cluster_without_gpus_says_it_runs_on_cpus(tmp_path, monkeypatch):
    import retriever.distributed as distributed
    import retriever.encoders as encoders

    monkeypatch.setattr(distributed, "import_ray", lambda: fake_ray({"CPU": 2.0}))
    monkeypatch.setattr(distributed, "driver_has_gpu", lambda: True)  # a GPU here, none in the cluster
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the "actor" runs in this process
    actor_encoder = SimulatedGPUEncoder(batch_size=4, fits=2)  # and it runs out of memory at 4
    monkeypatch.setattr(encoders, "create_encoder", lambda spec: actor_encoder)
    col = colour_photos(tmp_path / "col", 4)
    driver_encoder = SimulatedGPUEncoder()  # loaded on this machine's GPU (a new index)
    with new_index(tmp_path / "home") as index:
        summary = distributed.run_index_ray(index, driver_encoder, [str(col)], IndexOptions(),
                                            distributed.RayOptions())
        assert index.catalog.last_run()["summary"]["notices"] == summary.notices
    # The driver's model left its GPU for the run (only its preprocessing was used), and came back.
    assert driver_encoder.moves == ["cpu", "cuda"] and set(driver_encoder.preprocessor_asked_on) == {"cpu"}
    assert actor_encoder.calls == [4, 2, 2]
    assert (summary.indexed, summary.engine, summary.backend) == (4, "ray", "pytorch (cpu) in 1 Ray actor")
    assert summary.notices == [
        "the Ray cluster has no GPUs (this machine has one): encoding on CPUs in 1 actor; start Ray with GPUs "
        "(ray start --num-gpus N), or pass --device cpu to say so",
        "the GPU ran out of memory at batch 4: encoded 2 images per batch from then on"]



def test_the_onnx_export_copies_a_gpu_model_to_the_cpu_without_a_second_copy_on_the_gpu(monkeypatch):
    """cpu_copy puts each weight straight on the CPU: a deepcopy of the module itself would first
    duplicate every weight on its device. Here the 'device' copy is counted through deepcopy."""
    import copy

    import torch

    from retriever.onnx.export import cpu_copy

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3)).double()
    module.register_buffer("scale", torch.tensor([2.0], dtype=torch.float64))
    copied_tensors = []
    real = torch.Tensor.__deepcopy__

    def counting(self, memo):
        copied_tensors.append(self.shape)
        return real(self, memo)

    monkeypatch.setattr(torch.Tensor, "__deepcopy__", counting)
    out = cpu_copy(module)
    assert copied_tensors == []  # no weight went through deepcopy (which copies on the weight's device)
    x = torch.randn(5, 4, dtype=torch.float64)
    assert torch.allclose(out(x.float()), module(x).float(), atol=1e-5)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in out.parameters())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(out.parameters(), module.parameters()))
    assert next(module.parameters()).dtype == torch.float64 and out.scale.dtype == torch.float32
    copy.deepcopy(module)
    assert copied_tensors  # the counter does see a plain deepcopy


def test_retriever_device_says_what_auto_means(monkeypatch):
    """$RETRIEVER_DEVICE=cpu: auto never looks for a GPU (the suite sets it, so that tests which
    mean the CPU run on it on a GPU machine too); an explicit --device still wins."""
    from retriever import distributed
    from retriever.encoders.base import auto_device, resolve_device, surely_cpu

    monkeypatch.setenv("RETRIEVER_DEVICE", "cpu")
    assert auto_device("auto") == "cpu" and auto_device("cuda") == "cuda" and surely_cpu("auto")
    assert resolve_device("auto") == "cpu"
    plan = distributed.plan_resources({"CPU": 8, "GPU": 2}, distributed.RayOptions(), "auto")
    assert plan.device == "cpu"
    monkeypatch.setenv("RETRIEVER_DEVICE", "cuda")
    assert auto_device("auto") == "cuda" and not surely_cpu("auto")
    assert distributed.plan_resources({"CPU": 8, "GPU": 2}, distributed.RayOptions(), "auto").device == "cuda"
    monkeypatch.delenv("RETRIEVER_DEVICE")
    assert auto_device("auto") == "auto"
