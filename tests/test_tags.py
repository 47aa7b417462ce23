"""Zero-shot tags on the example photos with the offline encoder; their storage, upkeep and CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from retriever.store import catalog as catalog_mod
from retriever.store.catalog import Catalog
from retriever.cli import main
from retriever.index import Index
from retriever.tags import (
    DEFAULT_TEMPLATES,
    DEFAULT_THRESHOLD,
    TagError,
    check_labels,
    label_probabilities,
    logit_scale,
    normalize_label,
    parse_labels,
    read_labels_file,
    tag_index,
)
from tests.conftest import PHOTOS

FIVE = ["cat", "coffee", "rocket", "flower", "coins"]
TEN = FIVE + ["astronaut", "clock", "brick wall", "grass", "palace"]
# What the offline encoder gets right with FIVE (coins.png goes to "flower": its ImageNet
# posterior has no coin class to speak of): a confident, single tag each.
CONFIDENT = {"chelsea.png": "cat", "coffee.jpg": "coffee", "rocket.jpg": "rocket", "flower.jpg": "flower"}


class CachedTextEncoder:
    """The offline encoder with its text embeddings remembered: tests re-use label sets."""

    def __init__(self, inner):
        self.inner, self.model_id, self.dim, self.cache = inner, inner.model_id, inner.dim, {}

    def embed_texts(self, texts):
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.inner.embed_texts(missing)))
        return np.stack([self.cache[t] for t in texts])


@pytest.fixture(scope="module")
def encoder(offline_encoder):
    return CachedTextEncoder(offline_encoder)


@pytest.fixture
def photos_index(offline_index, tmp_path):
    """A writable copy of the offline index of examples/photos: same vectors, nothing re-encoded."""
    home = tmp_path / "home"
    (home / "default").mkdir(parents=True)
    with offline_index.catalog.engine.connect() as conn:
        conn.exec_driver_sql("VACUUM INTO ?", (str(home / "default" / "catalog.db"),))
    index = Index.open(home, "default")
    yield index
    index.close()


def no_encoder():
    raise AssertionError("this run should not need the encoder")


def ids_by_name(index) -> dict[str, int]:
    return {os.path.basename(f.path): f.id for f in index.catalog.known_files().values()}


def tags_by_name(index) -> dict[str, list[tuple[str, float]]]:
    return {name: index.catalog.image_tags(i) for name, i in ids_by_name(index).items()}


def all_tag_rows(index) -> list[tuple[int, str, float]]:
    with index.catalog.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(catalog_mod.tags).order_by(text("image_id, label")))]


# -- labels -----------------------------------------------------------------------------------------


def test_labels_are_normalised_and_checked(tmp_path):
    assert normalize_label("  Brick   WALL \n") == "brick wall"
    assert parse_labels(" Beach , DOG,,cat,\n receipt") == ["beach", "dog", "cat", "receipt"]
    with pytest.raises(TagError, match="no labels"):
        parse_labels(" , ,")
    assert check_labels(parse_labels("cat, dog")) == ["cat", "dog"]
    with pytest.raises(TagError, match="duplicate labels: cat"):
        check_labels(parse_labels("cat, dog, Cat "))
    with pytest.raises(TagError, match="would tag every image"):
        check_labels(parse_labels("cat"))
    with pytest.raises(TagError, match="longer than 100"):
        check_labels(["x" * 101, "y"])
    with pytest.raises(TagError, match="labels file not found"):
        read_labels_file(tmp_path / "missing.txt")
    f = tmp_path / "labels.txt"
    f.write_text("# what to look for\ncat\n\nDog, beach\n  # not this\n")
    assert read_labels_file(f) == ["cat", "dog", "beach"]
    f.write_text("# only a comment\n")
    with pytest.raises(TagError, match="labels.txt: no labels"):
        read_labels_file(f)


# -- schema -----------------------------------------------------------------------------------------


def test_migration_002_creates_the_tags_table(tmp_path):
    cat = Catalog(tmp_path / "c.db", create=True)
    assert "002_tags" in cat.applied_migrations()
    with cat.engine.connect() as conn:
        columns = [tuple(r[1:6]) for r in conn.exec_driver_sql("PRAGMA table_info(tags)")]
        indexes = {r[1]: r for r in conn.exec_driver_sql("PRAGMA index_list(tags)")}
        label_index = [r[2] for r in conn.exec_driver_sql("PRAGMA index_info(ix_tags_label)")]
    # (name, type, notnull, default, pk position)
    assert columns == [
        ("image_id", "INTEGER", 1, None, 1),
        ("label", "TEXT", 1, None, 2),
        ("score", "REAL", 1, None, 0),
    ]
    assert "ix_tags_label" in indexes and label_index == ["label"]


def test_a_catalog_from_before_tags_upgrades_and_can_be_tagged(offline_index, encoder, tmp_path, monkeypatch):
    # A catalog as retriever wrote it before 002_tags (only 001_initial), holding the example
    # photos' real rows and vectors.
    folder = tmp_path / "home" / "default"
    folder.mkdir(parents=True)
    monkeypatch.setattr(catalog_mod, "MIGRATIONS", catalog_mod.MIGRATIONS[:1])
    old = Catalog(folder / "catalog.db", create=True)
    with old.engine.begin() as conn:
        conn.exec_driver_sql("ATTACH DATABASE ? AS src", (str(offline_index.catalog.path),))
        for table in ("settings", "images", "vectors"):
            columns = ", ".join(r[1] for r in conn.exec_driver_sql(f"PRAGMA main.table_info({table})"))
            conn.exec_driver_sql(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM src.{table}")
    with old.engine.connect() as conn:
        assert not conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'tags'").all()
    old.close()
    monkeypatch.undo()

    upgraded = Index.open(folder.parent, "default")
    try:
        applied = upgraded.catalog.applied_migrations()
        assert applied[:2] == ["001_initial", "002_tags"] and applied == [n for n, _ in catalog_mod.MIGRATIONS]
        assert upgraded.catalog.counts()["stored_vectors"] == 15  # the data came through
        run = tag_index(upgraded, labels=FIVE, encoder=encoder)
        assert run.scored == 15 and run.tagged == 15
        assert upgraded.catalog.tagged_ids("cat") == [ids_by_name(upgraded)["chelsea.png"]]
    finally:
        upgraded.close()
    reopened = Catalog(folder / "catalog.db")
    assert reopened.migrate() == []  # applied once
    reopened.close()


# -- tagging the example photos ---------------------------------------------------------------------


def test_each_photo_gets_its_subject_and_unsure_photos_say_so(photos_index, encoder):
    run = tag_index(photos_index, labels=[" Cat", "COFFEE", "rocket", "flower", "coins "], encoder=encoder)
    assert run.change == "new" and run.labels == FIVE and run.threshold == DEFAULT_THRESHOLD
    assert (run.scored, run.tagged, run.untagged) == (15, 15, 0)
    tags = tags_by_name(photos_index)
    assert all(tags.values()), "every image has at least one tag"
    for name, label in CONFIDENT.items():
        assert [t for t, _ in tags[name]] == [label], name
        assert tags[name][0][1] > 0.95
    # Photos that show none of the labels still get their closest one, with a low probability.
    others = [score for name, t in tags.items() if name not in CONFIDENT for _, score in t[:1]]
    assert len(others) == 11 and max(others) < 0.9
    assert sum(run.counts.values()) == len(all_tag_rows(photos_index))
    assert photos_index.catalog.tagged_ids(" CAT ") == [ids_by_name(photos_index)["chelsea.png"]]
    assert photos_index.catalog.tagged_ids("dog") == []


def test_a_photo_that_shows_two_labels_keeps_both(photos_index, encoder):
    tag_index(photos_index, labels=TEN, encoder=encoder)
    tags = tags_by_name(photos_index)
    assert tags["china.jpg"][0][0] == "palace"
    assert tags["chelsea.png"][0][0] == "cat" and len(tags["chelsea.png"]) == 1
    assert {"grass", "flower"} <= {label for label, _ in tags["grass.png"]}


def test_a_higher_threshold_keeps_fewer_labels(photos_index, encoder):
    kept = {}
    for threshold in (0.05, 0.25, 0.5, 1.0):
        run = tag_index(photos_index, labels=TEN, threshold=threshold, encoder=encoder)
        kept[threshold] = {(i, label) for i, label, _ in all_tag_rows(photos_index)}
        assert all(score >= threshold or score == max(s for _, s in photos_index.catalog.image_tags(i))
                   for i, _, score in all_tag_rows(photos_index))
        assert run.tagged == 15
    assert kept[0.05] > kept[0.25] > kept[0.5] >= kept[1.0]
    assert len(kept[1.0]) == 15  # the top label only
    run = tag_index(photos_index, threshold=0.25, encoder=no_encoder)  # the stored labels: no model
    assert run.change == "threshold" and {(i, label) for i, label, _ in all_tag_rows(photos_index)} == kept[0.25]


def test_scores_are_the_softmax_of_the_ensemble_at_the_offline_scale(photos_index, offline_encoder, encoder):
    tag_index(photos_index, labels=FIVE, threshold=0.0, encoder=encoder)  # threshold 0: every label
    ids = ids_by_name(photos_index)
    vectors = photos_index.catalog.vectors_for(list(ids.values()), photos_index.dim)
    # By hand: each prompt unit length, the mean per label re-normalised, softmax at 60.
    prompts = offline_encoder.embed_texts([t.replace("{}", label) for label in FIVE for t in DEFAULT_TEMPLATES])
    labels = prompts.reshape(len(FIVE), len(DEFAULT_TEMPLATES), -1).mean(axis=1)
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    assert logit_scale(offline_encoder) == 60.0
    for name, image_id in ids.items():
        logits = 60.0 * (labels @ vectors[image_id])
        expected = np.exp(logits - logits.max())
        expected /= expected.sum()
        stored = dict(photos_index.catalog.image_tags(image_id))
        assert [stored[label] for label in FIVE] == pytest.approx(expected.tolist(), abs=1e-4), name


def test_logit_scale_comes_from_the_model():
    from_model = SimpleNamespace(model_id="open_clip/x", model=SimpleNamespace(logit_scale=math.log(50.0)))
    assert logit_scale(from_model) == pytest.approx(50.0)
    assert logit_scale(SimpleNamespace(model_id="other/x")) == 100.0


@pytest.mark.slow
def test_logit_scale_of_an_open_clip_model(tiny_encoder):
    assert logit_scale(tiny_encoder) == pytest.approx(float(tiny_encoder.model.logit_scale.detach().exp()))


# -- upkeep: removed, changed and new images --------------------------------------------------------


def test_tags_go_with_their_image(photos_index, encoder):
    tag_index(photos_index, labels=FIVE, encoder=encoder)
    ids = ids_by_name(photos_index)
    photos_index.acquire_lock()
    photos_index.remove_images([ids["chelsea.png"]])  # `retriever remove`, through Catalog.remove
    photos_index.catalog.write_batch([], remove_ids=[ids["coffee.jpg"]])  # a file gone from disk
    photos_index.catalog.write_batch(  # a file that now fails to decode
        [{"id": ids["rocket.jpg"], "path": str(PHOTOS / "rocket.jpg"), "status": "failed", "error": "x",
          "vector": None}]
    )
    gone = {ids["chelsea.png"], ids["coffee.jpg"], ids["rocket.jpg"]}
    assert not gone & {i for i, _, _ in all_tag_rows(photos_index)}
    assert photos_index.catalog.tagged_ids("cat") == []
    assert photos_index.catalog.tag_coverage() == {"tagged": 12, "untagged": 0}
    # A tag for an image without a vector is never written.
    photos_index.catalog.write_tags([ids["rocket.jpg"]], [(ids["rocket.jpg"], "rocket", 0.9)])
    assert photos_index.catalog.image_tags(ids["rocket.jpg"]) == []


def test_changed_content_drops_stale_tags_and_the_next_run_retags(photos_index, encoder):
    tag_index(photos_index, labels=FIVE, encoder=encoder)
    ids = ids_by_name(photos_index)
    coffee = photos_index.catalog.vectors_for([ids["coffee.jpg"]], photos_index.dim)[ids["coffee.jpg"]]
    # chelsea.png's file now holds a cup of coffee: same id, new vector, in one checkpoint.
    photos_index.catalog.write_batch(
        [{"id": ids["chelsea.png"], "path": str(PHOTOS / "chelsea.png"), "vector": coffee}]
    )
    assert photos_index.catalog.image_tags(ids["chelsea.png"]) == []
    assert photos_index.catalog.tag_coverage() == {"tagged": 14, "untagged": 1}
    run = tag_index(photos_index, encoder=no_encoder)
    assert run.change is None and run.scored == 1
    assert [label for label, _ in photos_index.catalog.image_tags(ids["chelsea.png"])] == ["coffee"]
    assert photos_index.catalog.tagged_ids("cat") == []


def test_reindexing_new_and_changed_files_then_tagging_scores_only_them(photos_index, offline_encoder, encoder,
                                                                        tmp_path):
    from retriever.indexer import run_index

    tag_index(photos_index, labels=FIVE, encoder=encoder)
    before = all_tag_rows(photos_index)
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy2(PHOTOS / "chelsea.png", folder / "pet.png")
    shutil.copy2(PHOTOS / "rocket.jpg", folder / "launch.jpg")
    photos_index.acquire_lock()
    run_index(photos_index, offline_encoder, [str(folder)])  # known content: vectors reused, no encoding

    run = tag_index(photos_index, encoder=no_encoder)
    assert (run.change, run.scored, run.tagged) == (None, 2, 17)
    tags = tags_by_name(photos_index)
    assert [t for t, _ in tags["pet.png"]] == ["cat"] and [t for t, _ in tags["launch.jpg"]] == ["rocket"]
    assert set(before) <= set(all_tag_rows(photos_index))  # nothing else was touched

    # pet.png now shows a cup of coffee: re-indexing drops its cat tag, tagging gives it coffee.
    shutil.copyfile(PHOTOS / "coffee.jpg", folder / "pet.png")
    os.utime(folder / "pet.png", ns=(1, 1))
    run_index(photos_index, offline_encoder, [str(folder)])
    assert not tags_by_name(photos_index)["pet.png"]
    assert tag_index(photos_index, encoder=no_encoder).scored == 1
    assert [t for t, _ in tags_by_name(photos_index)["pet.png"]] == ["coffee"]
    assert len(photos_index.catalog.tagged_ids("cat")) == 1  # chelsea.png only


def test_chunks_and_an_interrupted_run(photos_index, encoder):
    seen = []

    def stop_after_first_chunk(done, total):
        seen.append((done, total))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tag_index(photos_index, labels=FIVE, encoder=encoder, chunk=4, on_progress=stop_after_first_chunk)
    assert seen == [(4, 15)] and photos_index.catalog.tag_coverage() == {"tagged": 4, "untagged": 11}
    progress = []
    run = tag_index(photos_index, encoder=no_encoder, chunk=4, on_progress=lambda d, t: progress.append((d, t)))
    assert run.scored == 11 and progress == [(4, 11), (8, 11), (11, 11)]
    chunked = all_tag_rows(photos_index)
    tag_index(photos_index, labels=TEN, encoder=encoder)
    tag_index(photos_index, labels=FIVE, encoder=encoder)  # all at once
    assert [(i, label) for i, label, _ in all_tag_rows(photos_index)] == [(i, label) for i, label, _ in chunked]
    assert [s for *_, s in all_tag_rows(photos_index)] == pytest.approx([s for *_, s in chunked], abs=1e-6)


# -- the label set ----------------------------------------------------------------------------------


class CountingEncoder:
    def __init__(self, inner):
        self.inner, self.model_id, self.texts = inner, inner.model_id, []

    def embed_texts(self, texts):
        self.texts.extend(texts)
        return self.inner.embed_texts(texts)


def test_the_label_set_is_stored_replaced_and_extended(photos_index, encoder):
    with pytest.raises(TagError, match="no label set yet"):
        tag_index(photos_index, encoder=no_encoder)
    with pytest.raises(TagError, match="there is none yet"):
        tag_index(photos_index, labels=["clock"], add=True, encoder=no_encoder)

    tag_index(photos_index, labels=FIVE, encoder=encoder)
    stored = photos_index.catalog.tag_set()
    assert stored["labels"] == FIVE and stored["model_id"] == encoder.model_id
    assert stored["logit_scale"] == 60.0 and len(stored["templates"]) >= 5 and stored["threshold"] == 0.25
    again = tag_index(photos_index, labels=list(reversed(FIVE)), encoder=no_encoder)  # the same set
    assert (again.change, again.scored) == (None, 0)

    counting = CountingEncoder(encoder)
    added = tag_index(photos_index, labels=["Clock"], add=True, encoder=counting)
    assert added.change == "added" and added.labels == FIVE + ["clock"] and added.scored == 15
    assert counting.texts and all("clock" in t for t in counting.texts)  # old labels' vectors reused
    with pytest.raises(TagError, match="already in the label set: cat"):
        tag_index(photos_index, labels=["cat", "palace"], add=True, encoder=no_encoder)
    with pytest.raises(TagError, match="duplicate labels: palace"):
        tag_index(photos_index, labels=["palace", "Palace"], add=True, encoder=no_encoder)

    replaced = tag_index(photos_index, labels=["palace", "rocket"], encoder=encoder)
    assert replaced.change == "labels" and replaced.previous_labels == FIVE + ["clock"]
    assert photos_index.catalog.tagged_ids("cat") == []
    assert set(photos_index.catalog.tag_counts()) <= {"palace", "rocket"}
    assert replaced.threshold == 0.25 and tag_index(photos_index, encoder=no_encoder).scored == 0


def test_an_empty_index_is_a_clear_error(tmp_path, offline_encoder):
    from retriever.encoders import ModelSpec

    index = Index.create(tmp_path / "h", "empty", ModelSpec(name="offline"), offline_encoder.model_id,
                         offline_encoder.dim)
    with index, pytest.raises(TagError, match="no images yet"):
        tag_index(index, labels=FIVE, encoder=no_encoder)


def test_probabilities_of_a_two_label_set_are_a_pairwise_choice(photos_index, encoder):
    tag_index(photos_index, labels=["cat", "rocket"], encoder=encoder)
    tags = tags_by_name(photos_index)
    assert tags["chelsea.png"][0][0] == "cat" and tags["rocket.jpg"][0][0] == "rocket"
    # Both labels kept only where the model cannot choose: probabilities within [0.25, 0.75].
    for name, t in tags.items():
        if len(t) == 2:
            assert 0.25 <= t[1][1] <= t[0][1] <= 0.75, name


def test_label_probabilities_are_stable_for_large_scales():
    from retriever.tags import TagSet

    tag_set = TagSet(("a", "b"), ("{}",), 0.25, 1e4, "m", np.eye(2, dtype=np.float32))
    p = label_probabilities(np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32), tag_set)
    assert np.isfinite(p).all() and p[0, 0] == pytest.approx(1.0) and p[1, 1] == pytest.approx(1.0)


# -- CLI --------------------------------------------------------------------------------------------


@pytest.fixture
def cli(photos_index, encoder, monkeypatch):
    """Run the CLI against the copy; the index's encoder is the session's (loaded once)."""
    monkeypatch.setattr(Index, "load_encoder", lambda self, device="auto", batch_size=None: encoder)
    home = str(photos_index.folder.parent)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args] + ["--home", home], catch_exceptions=False)

    return invoke


def test_cli_tag_and_tags(cli, tmp_path):
    result = cli("tag", "--labels", "Cat, coffee, rocket, flower, coins", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["labels"] == FIVE and summary["scored"] == 15 and summary["change"] == "new"
    assert summary["counts"]["cat"] == 1 and summary["counts"]["coffee"] == 1 and summary["tagged"] == 15

    result = cli("tags", "--json")
    overview = json.loads(result.stdout)
    assert overview["tag_set"]["labels"] == FIVE and "embeddings" not in overview["tag_set"]
    assert {row["label"]: row["images"] for row in overview["labels"]} == summary["counts"]
    assert (overview["tagged"], overview["untagged"]) == (15, 0)

    text_out = cli("tags").stdout
    assert "cat" in text_out and "threshold 0.25" in text_out and "15 images tagged" in text_out

    result = cli("tags", "--image", PHOTOS / "chelsea.png", "--json")
    (item,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert item["path"] == str(PHOTOS / "chelsea.png") and [t["label"] for t in item["tags"]] == ["cat"]
    assert cli("tags", "--image", PHOTOS / "chelsea.png").stdout.split() == ["cat", f"{item['tags'][0]['score']:.3f}"]

    result = cli("tag")  # nothing new: incremental, no model
    assert result.exit_code == 0 and "tagged 0 images" in result.stderr

    result = cli("tag", "--add", "--labels", "Clock")
    assert result.exit_code == 0, result.output
    assert "adding to the label set (was: cat, coffee, rocket, flower, coins)" in result.stderr

    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("palace\nrocket\n")
    result = cli("tag", "--labels-file", labels_file)
    assert result.exit_code == 0
    assert "replacing the label set (was: cat, coffee, rocket, flower, coins, clock)" in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["tag", "--labels", "cat"], "one label ('cat') would tag every image"),
        (["tag", "--labels", "cat, dog, CAT"], "duplicate labels: cat"),
        (["tag", "--labels", " , "], "no labels given"),
        (["tag", "--labels-file", "/nonexistent/labels.txt"], "labels file not found"),
        (["tag", "--labels", "a,b", "--labels-file", "x"], "use --labels or --labels-file, not both"),
        (["tag"], "no label set yet"),
        (["tag", "--add"], "--add needs --labels"),
        (["tag", "--add", "--labels", "dog"], "--add extends the stored label set, and there is none yet"),
        (["tags", "--image", "/nonexistent.jpg"], "not in the index: /nonexistent.jpg"),
    ],
)
def test_cli_errors_are_one_line(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_on_an_empty_index(tmp_path, offline_encoder):
    from retriever.encoders import ModelSpec

    Index.create(tmp_path / "h", "default", ModelSpec(name="offline"), offline_encoder.model_id,
                 offline_encoder.dim).close()
    result = CliRunner().invoke(main, ["tag", "--labels", "a, b", "--home", str(tmp_path / "h")])
    assert result.exit_code == 1 and "has no images yet" in result.stderr
    result = CliRunner().invoke(main, ["tags", "--home", str(tmp_path / "h")])
    assert result.exit_code == 0 and "no tags yet" in result.stderr
