"""Concepts learned from examples (retriever/concepts.py, retriever/concept_fit.py): the fit on
seeded data, CRUD and persistence on the example photos with the offline encoder, the query
term and the filter against brute force, refusals, and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import retriever
from retriever.cli import main
from retriever.concept_fit import Background, auc, fit, smooth_by_neighbours
from retriever.concepts import ConceptError, accepted_ids, concept_vector

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_fit_separates_a_cluster_from_the_background_and_its_yes_no_follows():
    rng = np.random.default_rng(0)
    dim = 32
    centre = _unit(rng.standard_normal(dim))
    background = _unit(rng.standard_normal((500, dim)))
    cluster = _unit(centre + 0.1 * rng.standard_normal((60, dim)))
    fitted = fit(cluster[:5], None, Background.of(background))
    # the direction ranks the unseen members of the cluster above every background vector
    assert auc(cluster[5:] @ fitted.direction, background @ fitted.direction) > 0.99
    assert fitted.accepts(cluster[5:]).mean() > 0.8
    assert fitted.accepts(background).mean() < 0.02
    # the cosine threshold says the same as the scorer's own
    on_direction = np.r_[cluster, background] @ fitted.direction >= fitted.cosine_threshold
    assert (on_direction == fitted.accepts(np.r_[cluster, background])).all()
    # a negative close to the cluster moves the direction away from it
    pushed = fit(cluster[:5], cluster[5:6], Background.of(background))
    assert float(pushed.scores(cluster[5:6])[0]) < float(fitted.scores(cluster[5:6])[0])


def test_auc_counts_ties_as_half():
    assert auc(np.array([1.0]), np.array([0.0, 1.0, 2.0])) == pytest.approx(0.5)
    assert auc(np.array([3.0, 3.0]), np.array([0.0, 1.0])) == 1.0


def test_neighbours_lift_a_low_member_above_a_stray_and_equal_a_plain_loop():
    rng = np.random.default_rng(1)
    dim = 16
    centre = _unit(rng.standard_normal(dim))
    members = _unit(centre + 0.05 * rng.standard_normal((8, dim)))
    strays = _unit(rng.standard_normal((8, dim)))
    vectors = np.vstack([members, strays])
    scores = np.r_[np.full(7, 0.9), 0.5, 0.6, np.full(7, 0.1)]  # member 7 ranked below stray 8
    smoothed = smooth_by_neighbours(scores, vectors, k=5, weight=1.0)
    assert smoothed[7] > smoothed[8]  # its neighbours (the other members) score high; the stray's do not
    assert scores.min() <= smoothed.min() and smoothed.max() <= scores.max()  # means of the pool's scores
    similar = vectors @ vectors.T
    for i in range(len(scores)):  # the definition, one photo at a time
        others = [j for j in np.argsort(-similar[i], kind="stable") if j != i][:5]
        assert smoothed[i] == pytest.approx((scores[i] + scores[others].mean()) / 2)
    assert (smooth_by_neighbours(scores, vectors, weight=0.0) == scores).all()
    assert (smooth_by_neighbours(scores[:1], vectors[:1]) == scores[:1]).all()  # nobody to ask


def test_concept_ranks_filters_and_persists(offline_copy, photos):
    home = offline_copy
    with retriever.open(home) as c:
        info = c.add_concept("kitty", [photos / "chelsea.png"], negatives=[photos / "coffee.jpg"])
        assert (info["positives"], info["negatives"], info["version"]) == (1, 1, 1)
        hits = c.search("concept:kitty", k=3)
        assert hits[0].path.endswith("chelsea.png")
        # combined with other terms, and negated
        assert c.search(["concept:kitty", "-", "concept:kitty", "+", "coffee"], k=1)[0].path.endswith("coffee.jpg")
        # the filter: exactly the photos whose vector scores at least the threshold (brute force)
        concept = concept_vector(c.idx, "kitty")
        ids, vecs = zip(*[(i, v) for chunk_ids, chunk in c.idx.catalog.iter_vectors(c.idx.dim)
                          for i, v in zip(chunk_ids, chunk)])
        brute = sorted(int(i) for i, v in zip(ids, vecs) if float(np.asarray(v) @ concept.vector) >= concept.cosine_threshold)
        assert accepted_ids(c.searcher().vectors, concept).tolist() == brute
        filtered = c.search("", k=20, concepts=["kitty"])
        assert sorted(h.id for h in filtered) == brute
        assert any(h.path.endswith("chelsea.png") for h in filtered)
        assert all(h.meta["concepts"] == ["kitty"] for h in filtered)  # hits say which concepts accept them
        ranked = c.search("concept:kitty", k=15)
        assert all("concepts" not in h.meta for h in ranked if h.id not in brute)
        # a concept alone ranks its best photos re-scored by their neighbours: the brute-force cosines
        # of every stored vector, smoothed over the pool (the collection is smaller than the pool)
        cosines = np.array([float(np.asarray(v) @ concept.vector) for v in vecs])
        smoothed = smooth_by_neighbours(cosines, np.array(vecs))
        order = [int(ids[n]) for n in np.argsort(-smoothed, kind="stable")[:15]]
        assert [h.id for h in ranked] == order
        assert [h.score for h in ranked] == pytest.approx(sorted(smoothed, reverse=True)[:15], abs=1e-5)
        # with another term it is a plain vector query: cosine order
        from retriever.query import Term

        mixed = c.searcher().query([Term("concept", "kitty", 1.0), Term("text", "coffee", 1.0)], k=15)
        assert [h.score for h in mixed] == sorted((h.score for h in mixed), reverse=True)
        # a text query restricted to the concept's yes
        assert {h.id for h in c.search("a rocket", k=20, concepts="kitty")} <= set(brute)
        # relevance feedback: a "no" mark on the positive flips it
        flipped = c.mark("kitty", yes=[hits[1].id], no=[hits[0].id])
        assert (flipped["positives"], flipped["negatives"], flipped["version"]) == (1, 2, 2)
    with retriever.open(home) as c:  # persisted
        shown = c.concept("KITTY")
        assert [e["label"] for e in shown["examples"]] == ["no", "yes", "no"]
        assert {e["path"].rsplit("/", 1)[-1] for e in shown["examples"]} >= {"coffee.jpg", "chelsea.png"}
        assert [x["name"] for x in c.concepts()] == ["kitty"]
        example = shown["examples"][1]["example"]
        with pytest.raises(ConceptError, match="no photo that shows it left"):
            c.remove_concept("kitty", examples=[example])
        assert c.concept("kitty")["positives"] == 1  # the refusal stored nothing
        c.remove_concept("kitty")
        assert c.concepts() == []
        with pytest.raises(ConceptError, match="no concept 'kitty'"):
            c.search("concept:kitty")


def test_bad_examples_and_other_models_are_refused_and_store_nothing(offline_copy, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with retriever.open(offline_copy) as c:
        with pytest.raises(ConceptError, match="cannot use .*broken.jpg as an example"):
            c.add_concept("boat", [photos / "rocket.jpg", bad])
        assert c.concepts() == []
        with pytest.raises(ConceptError, match="needs at least one photo that shows"):
            c.add_concept("boat", negatives=[photos / "rocket.jpg"])
        with pytest.raises(ConceptError, match="no indexed photo with id 99999"):
            c.add_concept("boat", ids=[99999])
        with pytest.raises(ConceptError, match="concept name"):
            c.add_concept("a/b", [photos / "rocket.jpg"])
        c.add_concept("boat", [photos / "rocket.jpg"])
        data = c.export_concept("boat")
        data["model_id"] = "ViT-B-32/openai"
        with pytest.raises(ConceptError, match="learned with model ViT-B-32/openai"):
            c.import_concept(data, "boat2")
        assert [x["name"] for x in c.concepts()] == ["boat"]


def test_command_line(offline_copy, photos, monkeypatch):
    monkeypatch.setenv("RETRIEVER_NO_DAEMON", "1")
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, [str(a) for a in args] + ["--home", str(offline_copy)])

    result = run("concept", "add", "cam", photos / "camera.png")
    assert result.exit_code == 0, result.output
    assert "learned cam: 1 yes, 0 no" in result.output
    result = run("search", "concept:cam", "-k", "4", "--json")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert hits[0]["path"].endswith("camera.png")
    result = run("concept", "add", "cam", "--from-results", "--ranks", "1", "--not-ranks", "2-3")
    assert result.exit_code == 0, result.output
    assert "1 yes, 2 no" in result.output
    result = run("concept", "add", "cam", "--from-results", "--ranks", "9")
    assert result.exit_code == 1 and "ranks 1-4" in result.output
    result = run("search", "--concept", "cam", "--paths")
    assert result.exit_code == 0 and "camera.png" in result.output
    result = run("concept", "show", "cam", "--json")
    assert json.loads(result.output)["examples"][0]["label"] == "yes"
    result = run("concept", "add", "cam", "README.md")
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "Traceback" not in result.output
    result = run("search", "--concept", "nope")
    assert result.exit_code == 1 and "no concept 'nope'" in result.output
    result = run("concept", "remove", "cam")
    assert result.exit_code == 0 and "removed concept cam" in result.output
