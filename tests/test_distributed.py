"""The Ray Data engine (--engine ray) and collections at URLs (fsspec).

One local Ray cluster (2 CPUs, no GPU even on a machine that has one) serves the module. The Ray
runs are compared with local runs of the same files on the CPU: catalog rows, stored vectors and
exact-search answers must be the same, after a killed encoder actor and after an interrupted
driver too. Every run here says --device cpu: these tests mean the CPU (tests/test_gpu_cuda.py
has the CUDA ones)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retriever.cli import main
from retriever.distributed import CPUS_PER_ACTOR_GROUP, DistributedError, RayOptions, plan_resources, run_index_ray
from retriever.encoders import ModelSpec
from retriever.errors import MissingDependencyError
from retriever.index import Index
from retriever.indexer import run_index
from retriever.search import Searcher
from tests.conftest import PHOTOS, copy_photos

QUERIES = ["a cat", "a cup of coffee", "a rocket launch", "a brick wall"]
META = ("size", "mtime_ns", "fingerprint", "status", "error", "width", "height", "format", "frame_ms")


# -- helpers ------------------------------------------------------------------------------------------


def collection(dest: Path) -> Path:
    """The example photos, a copy in a subfolder, and a file that is not an image."""
    copy_photos(dest)
    (dest / "sub").mkdir()
    shutil.copy2(dest / "coffee.jpg", dest / "sub" / "coffee copy.jpg")
    (dest / "broken.jpg").write_bytes(b"<html>not a photo</html>")
    return dest


def new_index(home: Path, name: str, encoder) -> Index:
    index = Index.create(home, name, ModelSpec(name="offline"), encoder.model_id, encoder.dim)
    index.acquire_lock()
    return index


def snapshot(index: Index, strip: str = "") -> dict[str, tuple]:
    """path (minus the prefix `strip`) -> (catalog fields, vector or None), one entry per row."""
    cat = index.catalog
    ids = [i for f in cat.known_files().values() for i in f.ids]
    rows = cat.image_rows(ids)
    vectors = cat.vectors_for(ids, index.dim)
    out = {}
    for i, row in rows.items():
        key = row["path"][len(strip):] if strip and row["path"].startswith(strip) else row["path"]
        assert key not in out, f"{key} is in the catalog twice"
        out[key] = (tuple(row[k] for k in META), vectors.get(i))
    return out


def assert_same_index(a: Index, b: Index, strip_a: str = "", strip_b: str = "") -> None:
    sa, sb = snapshot(a, strip_a), snapshot(b, strip_b)
    assert sorted(sa) == sorted(sb)
    for path in sa:
        assert sa[path][0] == sb[path][0], path
        va, vb = sa[path][1], sb[path][1]
        assert (va is None) == (vb is None), path
        if va is not None:
            np.testing.assert_allclose(va, vb, atol=1e-5, err_msg=path)
    assert len(a.vector_index()) == len(b.vector_index()) == sum(v is not None for _, v in sa.values())


def top_paths(index: Index, encoder, strip: str = "") -> dict[str, list[tuple[str, float]]]:
    """Each query's top 5 (path, score), ties (a photo and its copy) in path order: the order of
    equal scores follows the row ids, which differ between runs."""
    searcher = Searcher(index, encoder=encoder)
    return {q: sorted(((h.path[len(strip):], round(h.score, 4)) for h in searcher.text(q, k=5)),
                      key=lambda hit: (-hit[1], hit[0]))
            for q in QUERIES}


# -- the cluster ------------------------------------------------------------------------------------------

CRASH_ARMED = "retriever-test-crash-armed"  # file in the folder named by RETRIEVER_TEST_FAULTS


def _inject_faults() -> None:
    """Ray's worker_process_setup_hook, in every worker of the test cluster: while the file
    CRASH_ARMED exists, holding N, the Nth encoder forward pass from then on kills its process
    (os._exit: no exception, no cleanup), as a lost node or an OOM kill would."""
    import retriever.encoders as encoders

    original = encoders.create_encoder

    def create_encoder(spec):
        encoder = original(spec)
        forward = encoder.embed_preprocessed

        def embed_preprocessed(items):
            armed = os.path.join(os.environ["RETRIEVER_TEST_FAULTS"], CRASH_ARMED)
            try:
                with open(armed) as f:
                    left = int(f.read())
            except FileNotFoundError:
                return forward(items)
            if left > 1:
                with open(armed, "w") as f:
                    f.write(str(left - 1))
                return forward(items)
            os.unlink(armed)
            os._exit(1)

        encoder.embed_preprocessed = embed_preprocessed
        return encoder

    encoders.create_encoder = create_encoder


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from ray import cloudpickle  # Ray's own copy: the one that pickles the hook

    faults = tmp_path_factory.mktemp("ray-faults")
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook travels by value
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=256 << 20, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": _inject_faults,
                          "env_vars": {"RETRIEVER_TEST_FAULTS": str(faults)}})
    try:
        yield faults
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def reference(tmp_path_factory, offline_encoder):
    """The collection indexed locally, once: what every Ray run must equal."""
    col = collection(tmp_path_factory.mktemp("ray-col") / "col")
    index = new_index(tmp_path_factory.mktemp("ray-ref"), "local", offline_encoder)
    summary = run_index(index, offline_encoder, [str(col)])
    assert summary.failed == 1 and summary.indexed + summary.copied >= 16
    yield col, index
    index.close()


# -- Ray: same answers, killed actor, interrupted driver --------------------------------------------------


@pytest.mark.slow
def test_ray_run_gives_the_local_catalog_vectors_and_answers_even_when_an_actor_dies(
        ray_cluster, reference, tmp_path, offline_encoder):
    col, local = reference
    armed = ray_cluster / CRASH_ARMED
    armed.write_text("3")  # the encoder actor dies in its third batch of 2, with 2 done and 5 to come
    with new_index(tmp_path, "ray", offline_encoder) as index:
        progress = []
        summary = run_index_ray(index, offline_encoder, [str(col)], on_progress=progress.append, batch_size=2,
                                device="cpu")
        assert not armed.exists(), "the encoder actor was not killed"
        files = 17  # 15 photos, one copy, one broken file
        assert (summary.indexed, summary.failed, summary.interrupted, summary.engine) == (files - 1, 1, False, "ray")
        assert index.catalog.last_run()["summary"]["engine"] == "ray"
        assert summary.backend == "pytorch (cpu) in 1 Ray actor"  # 2 CPUs: one encoder actor, one CPU to decode
        assert progress[-1].done == progress[-1].total == files
        # Each file once, with the vector a local run computes; the same exact-search answers.
        assert_same_index(local, index)
        assert top_paths(index, offline_encoder) == top_paths(local, offline_encoder)
        assert top_paths(index, offline_encoder)["a cat"][0][0].endswith("chelsea.png")
        [(path, reason)] = summary.failures
        assert path.endswith("broken.jpg") and "HTML" in reason


@pytest.mark.slow
def test_an_interrupted_driver_resumes_where_it_stopped(ray_cluster, tmp_path, offline_encoder):
    col = collection(tmp_path / "col")
    with new_index(tmp_path / "home", "ray", offline_encoder) as index:
        def stop_after_two_checkpoints(p):
            if p.done >= 4:
                raise KeyboardInterrupt

        first = run_index_ray(index, offline_encoder, [str(col)], on_progress=stop_after_two_checkpoints,
                              batch_size=2, device="cpu")
        assert first.interrupted and index.catalog.last_run()["status"] == "interrupted"
        saved = {p: f for p, f in index.catalog.known_files().items()}
        assert 4 <= len(saved) < 17
        # Between the runs: a saved photo moves, another is deleted.
        unique = [p for p, f in saved.items() if f.status == "indexed" and "coffee" not in p]  # no copies
        moved, deleted = sorted(unique)[:2]
        (col / "moved").mkdir()
        os.rename(moved, col / "moved" / os.path.basename(moved))
        os.unlink(deleted)

        second = run_index_ray(index, offline_encoder, [str(col)], batch_size=2, device="cpu")
        assert not second.interrupted
        assert (second.moved, second.removed) == (1, 1)
        assert second.unchanged == len(saved) - 2
        after_move = index.catalog.find_by_path(str(col / "moved" / os.path.basename(moved)))
        assert after_move["id"] == saved[moved].id  # the same row: its vector was not computed again

        with new_index(tmp_path / "home", "local", offline_encoder) as local:
            run_index(local, offline_encoder, [str(col)])
            assert_same_index(local, index)


@pytest.mark.slow
def test_cli_engine_ray_on_a_file_url(ray_cluster, reference, tmp_path, offline_encoder):
    col, local = reference
    url = f"file://{col}"
    runner = CliRunner()
    home = ["--home", str(tmp_path / "home")]
    out = runner.invoke(main, ["index", url + "/", "--engine", "ray", "--batch-size", "4", "--model", "offline",
                               "--device", "cpu", "--no-onnx", "--json", "-q", *home])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["engine"], summary["indexed"], summary["failed"]) == ("ray", 16, 1)

    with Index.open(tmp_path / "home", "default") as index:
        assert all(p.startswith(f"file://{col}/") for p in index.catalog.known_files())
        assert_same_index(local, index, strip_b="file://")

    hits = runner.invoke(main, ["search", "a cat", "-k", "3", "--paths", "--no-daemon", "--device", "cpu", *home])
    assert hits.exit_code == 0, hits.output
    expected = [p for p, _ in top_paths(local, offline_encoder)["a cat"][:3]]
    printed = hits.stdout.split("\n")[:3]
    assert printed[0] == f"file://{col}/chelsea.png"
    assert sorted(printed) == sorted(f"file://{p}" for p in expected)

    # Thumbnails read local files only: a URL gets the page's placeholder, not a crash.
    page = runner.invoke(main, ["search", "a cat", "-k", "2", "--html", str(tmp_path / "r.html"), "--no-daemon",
                                "--device", "cpu", *home])
    assert page.exit_code == 0, page.output
    assert "chelsea.png" in (tmp_path / "r.html").read_text()


# -- no Ray needed -------------------------------------------------------------------------------------------


def test_engine_ray_without_ray_says_what_to_install(tmp_path, monkeypatch):
    from retriever.distributed import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'retriever\[distributed\]'"):
        import_ray()
    out = CliRunner().invoke(main, ["index", str(PHOTOS), "--engine", "ray", "--home", str(tmp_path)])
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [
        "Error: --engine ray needs Ray Data: pip install 'retriever[distributed]'"]
    assert not (tmp_path / "default").exists()  # refused before any index or model


def test_address_without_engine_ray_is_refused(tmp_path):
    out = CliRunner().invoke(main, ["index", str(PHOTOS), "--address", "auto", "--home", str(tmp_path)])
    assert out.exit_code == 1 and "--engine ray" in out.output


def test_actors_never_hold_every_cpu(monkeypatch):
    """Encoder actors that took all CPUs would leave none to the decode tasks: the pipeline would
    wait forever (seen with 2 actors on 2 CPUs)."""
    monkeypatch.delenv("RETRIEVER_DEVICE", raising=False)  # auto as a user has it (the suite sets cpu)
    for cpus in (1, 2, 3, 4, 8, 16, 64, 96):
        for actors in (0, 1, 2, 4):
            res = plan_resources({"CPU": float(cpus)}, RayOptions(actors=actors))
            assert res.device == "cpu" and res.gpus_per_actor == 0
            assert res.actors * res.cpus_per_actor < cpus
            assert res.actors == (actors or max(1, cpus // CPUS_PER_ACTOR_GROUP))
    gpu = plan_resources({"CPU": 32.0, "GPU": 4.0}, RayOptions())
    assert (gpu.actors, gpu.gpus_per_actor, gpu.cpus_per_actor, gpu.device) == (4, 1.0, 1.0, "cuda")
    assert plan_resources({"CPU": 2.0}, RayOptions()).cpus_per_actor == 1.0
    # GPU actors leave a CPU to the decode tasks too (the hang the CPU branch guards against).
    for cpus, gpus in ((1, 1), (2, 2), (4, 4), (3, 8), (3, 16), (16, 2)):
        res = plan_resources({"CPU": float(cpus), "GPU": float(gpus)}, RayOptions())
        assert (res.actors, res.device) == (gpus, "cuda") and res.actors * res.cpus_per_actor < cpus


def test_the_device_asked_for_is_what_the_cluster_gives_or_a_clear_error(monkeypatch):
    monkeypatch.delenv("RETRIEVER_DEVICE", raising=False)  # auto as a user has it (the suite sets cpu)
    on_gpus = {"CPU": 16.0, "GPU": 2.0}
    assert plan_resources(on_gpus, RayOptions(), "cpu").device == "cpu"  # the GPUs left alone
    assert plan_resources(on_gpus, RayOptions(), "cuda:1").device == "cuda"  # each actor has its own GPU
    assert plan_resources({"CPU": 16.0}, RayOptions(), "auto").device == "cpu"
    with pytest.raises(DistributedError, match=r"^--device cuda: the Ray cluster has no GPUs"):
        plan_resources({"CPU": 16.0, "GPU": 0.0}, RayOptions(), "cuda")
    # More actors than GPUs would wait for a GPU forever: refused, saying how many there are.
    with pytest.raises(DistributedError, match=r"^--ray-actors 3: the Ray cluster has 2 GPUs .* --ray-actors 2 or fewer"):
        plan_resources(on_gpus, RayOptions(actors=3), "auto")
    assert plan_resources(on_gpus, RayOptions(actors=3), "cpu").actors == 3  # CPU actors: as many as asked


def test_memory_url_collection_indexes_moves_and_drops_like_a_local_one(tmp_path, offline_encoder):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    root = f"/retriever-test-{os.getpid()}"
    try:
        for p in sorted(PHOTOS.iterdir()):
            if p.suffix in (".jpg", ".png"):
                fs.pipe(f"{root}/photos/{p.name}", p.read_bytes())
        fs.pipe(f"{root}/photos/broken.jpg", b"GIF89a truncated")
        fs.pipe(f"{root}/photos/.hidden/secret.jpg", (PHOTOS / "coffee.jpg").read_bytes())
        fs.pipe(f"{root}/photos/notes.txt", b"not a photo")
        n = len([p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png")])
        url = f"memory://{root}/photos"
        with new_index(tmp_path, "mem", offline_encoder) as index:
            first = run_index(index, offline_encoder, [url])
            assert (first.added, first.failed) == (n, 1)
            paths = set(index.catalog.known_files())
            assert f"memory://{root}/photos/chelsea.png" in paths
            assert not any("secret" in p or p.endswith(".txt") for p in paths)
            chelsea = index.catalog.find_by_path(f"memory://{root}/photos/chelsea.png")
            expected = offline_encoder.embed_images([_rgb(PHOTOS / "chelsea.png")])[0]
            np.testing.assert_allclose(index.catalog.vectors_for([chelsea["id"]], index.dim)[chelsea["id"]],
                                       expected, atol=1e-5)

            fs.mv(f"{root}/photos/chelsea.png", f"{root}/photos/cats/chelsea.png")
            fs.rm(f"{root}/photos/coffee.jpg")
            second = run_index(index, offline_encoder, [url + "/"])
            assert (second.moved, second.removed, second.added, second.unchanged) == (1, 1, 0, n - 2 + 1)
            moved = index.catalog.find_by_path(f"memory://{root}/photos/cats/chelsea.png")
            assert moved["id"] == chelsea["id"]
            hits = Searcher(index, encoder=offline_encoder).text("a cat", k=1)
            assert hits[0].path == f"memory://{root}/photos/cats/chelsea.png"
            # `similar` with a photo of the collection given by its URL: its stored vector, itself left out.
            like = Searcher(index, encoder=offline_encoder).image(f"memory://{root}/photos/cats/chelsea.png", k=3)
            assert len(like) == 3 and all(h.path.startswith(f"memory://{root}/photos/") for h in like)
            assert "chelsea" not in " ".join(h.path for h in like)
    finally:
        fs.rm(root, recursive=True)


def test_a_url_that_does_not_exist_is_one_clear_error(tmp_path, offline_encoder):
    pytest.importorskip("fsspec")
    from retriever.errors import RetrieverError

    with new_index(tmp_path, "mem", offline_encoder) as index:
        with pytest.raises(RetrieverError, match="no such file or folder: memory:///nowhere"):
            run_index(index, offline_encoder, ["memory://nowhere"])


def _rgb(path: Path):
    from PIL import Image

    return Image.open(path).convert("RGB")
