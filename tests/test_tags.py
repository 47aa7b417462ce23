"""Open-world zero-shot tags on the example photos with the offline encoder: the decision rule,
the built-in vocabulary, storage and upkeep, removed tags, the tag filters and the CLI.

The vocabulary's text vectors (384 concepts, prompted and bare) are computed once for the module
(vocab_cache); every other text goes through a module-wide memo (CachedTextEncoder)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from retriever.cli import main
from retriever.errors import RetrieverError
from retriever.filters import build, matching_ids
from retriever.index import Index
from retriever.store import catalog as catalog_mod
from retriever.store.catalog import Catalog
from retriever.tag_rule import FITTED, Calibration, background_mask, decision_scores
from retriever.tag_vocabulary import vocabulary
from retriever.tags import (
    TagError,
    TagSet,
    check_labels,
    make_tag_set,
    normalize_label,
    parse_labels,
    read_labels_file,
    score_tags,
    tag_index,
    untag,
    untag_in_index,
)
from tests.conftest import PHOTOS

FIVE = ["cat", "coffee", "rocket", "flower", "coins"]
ISSUE = ["cat", "coffee", "rocket", "airplane"]  # issue 16's label set


class CachedTextEncoder:
    """The offline encoder with its text embeddings remembered: tests re-use label sets."""

    def __init__(self, inner):
        self.inner, self.model_id, self.dim, self.cache, self.calls = inner, inner.model_id, inner.dim, {}, 0

    def embed_texts(self, texts):
        self.calls += 1
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.inner.embed_texts(missing)))
        return np.stack([self.cache[t] for t in texts])


@pytest.fixture(scope="module")
def encoder(offline_encoder):
    return CachedTextEncoder(offline_encoder)


@pytest.fixture(scope="module")
def vocab_cache(tmp_path_factory, encoder):
    """A model cache holding the vocabulary's vectors for the offline encoder (computed once)."""
    folder = tmp_path_factory.mktemp("vocab-cache")
    # Large text batches: the offline encoder's per-batch overhead makes its default of 32 about
    # three times slower here (768 texts); embeddings do not depend on the batching.
    inner = encoder.inner
    before, inner.batch_size = inner.batch_size, 512
    try:
        make_tag_set(encoder, ["cat"], only=True, cache_dir=folder)
    finally:
        inner.batch_size = before
    return folder


@pytest.fixture
def photos_index(offline_index, tmp_path, vocab_cache, monkeypatch):
    """A writable copy of the offline index of examples/photos: same vectors, nothing re-encoded."""
    monkeypatch.setenv("RETRIEVER_CACHE_DIR", str(vocab_cache))
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


def labels_by_name(index) -> dict[str, set[str]]:
    return {name: {label for label, _ in t} for name, t in tags_by_name(index).items()}


def all_tag_rows(index) -> list[tuple[int, str, float]]:
    with index.catalog.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(catalog_mod.tags).order_by(text("image_id, label")))]


# -- labels -----------------------------------------------------------------------------------------


def test_labels_are_normalised_and_checked(tmp_path):
    assert normalize_label("  Brick   WALL \n") == "brick wall"
    assert parse_labels(" Beach , DOG,,cat,\n receipt") == ["beach", "dog", "cat", "receipt"]
    with pytest.raises(TagError, match="no labels"):
        parse_labels(" , ,")
    assert check_labels(parse_labels("cat")) == ["cat"]  # one label is a label set
    with pytest.raises(TagError, match="duplicate labels: cat"):
        check_labels(parse_labels("cat, dog, Cat "))
    with pytest.raises(TagError, match="longer than 100"):
        check_labels(["x" * 101, "y"])
    with pytest.raises(TagError, match="labels file not found"):
        read_labels_file(tmp_path / "missing.txt")
    f = tmp_path / "labels.txt"
    f.write_text("# what to look for\ncat\n\nDog, beach\n  # not this\n")
    assert read_labels_file(f) == ["cat", "dog", "beach"]


def test_the_vocabulary_ships_a_few_hundred_everyday_concepts():
    concepts = vocabulary()
    assert 300 <= len(concepts) <= 500 and len(set(concepts)) == len(concepts)
    assert {"dog", "cat", "beach", "wedding", "pizza", "car", "receipt", "screenshot", "text", "document"} <= set(concepts)
    assert all(c == normalize_label(c) and c for c in concepts)


def test_migration_002_creates_the_tags_table(tmp_path):
    cat = Catalog(tmp_path / "c.db", create=True)
    assert "002_tags" in cat.applied_migrations()
    with cat.engine.connect() as conn:
        columns = [tuple(r[1:6]) for r in conn.exec_driver_sql("PRAGMA table_info(tags)")]
        indexes = {r[1]: r for r in conn.exec_driver_sql("PRAGMA index_list(tags)")}
        label_index = [r[2] for r in conn.exec_driver_sql("PRAGMA index_info(ix_tags_label_score)")]
    # (name, type, notnull, default, pk position)
    assert columns == [
        ("image_id", "INTEGER", 1, None, 1),
        ("label", "TEXT", 1, None, 2),
        ("score", "REAL", 1, None, 0),
    ]
    # 005_filter_columns put the score beside the label (a label's best score is one seek)
    assert "ix_tags_label_score" in indexes and label_index == ["label", "score"]


def test_a_catalog_from_before_tags_upgrades_and_can_be_tagged(offline_index, encoder, vocab_cache, tmp_path,
                                                               monkeypatch):
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
        run = tag_index(upgraded, labels=FIVE, only=True, encoder=encoder, cache_dir=vocab_cache)
        assert run.scored == 15 and run.tagged == 15 and run.with_tags == 5  # each label on its own photo
        assert upgraded.catalog.tagged_ids("cat") == [ids_by_name(upgraded)["chelsea.png"]]
    finally:
        upgraded.close()
    reopened = Catalog(folder / "catalog.db")
    assert reopened.migrate() == []  # applied once
    reopened.close()


# -- tagging the example photos ---------------------------------------------------------------------


def test_a_label_set_of_the_old_closed_world_rule_keeps_its_labels(photos_index, encoder):
    old = {"labels": ["cat", "rocket"], "templates": ["a photo of a {}."], "threshold": 0.25, "logit_scale": 60.0,
           "model_id": photos_index.model_id, "dim": 1, "embeddings": "", "calibration": "softmax/v1"}
    photos_index.catalog.replace_tag_set(old)
    photos_index.catalog.write_tags([1, 2], [(1, "cat", 0.3), (2, "rocket", 0.4)])  # closed-world leftovers
    run = tag_index(photos_index, encoder=encoder)
    assert run.labels == ["cat", "rocket"] and not run.vocabulary and run.change == "new"
    assert labels_by_name(photos_index)["chelsea.png"] == {"cat"} and run.with_tags == 2


# -- the decision rule ------------------------------------------------------------------------------


def test_decision_scores_are_the_label_against_its_own_background_by_hand():
    rng = np.random.default_rng(0)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    images, labels, background = unit(rng.normal(size=(6, 8))), unit(rng.normal(size=(3, 8))), unit(rng.normal(size=(5, 8)))
    words = np.concatenate([labels[:1], unit(rng.normal(size=(4, 8)))])  # concept 0 is label 0's synonym
    cal = Calibration(scale=30.0, label_weight=0.5, threshold=2.0, synonym_cosine=0.99)
    mask = background_mask(unit(np.concatenate([labels[:1], rng.normal(size=(2, 8))])), words, 0.99)
    assert mask[0, 0] == 0 and mask[:, 1:].all() and mask[1:, 0].all()
    got = decision_scores(images, labels, background, mask, cal)
    for i in range(6):
        for j in range(3):
            kept = [b for b in range(5) if mask[b, j]]
            expected = (1.5 * 30 * images[i] @ labels[j]
                        - np.log(np.exp(30 * (background[kept] @ images[i])).sum()) - 2.0)
            assert got[i, j] == pytest.approx(expected, abs=1e-4)


def test_hubness_comes_off_every_text_cosine_by_hand():
    from retriever.tag_rule import hub_vector

    rng = np.random.default_rng(1)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    hub = hub_vector("offline-v1")
    assert hub.shape == (704,) and not hub.flags.writeable
    images, labels, background = unit(rng.normal(size=(4, 704))), unit(rng.normal(size=(2, 704))), unit(rng.normal(size=(7, 704)))
    mask = np.ones((7, 2), np.float32)
    cal = Calibration(scale=40.0, label_weight=1.0, threshold=1.0, hub_weight=1.5, hub="offline-v1")
    got = decision_scores(images, labels, background, mask, cal)
    for i in range(4):
        for j in range(2):
            c_label = images[i] @ labels[j] - 1.5 * labels[j] @ hub
            c_background = background @ images[i] - 1.5 * background @ hub
            expected = 2.0 * 40 * c_label - np.log(np.exp(40 * c_background).sum()) - 1.0
            assert got[i, j] == pytest.approx(expected, abs=1e-3)
    with pytest.raises(RetrieverError, match="reinstall"):
        decision_scores(images, labels, background, mask, Calibration(hub_weight=1.0, hub="no-such"))


def test_a_set_decided_by_an_earlier_rule_is_tagged_again_with_its_labels(photos_index, encoder):
    from dataclasses import asdict

    tag_index(photos_index, labels=FIVE, only=True, encoder=encoder)
    untag_in_index(photos_index, None, "cat", image_id=ids_by_name(photos_index)["chelsea.png"])
    raw = photos_index.catalog.tag_set()
    photos_index.catalog.replace_tag_set({**raw, "calibration": asdict(Calibration())})  # the v1 rule
    run = tag_index(photos_index, encoder=encoder)
    assert run.change == "calibration" and run.labels == FIVE and not run.vocabulary and run.scored == 15
    stored = TagSet.from_json(photos_index.catalog.tag_set())
    assert stored.calibration == FITTED["offline/conse-effnetlite0-minilm/v1"]
    assert "cat" not in labels_by_name(photos_index).get("chelsea.png", set())  # the removal stays
    assert tag_index(photos_index, encoder=encoder).change is None  # then up to date


def test_the_offline_encoder_has_fitted_constants_and_others_use_their_learned_scale():
    from retriever.tag_rule import calibration_for

    assert calibration_for("offline/conse-effnetlite0-minilm/v1") is FITTED["offline/conse-effnetlite0-minilm/v1"]
    assert calibration_for("open_clip/x", 50.0).scale == 50.0
    assert calibration_for("open_clip/x", None).scale == 100.0


# -- tagging the example photos ---------------------------------------------------------------------


def test_the_issue_label_set_tags_only_what_the_photos_show(photos_index, encoder):
    run = tag_index(photos_index, labels=ISSUE, only=True, encoder=encoder)
    assert run.labels == ISSUE and not run.vocabulary and run.tagged == 15
    tags = labels_by_name(photos_index)
    assert tags["chelsea.png"] == {"cat"} and tags["coffee.jpg"] == {"coffee"} and "rocket" in tags["rocket.jpg"]
    assert photos_index.catalog.tagged_ids("cat") == [ids_by_name(photos_index)["chelsea.png"]]
    # Open world: most photos show none of the four and get no tag at all.
    assert sum(not t for t in tags.values()) >= 10
    assert not any("airplane" in t for name, t in tags.items() if name != "rocket.jpg")
    assert all(0.5 <= score <= 1 for _, _, score in all_tag_rows(photos_index))


def test_a_single_label_works_and_labels_do_not_interfere(photos_index, encoder):
    tag_index(photos_index, labels=["cat"], only=True, encoder=encoder)
    alone = [(i, label, s) for i, label, s in all_tag_rows(photos_index)]
    assert [(i, label) for i, label, _ in alone] == [(ids_by_name(photos_index)["chelsea.png"], "cat")]
    tag_index(photos_index, labels=FIVE, only=True, encoder=encoder)
    together = [row for row in all_tag_rows(photos_index) if row[1] == "cat"]
    assert [r[:2] for r in together] == [r[:2] for r in alone]
    assert [r[2] for r in together] == pytest.approx([r[2] for r in alone], abs=1e-6)


def test_the_built_in_vocabulary_is_the_default_and_user_labels_add_to_it(photos_index, encoder):
    run = tag_index(photos_index, encoder=encoder)  # no labels: the vocabulary
    assert run.vocabulary and run.labels == list(vocabulary()) and run.change == "new"
    tags = labels_by_name(photos_index)
    assert "cat" in tags["chelsea.png"] and "coffee" in tags["coffee.jpg"] and "rocket" in tags["rocket.jpg"]
    assert "flower" in tags["flower.jpg"]
    assert not any("receipt" in t or "wedding" in t for t in tags.values())
    stored = TagSet.from_json(photos_index.catalog.tag_set())
    assert stored.vocabulary and "airplane" in stored.synonyms[stored.labels.index("airplane")]
    # User labels add to it; a label already in it is not doubled.
    run = tag_index(photos_index, labels=["Astronaut", "cat"], encoder=encoder)
    assert run.labels[:2] == ["astronaut", "cat"] and len(run.labels) == len(vocabulary()) + 1
    assert labels_by_name(photos_index)["chelsea.png"] == tags["chelsea.png"]  # same rule, same tags


def test_the_vocabulary_vectors_are_computed_once_per_model(encoder, vocab_cache):
    counting = CachedTextEncoder(encoder)  # counts what reaches the model beyond the cache
    seen = []
    counting.embed_texts = lambda texts: seen.extend(texts) or encoder.embed_texts(texts)
    tag_set = make_tag_set(counting, ["Teapot"], only=True, cache_dir=vocab_cache)
    assert seen == ["a photo of a teapot.", "teapot"]  # the label only: the vocabulary came from the cache
    assert tag_set.background == vocabulary() and tag_set.labels == ("teapot",)
    assert len(list(vocab_cache.glob("tag-vocabulary/*.npy"))) == 2  # prompted and bare words


def test_a_higher_threshold_keeps_fewer_tags(photos_index, encoder):
    kept = {}
    for threshold in (0.2, 0.5, 0.9):
        tag_index(photos_index, threshold=threshold, encoder=encoder)
        kept[threshold] = {(i, label) for i, label, _ in all_tag_rows(photos_index)}
        assert all(score >= threshold for *_, score in all_tag_rows(photos_index))
    assert kept[0.2] > kept[0.5] > kept[0.9]
    run = tag_index(photos_index, threshold=0.5, encoder=no_encoder)  # the stored set: no model
    assert run.change == "threshold" and {(i, label) for i, label, _ in all_tag_rows(photos_index)} == kept[0.5]
    with pytest.raises(TagError, match="between 0 and 1"):
        tag_index(photos_index, threshold=1.0, encoder=no_encoder)


def test_stored_scores_are_the_rule_on_the_stored_vectors(photos_index, encoder, vocab_cache):
    tag_index(photos_index, labels=FIVE, only=True, threshold=0.01, encoder=encoder)
    ids = ids_by_name(photos_index)
    vectors = photos_index.catalog.vectors_for(list(ids.values()), photos_index.dim)
    tag_set = make_tag_set(encoder, FIVE, only=True, cache_dir=vocab_cache)
    for name, image_id in ids.items():
        expected = score_tags(vectors[image_id][None], tag_set)[0]
        stored = dict(photos_index.catalog.image_tags(image_id))
        assert {label: stored[label] for label in stored} == pytest.approx(
            {label: float(expected[j]) for j, label in enumerate(FIVE) if expected[j] >= 0.01}, abs=1e-5), name


# -- upkeep: removed, changed and new images --------------------------------------------------------


def test_tags_go_with_their_image(photos_index, encoder):
    tag_index(photos_index, labels=FIVE, only=True, encoder=encoder)
    ids = ids_by_name(photos_index)
    photos_index.acquire_lock()
    untag(photos_index.catalog, str(PHOTOS / "coffee.jpg"), "cat")
    photos_index.remove_images([ids["chelsea.png"]])
    photos_index.catalog.write_batch([], remove_ids=[ids["coffee.jpg"]])
    gone = {ids["chelsea.png"], ids["coffee.jpg"]}
    assert not gone & {i for i, _, _ in all_tag_rows(photos_index)}
    assert photos_index.catalog.tagged_ids("cat") == []
    assert photos_index.catalog.tag_coverage()["tagged"] == 13
    from retriever.store.tags import rejections

    assert rejections(photos_index.catalog) == []  # a removal goes with its image


def test_new_photos_are_tagged_and_existing_tags_do_not_move(photos_index, offline_encoder, encoder, tmp_path):
    from retriever.indexer import run_index

    tag_index(photos_index, labels=ISSUE, only=True, encoder=encoder)
    before = all_tag_rows(photos_index)
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy2(PHOTOS / "chelsea.png", folder / "pet.png")
    shutil.copy2(PHOTOS / "grass.png", folder / "lawn.png")
    photos_index.acquire_lock()
    run_index(photos_index, offline_encoder, [str(folder)])  # known content: vectors reused

    run = tag_index(photos_index, encoder=no_encoder)
    assert (run.change, run.scored, run.tagged, run.untagged) == (None, 2, 17, 0)
    tags = labels_by_name(photos_index)
    assert tags["pet.png"] == {"cat"} and tags["lawn.png"] == set()
    assert set(before) <= set(all_tag_rows(photos_index))  # nothing else was touched
    assert tag_index(photos_index, encoder=no_encoder).scored == 0  # a photo without tags counts as done

    # pet.png now shows a cup of coffee: re-indexing drops its cat tag, tagging gives it coffee.
    shutil.copyfile(PHOTOS / "coffee.jpg", folder / "pet.png")
    os.utime(folder / "pet.png", ns=(1, 1))
    run_index(photos_index, offline_encoder, [str(folder)])
    assert not labels_by_name(photos_index)["pet.png"]
    assert tag_index(photos_index, encoder=no_encoder).scored == 1
    assert labels_by_name(photos_index)["pet.png"] == {"coffee"}


def test_chunks_and_an_interrupted_run(photos_index, encoder):
    seen = []

    def stop_after_first_chunk(done, total):
        seen.append((done, total))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tag_index(photos_index, labels=FIVE, only=True, encoder=encoder, chunk=4, on_progress=stop_after_first_chunk)
    assert seen == [(4, 15)] and photos_index.catalog.tag_coverage()["untagged"] == 11
    progress = []
    run = tag_index(photos_index, encoder=no_encoder, chunk=4, on_progress=lambda d, t: progress.append((d, t)))
    assert run.scored == 11 and progress == [(4, 11), (8, 11), (11, 11)]
    chunked = all_tag_rows(photos_index)
    tag_index(photos_index, labels=ISSUE, only=True, encoder=encoder)
    tag_index(photos_index, labels=FIVE, only=True, encoder=encoder)  # all at once
    assert [r[:2] for r in all_tag_rows(photos_index)] == [r[:2] for r in chunked]


# -- removed tags -----------------------------------------------------------------------------------


def test_an_untagged_label_stays_removed_through_retagging(photos_index, encoder):
    tag_index(photos_index, labels=ISSUE, only=True, encoder=encoder)
    chelsea = str(PHOTOS / "chelsea.png")
    assert untag(photos_index.catalog, chelsea, " CAT ") == 1
    assert photos_index.catalog.tagged_ids("cat") == []
    for args in ({"threshold": 0.3}, {"labels": FIVE, "only": True}, {"labels": ["cat"], "only": True}):
        tag_index(photos_index, encoder=encoder, **args)
        assert photos_index.catalog.tagged_ids("cat") == [], args
    assert untag(photos_index.catalog, chelsea, "dog") == 0  # remembered even though absent
    with pytest.raises(TagError, match="not in the index"):
        untag(photos_index.catalog, "/nowhere.jpg", "cat")


# -- filters: all / any / not -----------------------------------------------------------------------


def test_tag_filters_match_a_brute_force_set_computation(photos_index, encoder):
    tag_index(photos_index, encoder=encoder)  # the vocabulary: many labels, overlapping
    catalog = photos_index.catalog
    every = sorted(ids_by_name(photos_index).values())
    has = {i: set(labels) for i, labels in catalog.tags_for(every).items()}
    counts = catalog.tag_counts()
    common = list(counts)[:4] + ["no such label"]
    rng = np.random.default_rng(0)
    for _ in range(40):
        pick = lambda: [common[j] for j in rng.choice(len(common), rng.integers(0, 3), replace=False)]
        all_of, any_of, none_of = pick(), pick(), pick()
        if set(all_of) & set(none_of):
            continue
        filters = build(tags=all_of, tags_any=[",".join(any_of)] if any_of else [], no_tags=none_of)
        expected = [i for i in every
                    if set(all_of) <= has.get(i, set())
                    and (not any_of or set(any_of) & has.get(i, set()))
                    and not set(none_of) & has.get(i, set())]
        assert matching_ids(catalog, filters).tolist() == expected, (all_of, any_of, none_of)
    with pytest.raises(Exception, match="both name 'cat'"):
        build(tags=["cat"], no_tags=["Cat"])


# -- CLI --------------------------------------------------------------------------------------------


@pytest.fixture
def cli(photos_index, encoder, monkeypatch):
    """Run the CLI against the copy; the index's encoder is the session's (loaded once)."""
    monkeypatch.setattr(Index, "load_encoder", lambda self, device="auto", batch_size=None: encoder)
    home = str(photos_index.folder.parent)
    photos_index.close()
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args] + ["--home", home], catch_exceptions=False)

    return invoke


def test_cli_tag_tags_untag_and_search_filters(cli):
    result = cli("tag", "--labels", "Cat, coffee, rocket, airplane", "--only", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["labels"] == ISSUE and summary["scored"] == 15 and summary["change"] == "new"
    assert summary["counts"]["cat"] == 1 and summary["with_tags"] < 15 and summary["tagged"] == 15

    overview = json.loads(cli("tags", "--json").stdout)
    assert overview["tag_set"]["labels"] == ISSUE and "embeddings" not in overview["tag_set"]
    rows = {row["label"]: row for row in overview["labels"]}
    assert rows["cat"]["images"] == 1 and 0.5 <= rows["cat"]["mean_score"] <= rows["cat"]["max_score"] <= 1
    assert "threshold 0.5" in cli("tags").stdout

    hits = [json.loads(line) for line in cli("search", "a photo", "--tag", "cat", "--json").stdout.splitlines()]
    assert [os.path.basename(h["path"]) for h in hits] == ["chelsea.png"]
    assert hits[0]["tags"] == ["cat"] and hits[0]["tag_scores"][0]["label"] == "cat"
    anyof = cli("search", "a photo", "--tag-any", "cat,coffee", "--paths").stdout.split()
    assert sorted(map(os.path.basename, anyof)) == ["chelsea.png", "coffee.jpg"]
    nots = cli("search", "a photo", "--tag-any", "cat,coffee", "--no-tag", "cat", "--paths").stdout.split()
    assert list(map(os.path.basename, nots)) == ["coffee.jpg"]

    result = cli("untag", PHOTOS / "chelsea.png", "Cat")
    assert result.exit_code == 0 and "removed 'cat'" in result.stderr
    assert cli("tag", "--threshold", "0.4", "-q").exit_code == 0
    item = json.loads(cli("tags", "--image", PHOTOS / "chelsea.png", "--json").stdout)
    assert item["tags"] == [] and item["scored"]
    assert "it shows none of the labels" in cli("tags", "--image", PHOTOS / "grass.png").stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["tag", "--labels", "cat, dog, CAT"], "duplicate labels: cat"),
        (["tag", "--labels", " , "], "no labels given"),
        (["tag", "--labels-file", "/nonexistent/labels.txt"], "labels file not found"),
        (["tag", "--labels", "a,b", "--labels-file", "x"], "use --labels or --labels-file, not both"),
        (["tag", "--add"], "--add needs --labels"),
        (["tag", "--only"], "--only needs --labels"),
        (["tag", "--add", "--labels", "dog"], "--add extends the stored label set, and there is none yet"),
        (["tags", "--image", "/nonexistent.jpg"], "not in the index: /nonexistent.jpg"),
        (["untag", "/nonexistent.jpg", "cat"], "not in the index: /nonexistent.jpg"),
    ],
)
def test_cli_errors_are_one_line(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# -- Python API and HTTP API ------------------------------------------------------------------------


def test_python_and_http_apis_filter_by_tags_and_remove_a_tag(photos_index, encoder, offline_encoder):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from retriever.api import Collection
    from retriever.serve.app import create_app
    from retriever.serve.service import Service

    tag_index(photos_index, labels=ISSUE, only=True, encoder=encoder)
    home = photos_index.folder.parent
    photos_index.close()
    with Collection(Index.open(home, "default", read_only=True), encoder=offline_encoder) as collection:
        hits = collection.search("a photo", tags_any=["cat", "coffee"], no_tags=["coffee"])
        assert [os.path.basename(h.path) for h in hits] == ["chelsea.png"]
        assert hits[0].as_dict()["tag_scores"][0]["label"] == "cat"
        assert collection.untag(PHOTOS / "coffee.jpg", "coffee") == 1
        assert collection.search("a photo", tags=["coffee"]) == []
    reader = Index.open(home, "default", read_only=True)  # as `retriever serve` opens it
    with reader, TestClient(create_app(Service(reader, encoder=offline_encoder, reload_check_s=0))) as client:
        body = client.get("/api/search", params={"q": "a photo", "tag_any": "cat,rocket", "no_tag": "rocket"}).json()
        assert [os.path.basename(r["path"]) for r in body["results"]] == ["chelsea.png"]
        chelsea = body["results"][0]["id"]
        assert body["results"][0]["tag_scores"][0]["label"] == "cat"
        assert client.delete(f"/api/images/{chelsea}/tags/Cat").json() == {"id": chelsea, "label": "cat", "removed": 1}
        assert client.get("/api/search", params={"q": "a photo", "tag": "cat"}).json()["results"] == []
    with Index.open(home, "default") as index:
        tag_index(index, threshold=0.3, encoder=no_encoder)
        assert index.catalog.tagged_ids("cat") == []  # the page's removal survives re-tagging
