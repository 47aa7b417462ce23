"""Combined queries: parsing, and what weights and negation do on real photos (offline encoder)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from retriever.query import IMAGE, TEXT, QueryError, Term, describe, parse
from retriever.search import Searcher
from tests.conftest import PHOTOS


@pytest.fixture(scope="module")
def searcher(offline_index, offline_encoder):
    return Searcher(offline_index, encoder=offline_encoder)


def names(hits):
    return [os.path.basename(h.path) for h in hits]


def rank(searcher, words, name):
    return names(searcher.query(parse(words), 15)).index(name) + 1


# -- parsing -----------------------------------------------------------------------------------------


def test_terms_operators_and_weights(tmp_path):
    ref = tmp_path / "ref.jpg"
    ref.write_bytes(b"not even decoded by the parser")
    terms = parse(["beach", "+", str(ref), "-", "people", "-", "0.5*night", "2*sunset"])
    assert terms == [
        Term(TEXT, "beach", 1.0), Term(IMAGE, str(ref), 1.0), Term(TEXT, "people", -1.0),
        Term(TEXT, "night", -0.5), Term(TEXT, "sunset", 2.0),
    ]
    assert describe(terms) == f"beach + image:{ref} - people - 0.5*night + 2*sunset"


def test_prefixes_force_the_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.jpg").write_bytes(b"x")
    assert parse(["cat.jpg"]) == [Term(IMAGE, "cat.jpg", 1.0)]  # an existing image file
    assert parse(["text:cat.jpg"]) == [Term(TEXT, "cat.jpg", 1.0)]
    assert parse(["dog.jpg"]) == [Term(TEXT, "dog.jpg", 1.0)]  # no such file: text
    assert parse(["image:dog.jpg"]) == [Term(IMAGE, "dog.jpg", 1.0)]  # the search will say it is missing
    (tmp_path / "notes").write_text("x")
    assert parse(["notes"]) == [Term(TEXT, "notes", 1.0)]  # not an image suffix: text
    assert parse(["a.jpg", "text:snow"], default="image") == [Term(IMAGE, "a.jpg", 1.0), Term(TEXT, "snow", 1.0)]


def test_a_multiword_text_term_stays_whole():
    assert parse(["a dog on the beach"]) == [Term(TEXT, "a dog on the beach", 1.0)]
    assert parse(["t-shirt - red"]) == [Term(TEXT, "t-shirt - red", 1.0)]  # operators are separate words


@pytest.mark.parametrize(
    "words,message",
    [
        ([], "empty query"),
        (["  "], "empty query term"),
        (["beach", "-"], "ends with an operator"),
        (["beach", "-", "+", "x"], "two operators"),
        (["-", "people"], "only negative terms"),
        (["0*beach"], "weight of 0"),
        (["nan*cat"], "not a finite number"),
        (["INF*cat"], "not a finite number"),
        (["1e309*cat"], "not a finite number"),
        (["9" * 400 + "*cat"], "not a finite number"),
        (["text:"], "empty query term"),
    ],
)
def test_bad_queries(words, message):
    with pytest.raises(QueryError, match=message):
        parse(words)


# -- semantics on real photos ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base,negative,photo",
    [
        ("food", "a cup of coffee", "coffee.jpg"),
        ("a pet", "a cat", "chelsea.png"),
        ("a vehicle", "a rocket", "rocket.jpg"),
        ("a drink", "coffee", "coffee.jpg"),
    ],
)
def test_a_negative_term_pushes_its_concept_down(searcher, base, negative, photo):
    alone = rank(searcher, [base], photo)
    half = rank(searcher, [base, "-", f"0.5*{negative}"], photo)
    full = rank(searcher, [base, "-", negative], photo)
    assert alone == 1
    assert full >= 8  # from the top to the bottom half of 15 photos
    assert alone < half <= full  # the weight scales the push


def test_two_positive_terms_find_both_concepts(searcher):
    assert set(names(searcher.query(parse(["a cat", "+", "a cup of coffee"]), 2))) == {"chelsea.png", "coffee.jpg"}


def test_text_plus_image_and_the_image_is_left_out(searcher):
    hits = searcher.query(parse(["a rocket launch", "+", str(PHOTOS / "astronaut.jpg")]), 14)
    assert names(hits)[0] == "rocket.jpg"
    assert "astronaut.jpg" not in names(hits) and len(hits) == 14


def test_the_sum_is_the_normalised_weighted_sum(searcher, offline_encoder):
    vector, own = searcher.query_vector(parse(["a cat", "-", "0.5*a dog"]))
    cat, dog = offline_encoder.embed_texts(["a cat", "a dog"])
    want = cat / np.linalg.norm(cat) - 0.5 * dog / np.linalg.norm(dog)
    assert np.allclose(vector, want / np.linalg.norm(want), atol=1e-6) and own == []


def test_terms_that_cancel_are_an_error(searcher):
    with pytest.raises(QueryError, match="cancel"):
        searcher.query(parse(["a cat", "-", "a cat"]), 3)


def test_similar_takes_several_images(searcher):
    hits = searcher.query(parse([str(PHOTOS / "chelsea.png"), str(PHOTOS / "coffee.jpg")], default="image"), 13)
    assert len(hits) == 13 and not {"chelsea.png", "coffee.jpg"} & set(names(hits))
    a, _ = searcher.image_vector(str(PHOTOS / "chelsea.png"))
    b, _ = searcher.image_vector(str(PHOTOS / "coffee.jpg"))
    mean = a / np.linalg.norm(a) + b / np.linalg.norm(b)
    mean /= np.linalg.norm(mean)
    scores = {h.path: h.score for h in hits}
    stored = searcher.index.catalog.vectors_for([h.id for h in hits], searcher.index.dim)
    for h in hits:
        assert scores[h.path] == pytest.approx(float(stored[h.id] @ mean), abs=1e-5)


def test_cli_combined_query(offline_index):
    from retriever.cli import main

    home = offline_index.folder.parent
    runner = CliRunner()
    out = runner.invoke(main, ["search", "--home", str(home), "--json", "-k", "15", "-v", "--", "food", "-", "a cup of coffee"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert os.path.basename(rows[-1]["path"]) == "coffee.jpg"
    assert "query: food - a cup of coffee" in out.stderr

    out = runner.invoke(main, ["similar", "--home", str(home), "--paths", "-k", "3",
                               str(PHOTOS / "chelsea.png"), str(PHOTOS / "coffee.jpg")])
    assert out.exit_code == 0 and len(out.stdout.splitlines()) == 3

    out = runner.invoke(main, ["similar", "--home", str(home), "nothing-here.jpg"])
    assert out.exit_code == 1 and "no such image: nothing-here.jpg" in out.stderr
    out = runner.invoke(main, ["search", "--home", str(home), "beach", "-"])
    assert out.exit_code == 1 and "ends with an operator" in out.stderr


def test_cli_preview_and_html(offline_index, tmp_path):
    from retriever.cli import main

    home = offline_index.folder.parent
    runner = CliRunner()
    plain = runner.invoke(main, ["search", "a cat", "--home", str(home), "-k", "3"])
    piped = runner.invoke(main, ["search", "a cat", "--home", str(home), "-k", "3", "--preview"])
    assert piped.exit_code == 0 and piped.stdout == plain.stdout  # not a terminal: plain lines

    kitty = runner.invoke(main, ["search", "a cat", "--home", str(home), "-k", "2", "--preview-protocol", "kitty"])
    assert kitty.exit_code == 0, kitty.output
    assert kitty.stdout.count("\x1b_G") >= 2 and "chelsea.png" in kitty.stdout

    page = tmp_path / "out.html"
    out = runner.invoke(main, ["search", "a cat", "--home", str(home), "-k", "4", "--html", str(page)])
    assert out.exit_code == 0 and f"wrote {page} (4 results)" in out.stderr
    html = page.read_text()
    assert html.count("data:image/jpeg;base64,") == 4 and "chelsea.png" in html and "a cat" in html
    assert out.stdout == runner.invoke(main, ["search", "a cat", "--home", str(home), "-k", "4"]).stdout
