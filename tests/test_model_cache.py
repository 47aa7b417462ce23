"""The shared model cache (retriever.onnx.cache): one export per machine and model, safe against
concurrent creators, kills, damaged entries and caches that cannot be written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from retriever.onnx.cache import CacheError, ModelCache, entry_name
from retriever.onnx.record import TOLERANCE
from tests.conftest import PHOTOS, REPO

pytest.importorskip("onnxruntime")

MODEL = "open_clip/some-model/file-0123456789abcdef"


def fake_build(calls: list, payload: bytes = b"weights" * 1000, delay: float = 0.0):
    def build(folder: Path) -> dict:
        calls.append(folder)
        time.sleep(delay)
        (folder / "image.onnx").write_bytes(payload)
        (folder / "text.onnx").write_bytes(payload[::-1])
        return {"ok": True, "model_id": MODEL, "dim": 8}

    return build


def test_an_entry_is_built_once_and_then_found(tmp_path):
    cache, calls = ModelCache(tmp_path), []
    entry, built = cache.get_or_create(MODEL, fake_build(calls))
    again, built_again = cache.get_or_create(MODEL, fake_build(calls))
    assert (built, built_again) == (True, False) and len(calls) == 1
    assert entry.folder == again.folder == tmp_path / "onnx" / entry_name(MODEL, TOLERANCE)
    assert entry.record["cache_folder"] == str(entry.folder) and entry.record["ok"]
    assert cache.lookup("open_clip/another/model") is None


def test_concurrent_creators_build_once(tmp_path):
    calls: list = []
    results = []

    def create():
        results.append(ModelCache(tmp_path).get_or_create(MODEL, fake_build(calls, delay=0.3)))

    threads = [threading.Thread(target=create) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(built for _, built in results) == [False, False, True]
    assert len({entry.folder for entry, _ in results}) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_entry_is_never_used_and_is_built_again(tmp_path, damage):
    cache, calls = ModelCache(tmp_path), []
    entry, _ = cache.get_or_create(MODEL, fake_build(calls))
    target = entry.folder / "image.onnx"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # the same size: only the hash can tell
        time.sleep(0.01)
        target.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    else:
        target.unlink()
    assert cache.lookup(MODEL) is None
    entry, built = cache.get_or_create(MODEL, fake_build(calls))
    assert built and len(calls) == 2 and (entry.folder / "image.onnx").read_bytes() == data
    assert cache.lookup(MODEL) is not None


def test_a_build_killed_midway_leaves_nothing_that_is_used(tmp_path):
    code = f"""
import os, signal
from pathlib import Path
from retriever.onnx.cache import ModelCache
def build(folder):
    (Path(folder) / "image.onnx").write_bytes(b"half a model")
    os.kill(os.getpid(), signal.SIGKILL)
ModelCache({str(tmp_path)!r}).get_or_create({MODEL!r}, build)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True)
    assert proc.returncode == -9
    leftovers = list((tmp_path / "onnx").glob(".*.tmp"))
    assert leftovers, "the killed build's temporary folder"
    cache, calls = ModelCache(tmp_path), []
    assert cache.lookup(MODEL) is None
    entry, built = cache.get_or_create(MODEL, fake_build(calls))
    assert built and not any(p.exists() for p in leftovers)


def test_a_full_disk_is_a_cache_error_and_leaves_nothing(tmp_path):
    def build(folder):
        (folder / "image.onnx").write_bytes(b"x")
        raise OSError(28, "No space left on device")

    with pytest.raises(CacheError, match="No space left on device.*RETRIEVER_CACHE_DIR"):
        ModelCache(tmp_path).get_or_create(MODEL, build)
    assert not list((tmp_path / "onnx").glob(".*.tmp")) and ModelCache(tmp_path).lookup(MODEL) is None


def test_an_unwritable_cache_leaves_a_working_index_on_pytorch(tiny_index, tiny_encoder, monkeypatch):
    from retriever.indexer import run_index
    from retriever.onnx import export_index, onnx_encoder_for
    from retriever.search import Searcher

    monkeypatch.setenv("RETRIEVER_CACHE_DIR", "/dev/null/cache")  # not a folder: nothing can be written there
    run_index(tiny_index, tiny_encoder, [str(PHOTOS)])
    report = export_index(tiny_index, tiny_encoder)
    assert not report.ok and "cannot write the model cache /dev/null/cache" in report.reason
    assert "RETRIEVER_CACHE_DIR" in report.reason and "\n" not in report.reason
    assert onnx_encoder_for(tiny_index) is None
    assert tiny_index.status()["onnx"]["usable"] is False
    assert Searcher(tiny_index, device="cpu").text("a cat", k=3)  # still searchable, on PyTorch


def test_a_second_index_of_the_model_exports_nothing_and_needs_no_torch(tmp_path, tiny_clip, monkeypatch):
    import retriever.onnx
    import retriever.onnx.export
    from retriever.index import open_for_writing

    def first(name):
        index, encoder, _ = open_for_writing(tmp_path / "home", name, model=tiny_clip["config"],
                                             pretrained=tiny_clip["pt"], device="cpu")
        return index, encoder

    index, _ = first("a")
    record = index.catalog.get_setting("onnx")
    index.close()
    assert record["ok"] and record["cache"]

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(retriever.onnx.export, "export_onnx", no_export)
    monkeypatch.setattr(retriever.onnx, "measure_indexing", no_export)
    fast = {**record["indexing"], "backend": "onnx"}  # as if ONNX Runtime had measured faster here
    manifest_path = Path(record["cache_folder"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["record"]["indexing"] = fast
    manifest_path.write_text(json.dumps(manifest))
    import retriever.encoders

    monkeypatch.setattr(retriever.encoders, "create_encoder", no_export)  # no PyTorch model loaded
    index, encoder = first("b")
    try:
        assert type(encoder).__name__ == "OnnxEncoder"
        second = index.catalog.get_setting("onnx")
        assert second["cache_folder"] == record["cache_folder"] and index.status()["onnx"]["usable"]
        assert json.loads((index.folder / "onnx.json").read_text())["cache"] == record["cache"]
    finally:
        index.close()
    users = {e["name"]: e["users"] for e in ModelCache().entries()}
    assert sorted(Path(u).name for u in users[record["cache"]]) == ["a", "b"]


def test_cache_list_and_prune(tmp_path):
    from retriever.cli import main

    cache = ModelCache(tmp_path)
    used, _ = cache.get_or_create(MODEL, fake_build([]))
    unused, _ = cache.get_or_create("open_clip/other/tag", fake_build([]))
    index_folder = tmp_path / "home" / "default"
    index_folder.mkdir(parents=True)
    (index_folder / "onnx.json").write_text(json.dumps({"cache": used.name}))
    used.add_user(index_folder)
    listed = CliRunner().invoke(main, ["cache", "list", "--json", "--cache-dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    rows = {json.loads(line)["name"]: json.loads(line) for line in listed.stdout.splitlines()}
    assert rows[used.name]["users"] == [str(index_folder)] and rows[unused.name]["users"] == []
    assert rows[used.name]["bytes"] > 14000 and rows[used.name]["intact"]
    dry = CliRunner().invoke(main, ["cache", "prune", "--dry-run", "--json", "--cache-dir", str(tmp_path)])
    assert json.loads(dry.stdout)["removed"] == [unused.name] and unused.folder.exists()
    pruned = CliRunner().invoke(main, ["cache", "prune", "--cache-dir", str(tmp_path)])
    assert pruned.exit_code == 0 and f"removed {unused.name}" in pruned.output
    assert not unused.folder.exists() and used.folder.exists()
    assert os.listdir(tmp_path / "onnx")  # the used entry (and its lock files) stay


def test_a_weights_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    """The model id of `--pretrained FILE` hashes the file; the hash is remembered while the file
    is unchanged (its stat identity), and a change of any kind hashes it again."""
    from retriever import digests

    monkeypatch.setenv("RETRIEVER_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"a" * 5000)
    hashed: list[str] = []
    real = digests.hash_file
    monkeypatch.setattr(digests, "hash_file", lambda p: hashed.append(str(p)) or real(p))
    first = digests.file_digest(weights)
    assert digests.file_digest(weights) == first and len(hashed) == 1
    assert oct((tmp_path / "cache" / digests.MEMO).stat().st_mode & 0o777) == "0o600"
    st = weights.stat()
    weights.write_bytes(b"b" * 5000)  # the same size, and the old mtime put back
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = digests.file_digest(weights)
    assert len(hashed) == 2 and second != first
    (tmp_path / "cache" / digests.MEMO).write_text("{not json")  # a damaged memo: hashed again
    assert digests.file_digest(weights) == second and len(hashed) == 3
