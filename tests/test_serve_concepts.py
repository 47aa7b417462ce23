"""Concepts in `retriever serve`: the /api/concepts routes (relevance feedback marks, show, list,
uploads, dropping examples, export/import), concept:NAME and the concept= filter in /api/search
and /api/similar against the library's own results, the 404/400s, and `retriever search --concept`
through a running server. Over a copy of the offline index opened read-only, as a server may have
it: every concept write goes through the library's short-lived writable catalog."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import PHOTOS

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from retriever.serve.app import create_app  # noqa: E402
from retriever.serve.service import Service  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def home(tmp_path_factory, offline_index):
    home = tmp_path_factory.mktemp("concepts-home")
    shutil.copytree(offline_index.folder, home / "default", ignore=shutil.ignore_patterns("*.lock", "serve.json"))
    return home


@pytest.fixture(scope="module")
def index(home):
    from retriever.index import Index

    index = Index.open(home, "default", read_only=True)
    yield index
    index.close()


@pytest.fixture(scope="module")
def client(index, offline_encoder):
    with TestClient(create_app(Service(index, encoder=offline_encoder, reload_check_s=0)),
                    raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def local(index, offline_encoder):
    """The library's own view of the same index (a Collection of its own)."""
    from retriever.api import Collection

    return Collection(index, encoder=offline_encoder)


def id_of(index, name):
    return index.catalog.find_by_path(str(PHOTOS / name))["id"]


def names(results):
    return [Path(r["path"]).name for r in results]


def mark(client, name, **marks):
    r = client.post(f"/api/concepts/{name}/marks", json=marks)
    assert r.status_code == 200, r.text
    return r.json()


def local_query(local, words, k, keywords=False, **filters):
    from retriever.query import parse

    terms = parse(words, default="text") if words else []
    return [h.as_dict() for h in local.query(terms, k, local.filters(**filters), keywords=keywords)]


# -- relevance feedback and the concept routes ------------------------------------------------------


def test_marks_create_refit_list_show_and_delete(client, index, local):
    cat, astronaut, coffee = (id_of(index, n) for n in ("chelsea.png", "astronaut.jpg", "coffee.jpg"))
    assert "pets" not in [c["name"] for c in client.get("/api/concepts").json()["concepts"]]
    assert client.get("/api/concepts/pets").status_code == 404
    first = mark(client, "pets", yes=[cat])  # a first yes creates it
    assert first["name"] == "pets" and first["positives"] == 1 and first["negatives"] == 0
    assert [(e["id"], e["label"], e["source"]) for e in first["examples"]] == [(cat, "yes", "feedback")]
    again = mark(client, "pets", yes=[astronaut], no=[coffee])  # refitted at once: a new version
    assert again["version"] > first["version"] and (again["positives"], again["negatives"]) == (2, 1)
    assert {e["id"]: e["label"] for e in again["examples"]} == {cat: "yes", astronaut: "yes", coffee: "no"}
    flipped = mark(client, "pets", no=[astronaut])  # a photo marked again takes its latest mark
    assert {e["id"]: e["label"] for e in flipped["examples"]} == {cat: "yes", astronaut: "no", coffee: "no"}
    listed = client.get("/api/concepts").json()
    assert listed["count"] == len(listed["concepts"])
    row = next(c for c in listed["concepts"] if c["name"] == "pets")
    assert (row["positives"], row["negatives"], row["usable"]) == (1, 2, True)
    shown = client.get("/api/concepts/PETS").json()  # names match without case, as in the library
    assert shown == local.concept("pets") and shown["examples"] == flipped["examples"]
    # undo one photo's mark, drop one example by its number: both refit
    unmarked = client.delete(f"/api/concepts/pets/photos/{astronaut}").json()
    assert astronaut not in [e["id"] for e in unmarked["examples"]] and unmarked["version"] > flipped["version"]
    coffee_example = next(e["example"] for e in unmarked["examples"] if e["id"] == coffee)
    dropped = client.delete(f"/api/concepts/pets/examples/{coffee_example}").json()
    assert [e["id"] for e in dropped["examples"]] == [cat]
    # the last photo that shows it cannot go; the concept as a whole can
    last = client.delete(f"/api/concepts/pets/photos/{cat}")
    assert last.status_code == 400 and "no photo that shows it left" in last.json()["error"]
    assert client.delete("/api/concepts/pets").json() == {"name": "pets", "removed": True}
    assert "pets" not in [c["name"] for c in client.get("/api/concepts").json()["concepts"]]
    gone = client.get("/api/search", params={"q": "concept:pets"})
    assert gone.status_code == 404 and gone.json()["error"].startswith("no concept 'pets'")


def test_concept_searches_match_the_library(client, index, local):
    cat, camera, coffee = (id_of(index, n) for n in ("chelsea.png", "camera.png", "coffee.jpg"))
    mark(client, "rex", yes=[cat, camera], no=[coffee])
    # q=concept:NAME through the query language, alone and with text
    for q, words in (("concept:rex", ["concept:rex"]), ("concept:rex + a cat", ["concept:rex", "+", "a cat"])):
        body = client.get("/api/search", params={"q": q, "k": 15, "keywords": "false"}).json()
        assert body["results"] == local_query(local, words, 15)
        hybrid = client.get("/api/search", params={"q": q, "k": 15}).json()  # keywords fused, the default
        assert hybrid["results"] == local_query(local, words, 15, keywords=True)
    ranked = client.get("/api/search", params={"q": "concept:rex", "k": 15}).json()["results"]
    assert {cat, camera} <= {r["id"] for r in ranked[:3]}
    # the concept= filter: alone, the photos it accepts ranked by it; with a query, a filter on it
    alone = client.get("/api/search", params={"concept": "rex", "k": 15}).json()
    assert alone["filters"] == ["concept rex"]
    assert alone["results"] == local_query(local, [], 15, concepts=["rex"])
    assert 0 < alone["count"] < 15 and cat in [r["id"] for r in alone["results"]]
    filtered = client.get("/api/search", params={"q": "a cat", "concept": "rex", "k": 15}).json()
    assert filtered["results"] == local_query(local, ["a cat"], 15, keywords=True, concepts=["rex"])
    accepted = {r["id"] for r in alone["results"]}
    assert {r["id"] for r in filtered["results"]} == accepted
    # repeatable and comma-separated, as tag=
    mark(client, "things", yes=[camera, coffee])
    both = [r["id"] for r in client.get("/api/search", params=[("concept", "rex,things"), ("k", 15)]).json()["results"]]
    assert both == [r["id"] for r in client.get("/api/search", params=[("concept", "rex"), ("concept", "things"),
                                                                        ("k", 15)]).json()["results"]]
    assert set(both) <= accepted
    # similar takes the filter too
    like = client.get("/api/similar", params={"id": coffee, "concept": "rex", "k": 15}).json()
    assert like["filters"] == ["concept rex"] and {r["id"] for r in like["results"]} <= accepted - {coffee}


def test_an_uploaded_photo_as_an_example_and_export_import(client, tmp_path):
    from PIL import Image

    from tests.conftest import jpeg_bytes

    outside = jpeg_bytes(Image.open(PHOTOS / "rocket.jpg").convert("RGB").resize((300, 300)), quality=85)
    r = client.post("/api/concepts/launch/images", files={"file": ("mine.jpg", outside, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(e["id"], e["label"], e["source"]) for e in body["examples"]] == [(None, "yes", "upload")]
    assert names(client.get("/api/search", params={"q": "concept:launch", "k": 1}).json()["results"]) == ["rocket.jpg"]
    negative = client.post("/api/concepts/launch/images", params={"label": "no"},
                           files={"file": ("not.jpg", jpeg_bytes(Image.open(PHOTOS / "coffee.jpg").convert("RGB")),
                                           "image/jpeg")}).json()
    assert (negative["positives"], negative["negatives"]) == (1, 1)
    # a file that is not an image: refused, nothing stored
    bad = client.post("/api/concepts/nothing/images", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
    assert bad.status_code == 415 and client.get("/api/concepts/nothing").status_code == 404
    # a form on another site cannot add examples to a server without a token
    for headers in ({"origin": "http://evil.example"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"}):
        refused = client.post("/api/concepts/launch/images", headers=headers,
                              files={"file": ("x.jpg", outside, "image/jpeg")})
        assert refused.status_code == 403 and "another site" in refused.json()["error"]
    same = client.post("/api/concepts/launch/images", headers={"origin": "http://testserver"}, params={"label": "no"},
                       files={"file": ("same.jpg", outside, "image/jpeg")})
    assert same.status_code == 200 and same.json()["negatives"] == 2
    client.delete(f"/api/concepts/launch/examples/{same.json()['examples'][-1]['example']}")
    wrong = client.post("/api/concepts/launch/images", params={"label": "maybe"},
                        files={"file": ("x.jpg", outside, "image/jpeg")})
    assert wrong.status_code == 400 and "yes or no" in wrong.json()["error"]
    # export, then import under another name: the same examples, refitted
    exported = client.get("/api/concepts/launch/export").json()
    assert exported["name"] == "launch" and len(exported["examples"]) == 2
    imported = client.post("/api/concepts", params={"name": "launch copy"}, json=exported)
    assert imported.status_code == 200, imported.text
    assert imported.json()["name"] == "launch copy" and (imported.json()["positives"], imported.json()["negatives"]) == (1, 1)
    copy = client.get("/api/search", params={"q": 'concept:"launch copy"', "k": 3}).json()["results"]
    original = client.get("/api/search", params={"q": "concept:launch", "k": 3}).json()["results"]
    assert [r["id"] for r in copy] == [r["id"] for r in original]  # (the export rounds the vectors)
    other_model = dict(exported, model_id="another/model")
    refused = client.post("/api/concepts", json=other_model)
    assert refused.status_code == 400 and "another/model" in refused.json()["error"]


@pytest.mark.parametrize("method, url, kwargs, status, words", [
    ("GET", "/api/concepts/nope", {}, 404, "no concept 'nope'"),
    ("GET", "/api/concepts/nope/export", {}, 404, "no concept"),
    ("DELETE", "/api/concepts/nope", {}, 404, "no concept"),
    ("DELETE", "/api/concepts/nope/examples/1", {}, 404, "no concept"),
    ("DELETE", "/api/concepts/errs/examples/99999", {}, 404, "no such example"),
    ("DELETE", "/api/concepts/errs/examples/x", {}, 404, "no such example"),
    ("DELETE", "/api/concepts/errs/photos/99999", {}, 404, "no such example"),
    ("GET", "/api/search?q=concept:nope", {}, 404, "no concept 'nope'"),
    ("GET", "/api/search?q=cat&concept=nope", {}, 404, "no concept 'nope'"),
    ("GET", "/api/search?concept=nope", {}, 404, "no concept 'nope'"),
    ("GET", "/api/similar?id=1&concept=nope", {}, 404, "no concept 'nope'"),
    ("GET", "/api/concepts/%23bad", {}, 400, "a concept name is"),
    ("POST", "/api/concepts/%23bad/marks", {"json": {"yes": [1]}}, 400, "a concept name is"),
    ("GET", "/api/search?concept=%23bad", {}, 400, "a concept name is"),
    ("GET", "/api/search?q=concept:%23bad", {}, 400, "a concept name is"),
    ("GET", "/api/search?concept=" + "x" * 70, {}, 400, "a concept name is"),
    ("POST", "/api/concepts/errs/marks", {"json": {"yes": [99999]}}, 400, "no indexed photo with id 99999"),
    ("POST", "/api/concepts/errs/marks", {"json": {"yes": [-1]}}, 400, "not a photo id"),
    ("POST", "/api/concepts/errs/marks", {"json": {"yes": [10 ** 30]}}, 400, "not a photo id"),
    ("POST", "/api/concepts/errs/marks", {"json": {"yes": [1], "no": [1]}}, 400, "both yes and no"),
    ("POST", "/api/concepts/errs/marks", {"json": {}}, 400, "give photo ids"),
    ("POST", "/api/concepts/newer/marks", {"json": {"no": [1]}}, 400, "needs at least one photo that shows"),
    ("POST", "/api/concepts/errs/marks", {"json": {"yes": list(range(1001))}}, 400, "at most 1000"),
    ("POST", "/api/concepts/errs/marks", {"json": {"yes": ["1"]}}, 422, "yes.0"),
    ("POST", "/api/concepts/errs/marks", {"json": {"yes": [True]}}, 422, "yes.0"),
    ("POST", "/api/concepts/errs/marks", {"json": {"yes": 1}}, 422, "yes"),
    ("POST", "/api/concepts/errs/marks", {"json": {"maybe": [1]}}, 422, "maybe"),
    ("POST", "/api/concepts/errs/marks", {"content": b"not json", "headers": {"content-type": "application/json"}},
     422, ""),
    ("POST", "/api/concepts", {"json": {"format": 1}}, 400, "not a concept file"),
    ("POST", "/api/concepts", {"json": [1, 2]}, 422, ""),
])
def test_bad_concept_requests_get_json_4xx(client, index, method, url, kwargs, status, words):
    mark(client, "errs", yes=[id_of(index, "chelsea.png")])
    r = client.request(method, url, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["status"] == status and words in r.json()["error"]
    assert "Traceback" not in r.text
    assert client.get("/api/concepts/newer").status_code == 404  # a refused first mark stores nothing


def test_malformed_concept_requests_never_get_a_5xx(client, index):
    mark(client, "fuzz", yes=[id_of(index, "chelsea.png")])
    values = ["", "%00", "%2e%2e", "..", "x" * 500, "%FF%FE", "\u202e", "concept:", "a,b", "nan", "-1", "9" * 40]
    cases = []
    for v in values:
        cases += [("GET", f"/api/concepts/{v}", {}), ("DELETE", f"/api/concepts/{v}/examples/{v}", {}),
                  ("DELETE", f"/api/concepts/fuzz/photos/{v}", {}), ("GET", f"/api/search?concept={v}", {}),
                  ("GET", f"/api/search?q=concept:{v}", {}), ("POST", f"/api/concepts/{v}/marks", {"json": {"yes": [1]}}),
                  ("POST", f"/api/concepts?name={v}", {"json": {}})]
    for body in ({"yes": None}, {"yes": [[1]]}, {"yes": [1.5]}, {"yes": [{}]}, None, "x", {"no": ["%00"]}):
        cases.append(("POST", "/api/concepts/fuzz/marks", {"json": body}))
    bad = []
    for method, url, kwargs in cases:
        r = client.request(method, url, **kwargs)
        if r.status_code >= 500 or "Traceback" in r.text:
            bad.append((method, url, r.status_code, r.text[:120]))
    assert bad == [], "\n".join(map(str, bad))
    # (the client resolves /api/concepts/fuzz/photos/.. to /api/concepts/fuzz: that DELETE removed it)
    assert client.get("/api/concepts/fuzz").status_code == 404


def test_the_openapi_schema_lists_the_concept_routes(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"get", "post"} <= set(paths["/api/concepts"]) and {"get", "delete"} <= set(paths["/api/concepts/{name}"])
    assert "post" in paths["/api/concepts/{name}/marks"] and "post" in paths["/api/concepts/{name}/images"]
    assert "delete" in paths["/api/concepts/{name}/examples/{example}"]
    assert "concept" in [p["name"] for p in paths["/api/search"]["get"]["parameters"]]


# -- the CLI through a running server ---------------------------------------------------------------


def test_the_cli_filters_by_a_concept_through_a_server(home, index, client, offline_encoder, monkeypatch):
    """`retriever search --concept NAME` (with and without a query) and `concept:NAME` answer
    through a running server exactly as locally."""
    from click.testing import CliRunner

    from retriever.cli import main
    from retriever.cli import search as cli
    from retriever.index import Index
    from retriever.serve.server import Server

    mark(client, "cli", yes=[id_of(index, "chelsea.png"), id_of(index, "camera.png")])
    served = Index.open(home, "default")
    server = Server(Service(served, encoder=offline_encoder), host="127.0.0.1", port=0)
    server.start()
    try:
        runner = CliRunner()
        commands = [["search", "--concept", "cli"], ["search", "a cat", "--concept", "cli"], ["search", "concept:cli"],
                    ["similar", str(PHOTOS / "coffee.jpg"), "--concept", "cli"]]
        via_server = []
        for command in commands:
            result = runner.invoke(main, [*command, "--home", str(home), "-k", "5", "--json", "-v"])
            assert result.exit_code == 0, result.output
            assert "answered by the server at http://127.0.0.1:" in result.stderr, (command, result.stderr)
            via_server.append(result.stdout)
        unknown = runner.invoke(main, ["search", "--concept", "nope", "--home", str(home), "-v"])
        assert unknown.exit_code == 1 and "no concept 'nope'" in unknown.stderr and "Traceback" not in unknown.output
        monkeypatch.setattr(cli, "_ask_server", lambda *a, **kw: None)
        for command, remote in zip(commands, via_server):
            result = runner.invoke(main, [*command, "--home", str(home), "-k", "5", "--json"])
            assert result.exit_code == 0 and result.stdout == remote, command
    finally:
        server.stop()
        served.close()
