"""A new index's first export in a child process (retriever.onnx.prepare): the indexing process
imports no torch, gets the same vectors as an export made in-process, and survives a child that
dies or an interrupted run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from retriever.index import Index, open_for_writing
from retriever.indexer import IndexOptions, run_index
from tests.conftest import PHOTOS, REPO

pytest.importorskip("onnxruntime")

CHILD_SCRIPT = """
import json, sys
import retriever
new = retriever.NewIndex(model=sys.argv[2], pretrained=sys.argv[3], backend="onnx")
with retriever.open(home=sys.argv[1], writable=True, new=new) as photos:
    torch_at_open = "torch" in sys.modules
    summary = photos.index([sys.argv[4]])
    status = photos.status()
hits = retriever.open(home=sys.argv[1]).search("a cat", k=5, keywords=False)
print(json.dumps({"torch": torch_at_open or "torch" in sys.modules, "backend": summary.backend,
                  "indexed": summary.indexed, "onnx_ok": bool(status["onnx"] and status["onnx"].get("ok")),
                  "preparation": summary.as_dict().get("preparation"),
                  "hits": [[h.path, h.score] for h in hits]}))
"""


def test_a_new_index_is_exported_by_a_child_and_this_process_imports_no_torch(tmp_path, tiny_clip):
    env_cache = tmp_path / "cache"
    out = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, str(tmp_path / "child-home"), tiny_clip["config"], tiny_clip["pt"],
         str(PHOTOS)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**__import__("os").environ, "RETRIEVER_CACHE_DIR": str(env_cache)})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False and got["backend"] == "onnxruntime" and got["onnx_ok"]
    assert got["indexed"] == len([p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png", ".webp")])
    assert list((env_cache / "onnx").glob("*/manifest.json")), "the child's export is in the cache"
    # the run summary says what the first run did beside indexing
    assert got["preparation"].startswith("first index of this model on this machine: exported for ONNX Runtime in ")

    # The same model exported and encoded in this process (torch already here): the same ranking.
    index, encoder, _ = open_for_writing(tmp_path / "here", "default", model=tiny_clip["config"],
                                         pretrained=tiny_clip["pt"], backend="onnx", cache_dir=tmp_path / "c2",
                                         prepare_in_child=False)
    with index:
        assert type(encoder).__name__ == "OnnxEncoder"
        run_index(index, encoder, [str(PHOTOS)], IndexOptions())
    import retriever

    hits = retriever.open(home=tmp_path / "here").search("a cat", k=5, keywords=False)
    assert [h.path for h in hits] == [p for p, _ in got["hits"]]
    assert [round(h.score, 4) for h in hits] == pytest.approx([s for _, s in got["hits"]], abs=2e-4)


def test_a_child_that_dies_leaves_the_export_to_this_process(tmp_path, tiny_clip):
    index, encoder, _ = open_for_writing(tmp_path / "h", "default", model=tiny_clip["config"],
                                         pretrained=tiny_clip["pt"], cache_dir=tmp_path / "cache",
                                         prepare_in_child=True)
    assert type(encoder).__name__ == "PendingEncoder" and encoder.resolved is None
    encoder.preparation.process.kill()  # after the model was loaded there, before its export
    messages: list[str] = []
    encoder._on_backend = messages.append
    with index:
        summary = run_index(index, encoder, [str(PHOTOS)], IndexOptions())
        encoder.finish()
        status = index.status()
    assert summary.indexed == len([p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png", ".webp")]) and summary.failed == 0
    assert status["onnx"]["ok"], status["onnx"]
    assert any("preparation failed" in m for m in messages), messages
    with Index.open(tmp_path / "h", "default") as again:
        assert again.status()["images"] == summary.indexed and again.status()["onnx"]["ok"]


def test_an_interrupted_creation_stops_the_child_and_uses_no_export(tmp_path, tiny_clip):
    from retriever import api
    from retriever.onnx.cache import ModelCache

    index, pending, _ = open_for_writing(tmp_path / "h", "default", model=tiny_clip["config"],
                                         pretrained=tiny_clip["pt"], cache_dir=tmp_path / "cache",
                                         prepare_in_child=True)
    process = pending.preparation.process
    with pytest.raises(KeyboardInterrupt), api.Collection(index, indexing_encoder=pending):
        raise KeyboardInterrupt  # Ctrl-C while the child exports
    assert process.poll() is not None, "the child is stopped"
    assert ModelCache(tmp_path / "cache").lookup(pending.model_id) is None
    with Index.open(tmp_path / "h", "default") as idx:
        assert idx.status()["onnx"] is None  # queries on PyTorch until `retriever optimize` exports


def test_a_first_index_encodes_with_pytorch_while_the_export_goes_on_in_the_background(tmp_path, tiny_clip, monkeypatch):
    """Photos are ready before the child is done (forced here: `ready` says no until the run ends):
    PyTorch encodes them, the run ends without waiting, and the export the child goes on to make
    is found by searches and recorded by the next writing run."""
    import numpy as np

    from retriever.onnx import ONNX_SETTING, OnnxEncoder, onnx_encoder_for, valid_record
    from retriever.onnx.prepare import Preparation

    monkeypatch.setattr(Preparation, "ready", lambda self: False)
    messages: list[str] = []
    home, cache = tmp_path / "home", tmp_path / "cache"
    index, encoder, _ = open_for_writing(home, "default", model=tiny_clip["config"], pretrained=tiny_clip["pt"],
                                         cache_dir=cache, prepare_in_child=True, on_backend=messages.append)
    with index:
        summary = run_index(index, encoder, [str(PHOTOS)], IndexOptions())
        encoder.finish()
        assert summary.failed == 0 and summary.indexed > 10
        assert encoder.interim_batches >= 1 and any(m.startswith("PyTorch while") for m in messages), messages
        assert "goes on in the background" in encoder.outcome
        setting = index.catalog.get_setting(ONNX_SETTING)
        assert setting["pending"] and not setting["ok"]
    monkeypatch.undo()
    encoder.preparation.process.wait(timeout=240)  # the child finishes on its own, unwatched

    reader = Index.open(home, "default")
    with reader:
        assert valid_record(reader) is not None  # searches find the finished export at once
        onnx = onnx_encoder_for(reader)
        assert isinstance(onnx, OnnxEncoder)
        paths = sorted(p for p in PHOTOS.iterdir() if p.suffix == ".jpg")[:3]
        from PIL import Image

        fresh = onnx.embed_images([Image.open(p).convert("RGB") for p in paths])
        pytorch = encoder.resolved.embed_images([Image.open(p).convert("RGB") for p in paths])
        assert float(np.min(np.sum(fresh * pytorch, axis=1))) > 0.9999  # the same space, whichever encoded
    again, _, _ = open_for_writing(home, "default", model=None, pretrained=None, cache_dir=cache)
    with again:
        setting = again.catalog.get_setting(ONNX_SETTING)
        assert setting["ok"] and not setting.get("pending")  # recorded by the next writing run
