"""The collection adapter (`retriever adapt`, retriever/adapter.py) on a synthetic index: no photo,
no model. A word encoder with known vectors stands in for the model: the labels' words ("rex",
"boat", ...) have their own dimensions, every other word (the prompt's, the built-in vocabulary's)
a seeded random vector in the first half; each label's photos lie mostly along a dimension of
their own, so zero-shot the label's text finds them only weakly and the adapter can learn where
they are."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat

import numpy as np
import pytest

from retriever.query import parse
from click.testing import CliRunner

from retriever import adapter as A
from retriever.cli import main
from retriever.encoders.base import ModelSpec
from retriever.index import Index
from retriever.search import Searcher
from retriever.store.catalog import TAG_SET_KEY, utcnow
from retriever.store.concepts import save_concept

DIM = 64
MODEL = "synthetic/words"
WORDS = {"rex": 40, "boat": 41, "beach": 42, "trip": 43, "sunset": 44}  # text dimensions of the label words
PHOTOS = {"rex": 50, "boat": 51, "beach trip": 52, "sunset": 53}  # where each label's photos lie


class WordEncoder:
    """Text -> the normalised sum of its words' vectors (see the module docstring)."""

    model_id, dim = MODEL, DIM

    def __init__(self):
        self.calls = 0

    def embed_texts(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), DIM), np.float64)
        for row, text in zip(out, texts):
            for word in re.findall(r"\w+", text.lower()):
                if word in WORDS:
                    row[WORDS[word]] += 1.0
                else:
                    seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                    row[:32] += np.random.default_rng(seed).standard_normal(32) / np.sqrt(32)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _photo(rng, label: str) -> np.ndarray:
    v = 0.9 * np.eye(DIM)[PHOTOS[label]] + 0.25 * rng.standard_normal(DIM) / np.sqrt(DIM)
    for word in label.split():
        v[WORDS[word]] += 0.3
    return v / np.linalg.norm(v)


def _confuser(rng, word: str) -> np.ndarray:
    """A photo that is not the label's but looks like its text to the zero-shot score."""
    v = 0.5 * np.eye(DIM)[WORDS[word]] + rng.standard_normal(DIM) / np.sqrt(DIM)
    return v / np.linalg.norm(v)


def _rows(vectors: list[np.ndarray], paths: list[str]) -> list[dict]:
    return [{"path": path, "frame_ms": None, "size": 1000 + i, "mtime_ns": 1_600_000_000_000_000_000 + i,
             "fingerprint": f"{i:032x}", "status": "indexed", "error": None, "width": 640, "height": 480,
             "format": "JPEG", "taken_at": None, "camera_make": None, "camera_model": None, "gps_lat": None,
             "gps_lon": None, "vector": v.astype(np.float32)} for i, (v, path) in enumerate(zip(vectors, paths))]


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def index(home):
    """60 photos: 8 of rex, 8 boats, 8 in /photos/beach_trip, 8 sunsets, 12 confusers (rex- and
    boat-like to the zero-shot score), 16 others. Not labelled yet."""
    rng = np.random.default_rng(0)
    vectors, paths = [], []
    for label, folder in (("rex", "misc"), ("boat", "misc"), ("beach trip", "beach_trip"), ("sunset", "misc")):
        for i in range(8):
            vectors.append(_photo(rng, label))
            paths.append(f"/photos/{folder}/{label.replace(' ', '_')}_{i}.jpg")
    for i in range(12):
        vectors.append(_confuser(rng, "rex" if i % 2 else "boat"))
        paths.append(f"/photos/misc/confuser_{i}.jpg")
    for i in range(16):
        v = rng.standard_normal(DIM)
        vectors.append(v / np.linalg.norm(v))
        paths.append(f"/photos/misc/other_{i}.jpg")
    idx = Index.create(home, "default", ModelSpec("synthetic"), MODEL, DIM)
    ids = idx.catalog.write_batch(_rows(vectors, paths))
    idx.ids = dict(zip([os.path.basename(p)[:-4] for p in paths], ids))
    idx.vectors = dict(zip(ids, vectors))
    yield idx
    idx.close()


def label(index, *, concept: str | None = None, tags: tuple[str, ...] = ()) -> None:
    """Give the index a concept (its first 6 photos as examples) and tag labels of the user's own
    (their first 6 photos tagged)."""
    if concept:
        examples = [(1, index.ids[f"{concept}_{i}"], "image", index.vectors[index.ids[f"{concept}_{i}"]])
                    for i in range(6)]
        save_concept(index.catalog, concept, MODEL, DIM, utcnow(), examples, None)
    if tags:
        index.catalog.set_settings({TAG_SET_KEY: {"labels": list(tags), "vocabulary": False, "model_id": MODEL}})
        index.catalog.write_tags([index.ids[f"{t}_{i}"] for t in tags for i in range(6)],
                                 [(index.ids[f"{t}_{i}"], t, 0.9) for t in tags for i in range(6)])


def ap_of(index, query: np.ndarray, name: str) -> float:
    ids = sorted(index.vectors)
    scores = np.array([index.vectors[i] @ query for i in ids])
    relevant = np.array([i in {index.ids[f"{name}_{n}"] for n in range(8)} for i in ids])
    return A.average_precision(scores, relevant)


# -- the fit -------------------------------------------------------------------------------------


def test_the_closed_form_solves_its_normal_equations():
    rng = np.random.default_rng(1)
    t = rng.standard_normal((5, 12))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    targets, anchors = rng.standard_normal((5, 12)), rng.standard_normal((20, 12)) / 4
    params = A.AdapterParams(ridge=0.1, anchor_weight=2.0)
    d = A.fit_residual(t, targets, anchors, params).astype(np.float64)
    # gradient of sum ||D t - r||^2 + mu sum ||D a||^2 + lambda ||D||^2 is zero at D
    kept = anchors[(anchors @ t.T).max(axis=1) < A.ANCHOR_COSINE]
    gradient = (d @ t.T - targets.T) @ t + params.anchor_weight * d @ kept.T @ kept + params.ridge * d
    assert np.abs(gradient).max() < 1e-4


def test_the_map_moves_a_label_query_toward_its_photos_and_holds_others(index):
    label(index, concept="rex", tags=("boat",))
    encoder = WordEncoder()
    report = A.fit_index(index, encoder)
    assert report.sources == {"concepts": 1, "tags": 1, "captions": 0} and report.labels == 2
    adapter = A.load_adapter(index)
    for text, name in (("rex", "rex"), ("a photo of a boat", "boat")):
        q = encoder.embed_texts([text])[0]
        before, after = ap_of(index, q, name), ap_of(index, adapter.apply(q), name)
        assert before < 0.7 and after > before + 0.2 and after > 0.9, (text, before, after)
    # a query that is no label stays where it was, though it shares the labels' prompt words
    q = encoder.embed_texts(["a photo of a sunset"])[0]
    assert float(adapter.apply(q) @ q) > 0.98
    assert ap_of(index, adapter.apply(q), "sunset") >= ap_of(index, q, "sunset") - 0.02
    # the held-out check saw both labels' kept-back photos
    assert report.check["fitted"]["labels"] == 2 and report.check["held_out"] is None
    assert report.check["fitted"]["map_after"] > report.check["fitted"]["map_before"]


def test_folders_and_captions_are_labels_when_asked(index):
    label(index, concept="rex")
    labels, _, skipped = A.collect_labels(index, ["concepts", "folders"])
    assert {(lb.text, lb.source) for lb in labels} == {("rex", "concepts"), ("beach trip", "folders")}
    assert skipped == {"folders whose name means nothing (a camera's, digits)": 1}  # misc
    assert [A.folder_label(n) for n in ("Beach_Trip-2019", "100CANON", "DCIM", "x1", "2019_07")] == \
        ["beach trip 2019", None, None, None, None]


def test_removed_tags_leave_the_label_and_vocabulary_tags_are_not_labels(index):
    from retriever.store.tags import reject_tag

    label(index, tags=("boat",))
    index.catalog.set_settings({TAG_SET_KEY: {"labels": ["boat", "cat"], "vocabulary": True}})
    index.catalog.write_tags([index.ids["sunset_0"]], [(index.ids["sunset_0"], "cat", 0.8)])
    reject_tag(index.catalog, [index.ids["boat_0"]], "boat")
    labels, _, skipped = A.collect_labels(index, ["tags"])
    assert [(lb.text, len(lb.image_ids)) for lb in labels] == [("boat", 5)]
    assert skipped == {"built-in vocabulary tags (not your labels)": 1}


# -- files, versions, another model ------------------------------------------------------------------


def test_fit_save_load_round_trip_and_versions(index):
    label(index, concept="rex", tags=("boat",))
    assert A.adapter_for(index) is None and A.adapter_status(index)["state"] == "none"
    first = A.fit_index(index, WordEncoder(), check=False).adapter
    npz, info = index.folder / A.ADAPTER_FILE, index.folder / A.INFO_FILE
    assert stat.S_IMODE(npz.stat().st_mode) == 0o600 and stat.S_IMODE(info.stat().st_mode) == 0o600
    loaded = A.load_adapter(index)
    assert np.array_equal(loaded.residual, first.residual) and loaded.version == first.version == 1
    assert json.loads(info.read_text())["sources"] == {"concepts": 1, "tags": 1, "captions": 0}
    assert A.adapter_for(index).version == 1 and A.adapter_for(index) is A.adapter_for(index)  # cached
    second = A.fit_index(index, WordEncoder(), check=False, params=A.AdapterParams(strength=0.5)).adapter
    assert second.version == 2 and A.adapter_for(index).version == 2  # a running process sees the new one
    assert not np.allclose(second.residual, first.residual)
    status = A.adapter_status(index)
    assert status["state"] == "active" and status["reason"] is None and status["params"]["strength"] == 0.5
    assert not [p.name for p in index.folder.iterdir() if p.name.endswith(".tmp")]


def test_an_adapter_of_another_model_is_ignored_and_removed(index):
    label(index, concept="rex", tags=("boat",))
    A.fit_index(index, WordEncoder(), check=False)
    assert A.adapter_for(index) is not None
    index.catalog.set_settings({"model_id": "synthetic/other"})
    assert A.load_adapter(index) is None and A.adapter_for(index) is not None  # cached until the file changes
    A._CACHE.clear()  # a new process
    assert A.adapter_for(index) is None
    status = A.adapter_status(index)
    assert status["state"] == "ignored" and "synthetic/words" in status["reason"] and "--remove" in status["reason"]
    assert A.remove_adapter(index) and A.adapter_status(index)["state"] == "none"
    assert not A.remove_adapter(index)


def test_an_unreadable_adapter_is_ignored(index):
    (index.folder / A.ADAPTER_FILE).write_bytes(b"not a zip")
    assert A.load_adapter(index) is None and A.adapter_for(index) is None
    assert A.adapter_status(index)["state"] == "ignored"


def test_without_the_adapter_searches_are_unchanged(index):
    label(index, concept="rex", tags=("boat",))
    vector = WordEncoder().embed_texts(["rex"])[0]
    assert A.adapt_query(None, vector) is vector
    searcher = Searcher(index, encoder=WordEncoder())
    before = [(h.id, h.score) for h in searcher.text("rex", k=20)]
    generation = index.catalog.generation()
    adapter = A.fit_index(index, WordEncoder()).adapter
    fresh = Searcher(index, encoder=WordEncoder())
    after = [(h.id, h.score) for h in fresh.text("rex", k=20, adapter=False)]  # --no-adapter
    assert after == before and index.catalog.generation() == generation  # nothing stored changed
    assert [(h.id, h.score) for h in fresh.query(parse(["rex"]), k=20, adapter=False)] == before
    adapted = [h.id for h in searcher.by_vector(A.adapt_query(adapter, vector), k=8)]
    assert set(adapted) == {index.ids[f"rex_{i}"] for i in range(8)}
    assert set(adapted) != {i for i, _ in before[:8]}
    # searches use the stored adapter by default: text terms only
    assert [h.id for h in fresh.text("rex", k=8)] == adapted
    assert {h.id for h in fresh.query(parse(["rex"]), k=8)} == set(adapted)


# -- errors and the command line -----------------------------------------------------------------


def test_no_labels_and_too_few_labels_are_typed_errors(index):
    encoder = WordEncoder()
    with pytest.raises(A.NoLabelsError, match="nothing to fit an adapter from.*--folders-as-labels"):
        A.fit_index(index, encoder)
    label(index, concept="rex")
    with pytest.raises(A.TooFewLabelsError, match=f"needs at least {A.MIN_LABELS}"):
        A.fit_index(index, encoder)
    assert encoder.calls == 0 and not (index.folder / A.ADAPTER_FILE).exists()


@pytest.fixture
def cli(index, home, monkeypatch):
    monkeypatch.setattr(Index, "load_encoder", lambda self, device="auto", batch_size=None: WordEncoder())
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, ["adapt", *map(str, args), "--home", str(home)], catch_exceptions=False)

    return invoke


@pytest.mark.parametrize("args,message", [
    ((), "nothing to fit an adapter from"),
    (("--status", "--remove"), "use --status or --remove, not both"),
    (("--remove", "--no-tags"), "--remove takes no label options"),
    (("--no-concepts", "--no-tags", "--no-captions"), "every label source is switched off"),
])
def test_cli_errors_are_one_line(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_fits_shows_and_removes(cli, index, home, monkeypatch):
    label(index, concept="rex", tags=("boat",))
    result = cli("--folders-as-labels", "-q")
    assert result.exit_code == 0, result.output
    assert "3 labels" in result.stdout and "1 concepts, 1 tags, 1 folders" in result.stdout
    assert "held-out check" in result.stdout and result.stderr == ""
    fitted = json.loads(cli("--json", "-q", "--no-captions").stdout)
    assert fitted["version"] == 2 and fitted["sources"] == {"concepts": 1, "tags": 1}
    status = json.loads(cli("--status", "--json").stdout)
    assert status["state"] == "active" and status["version"] == 2
    assert "in use" in cli("--status").stdout
    monkeypatch.setenv("RETRIEVER_NO_DAEMON", "1")

    def search(*extra):
        result = CliRunner().invoke(main, ["search", "rex", "-k", "8", "--paths", "--home", str(home), *extra])
        assert result.exit_code == 0, result.output
        return result.stdout.split()

    adapted, plain = search("--no-keywords"), search("--no-keywords", "--no-adapter")  # no file-name matches
    assert {p.rsplit("/", 1)[-1] for p in adapted} == {f"rex_{i}.jpg" for i in range(8)}
    assert sum("rex_" in p for p in plain) < 8
    assert json.loads(cli("--remove", "--json").stdout) == {"index": "default", "removed": True}
    assert "no adapter" in cli("--status").stdout
