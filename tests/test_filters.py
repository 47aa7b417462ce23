"""Catalog filters on generated photos with known EXIF: every filtered search must equal the
brute-force top k among the images that pass, and return k whenever k images pass."""

from __future__ import annotations

import json
import os
from datetime import date, datetime

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from retriever import filters as F
from retriever.filters import FilterError, build
from retriever.search import Searcher
from tests.conftest import jpeg_bytes

CAMERAS = [("Canon", "EOS 5D"), ("NIKON CORPORATION", "NIKON D750"), ("Apple", "iPhone 13"), None]
PLACES = {"paris": (48.8584, 2.2945), "tokyo": (35.6586, 139.7454), "fiji": (-17.7134, 178.065)}


def _exif(camera, taken, gps):
    exif = Image.Exif()
    if camera:
        exif[0x010F], exif[0x0110] = camera
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")
    if gps:
        lat, lon = gps
        g = exif.get_ifd(0x8825)
        g[1], g[2] = ("N" if lat >= 0 else "S"), _dms(abs(lat))
        g[3], g[4] = ("E" if lon >= 0 else "W"), _dms(abs(lon))
    return exif


def _dms(value):
    d = int(value)
    m = int((value - d) * 60)
    s = round(((value - d) * 60 - m) * 60, 4)
    return (float(d), float(m), s)


def make_collection(root):
    """48 images: 4 cameras x 6 years x 2 sizes; a few with GPS; 4 PNGs dated by mtime only.
    Returns {path: expected metadata}."""
    rng = np.random.default_rng(0)
    expected = {}
    (root / "a").mkdir(parents=True)
    (root / "b" / "deep").mkdir(parents=True)
    (root / "ab").mkdir()  # a sibling whose name starts like "a": --in a must not match it
    n = 0
    for ci, camera in enumerate(CAMERAS):
        for year in range(2019, 2025):
            for big in (False, True):
                size = (160, 120) if big else (48, 36)
                if n % 7 == 3:
                    size = size[::-1]  # portrait
                pixels = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
                img = Image.fromarray(pixels)
                taken = datetime(year, 1 + (n % 12), 1 + (n % 27), 12, 0, 0)
                place = ["paris", "tokyo", "fiji", None, None][n % 5]
                folder = ["a", "b/deep", "ab"][n % 3]
                path = root / folder / f"img{n:02d}.jpg"
                path.write_bytes(jpeg_bytes(img, exif=_exif(camera, taken, PLACES.get(place)), quality=90))
                expected[str(path)] = {
                    "camera": camera, "taken": taken, "place": place, "size": size, "folder": folder, "format": "JPEG",
                }
                n += 1
    for i in range(4):  # no EXIF: the date is the mtime
        pixels = (rng.random((40, 40, 3)) * 255).astype("uint8")
        path = root / "a" / f"scan{i}.png"
        Image.fromarray(pixels).save(path)
        when = datetime(2018, 6, 10 + i, 9, 0, 0)
        os.utime(path, (when.timestamp(), when.timestamp()))
        expected[str(path)] = {"camera": None, "taken": when, "place": None, "size": (40, 40), "folder": "a",
                               "format": "PNG"}
    return expected


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_clip, tiny_encoder):
    from retriever.encoders import ModelSpec
    from retriever.index import Index
    from retriever.indexer import run_index

    root = tmp_path_factory.mktemp("exif-photos")
    expected = make_collection(root)
    spec = ModelSpec(tiny_clip["config"], tiny_clip["pt"])
    index = Index.create(tmp_path_factory.mktemp("exif-home"), "default", spec, tiny_encoder.model_id, tiny_encoder.dim)
    index.acquire_lock()
    summary = run_index(index, tiny_encoder, [str(root)])
    index.release_lock()
    assert summary.indexed == len(expected) and summary.failed == 0
    yield index, expected, root
    index.close()


@pytest.fixture(scope="module")
def searcher(collection, tiny_encoder):
    index, _, _ = collection
    return Searcher(index, encoder=tiny_encoder)


def brute_force(index, expected, query, passes, k):
    """The top k by exact cosine among the images for which passes(meta) is true."""
    ids_by_path = {r["path"]: r["id"] for r in index.catalog.image_rows(range(1, 1000)).values()}
    stored = index.catalog.vectors_for(list(ids_by_path.values()), index.dim)
    ranked = sorted(
        ((float(stored[ids_by_path[p]] @ query), p) for p, meta in expected.items() if passes(meta)),
        reverse=True,
    )
    return [p for _, p in ranked[:k]]


def run(searcher, query, k, **kw):
    return [h.path for h in searcher.by_vector(query, k, filters=build(**kw))]


def query_vector(index, seed):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=index.dim).astype(np.float32)
    return v / np.linalg.norm(v)


def km(a, b):
    return F.haversine_km(*a, *b)


CASES = [
    ({"cameras": ["canon"]}, lambda m: m["camera"] and m["camera"][0] == "Canon"),
    ({"cameras": ["iphone", "d750"]}, lambda m: m["camera"] and m["camera"][1] in ("iPhone 13", "NIKON D750")),
    ({"after": "2022"}, lambda m: m["taken"] >= datetime(2022, 1, 1)),
    ({"before": "2020-06"}, lambda m: m["taken"] < datetime(2020, 6, 1)),
    ({"after": "2021-03-01", "before": "2022"}, lambda m: datetime(2021, 3, 1) <= m["taken"] < datetime(2022, 1, 1)),
    ({"before": "2019"}, lambda m: m["taken"] < datetime(2019, 1, 1)),  # only the PNGs, by mtime
    ({"folders": ["a"]}, lambda m: m["folder"] == "a"),
    ({"folders": ["b"]}, lambda m: m["folder"] == "b/deep"),
    ({"formats": ["png"]}, lambda m: m["format"] == "PNG"),
    ({"formats": ["jpg"]}, lambda m: m["format"] == "JPEG"),
    ({"min_size": "100"}, lambda m: min(m["size"]) >= 100),
    ({"min_size": "150x110"}, lambda m: max(m["size"]) >= 150 and min(m["size"]) >= 110),
    ({"near": "48.86,2.29", "within_km": 5}, lambda m: m["place"] == "paris"),
    ({"near": "48.86,2.29", "within_km": 10_000}, lambda m: m["place"] in ("paris", "tokyo")),
    ({"near": "-17.7,179.9", "within_km": 300}, lambda m: m["place"] == "fiji"),  # box crosses the antimeridian
    ({"cameras": ["canon"], "after": "2023", "min_size": "100"},
     lambda m: m["camera"] and m["camera"][0] == "Canon" and m["taken"] >= datetime(2023, 1, 1)
     and min(m["size"]) >= 100),
]


@pytest.mark.parametrize("kw,passes", CASES, ids=[json.dumps(c[0]) for c in CASES])
@pytest.mark.parametrize("k", [1, 5, 60])
def test_filtered_search_is_the_brute_force_top_k_of_what_passes(collection, searcher, kw, passes, k):
    index, expected, root = collection
    cwd = os.getcwd()
    os.chdir(root)  # --in takes folders relative to the working directory
    try:
        for seed in range(3):
            q = query_vector(index, seed)
            want = brute_force(index, expected, q, passes, k)
            got = run(searcher, q, k, **kw)
            assert got == want
            assert len(got) == min(k, sum(1 for m in expected.values() if passes(m)))
    finally:
        os.chdir(cwd)


def test_both_strategies_agree(collection, searcher, monkeypatch):
    """Over-fetch (broad filters) and the IDSelector (selective ones) give the same answer."""
    import retriever.search as search_module

    index, expected, root = collection
    q = query_vector(index, 7)
    for kw in ({"formats": ["jpeg"]}, {"cameras": ["canon"]}, {"after": "2024"}):
        answers = {}
        for fraction in (0.0, 1.0):
            monkeypatch.setattr(search_module, "SELECTOR_MAX_FRACTION", fraction)
            answers[fraction] = run(searcher, q, 7, **kw)
            assert searcher.last_strategy == ("overfetch" if fraction == 0.0 else "selector")
        assert answers[0.0] == answers[1.0] and len(answers[0.0]) == 7


def test_a_selective_filter_still_returns_k(collection, searcher, monkeypatch):
    import retriever.search as search_module

    index, expected, _ = collection
    q = query_vector(index, 3)
    # 2 of 52 images: whatever the strategy, both come back for k=2.
    for fraction in (0.0, 1.0):
        monkeypatch.setattr(search_module, "SELECTOR_MAX_FRACTION", fraction)
        got = run(searcher, q, 2, cameras=["canon"], after="2024")
        assert len(got) == 2


def test_min_score_cuts_the_list(collection, searcher):
    index, expected, _ = collection
    q = query_vector(index, 1)
    all_hits = searcher.by_vector(q, 20)
    cut = all_hits[4].score
    hits = searcher.by_vector(q, 20, filters=build(min_score=cut))
    assert [h.path for h in hits] == [h.path for h in all_hits[:5]]
    assert all(h.score >= cut for h in hits)


def test_hits_carry_every_field_the_filters_use(collection, searcher):
    index, expected, _ = collection
    hit = searcher.by_vector(query_vector(index, 2), 60)
    by_path = {h.path: h for h in hit}
    for path, meta in expected.items():
        d = by_path[path].as_dict()
        assert d["date"] == meta["taken"].isoformat()
        assert (d["width"], d["height"]) == meta["size"]
        assert d["format"] == meta["format"]
        if meta["camera"]:
            assert (d["camera_make"], d["camera_model"]) == meta["camera"]
        if meta["place"]:
            assert km((d["gps_lat"], d["gps_lon"]), PLACES[meta["place"]]) < 0.01
        else:
            assert d["gps_lat"] is None
        assert d["tags"] == []


def test_no_match_returns_nothing(collection, searcher):
    index, _, _ = collection
    assert run(searcher, query_vector(index, 0), 5, cameras=["hasselblad"]) == []


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2023", "2023-01-01T00:00:00"),
        ("2023-06", "2023-06-01T00:00:00"),
        ("2023-06-15", "2023-06-15T00:00:00"),
        ("2023-06-15T18:30", "2023-06-15T18:30:00"),
        ("2023-06-15 18:30:05", "2023-06-15T18:30:05"),
        ("today", "2026-11-24T00:00:00"),
        ("yesterday", "2026-11-23T00:00:00"),
        ("30d", "2026-10-25T00:00:00"),
        ("2w", "2026-11-10T00:00:00"),
        ("6m", "2026-05-24T00:00:00"),
        ("1y", "2025-11-24T00:00:00"),
        ("14 days ago", "2026-11-10T00:00:00"),
    ],
)
def test_dates(text, expected):
    assert F.parse_date(text, today=date(2026, 11, 24)) == expected


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"after": "last tuesday"}, "cannot read the date"),
        ({"after": "2024", "before": "2023"}, "no date can match"),
        ({"near": "48.8"}, "LAT,LON"),
        ({"near": "95,10"}, "latitude"),
        ({"within_km": 3.0}, "--within needs --near"),
        ({"near": "1,2", "within_km": 0.0}, "greater than 0"),
        ({"min_size": "big"}, "--min-size"),
        ({"min_size": "0x10"}, "--min-size"),
    ],
)
def test_bad_filter_values_are_one_line_errors(kw, message):
    with pytest.raises(FilterError, match=message):
        build(**kw)


def test_min_size_reads_either_orientation():
    assert F.parse_min_size("1920x1080") == (1920, 1080)
    assert F.parse_min_size("1080x1920") == (1920, 1080)
    assert F.parse_min_size("1024") == (1024, 1024)
    assert F.parse_min_size(" 800 × 600 ") == (800, 600)
    for bad in ("10x", "x10", "10x20x30", "0", "-5", "10 20", "1e3", "", "10xx20", "9" * 12):
        with pytest.raises(FilterError, match="--min-size takes"):
            F.parse_min_size(bad)


def test_cli_filters_and_json(collection, tiny_clip):
    from retriever.cli import main

    index, expected, root = collection
    home = index.folder.parent
    runner = CliRunner()
    out = runner.invoke(main, ["search", "anything", "--home", str(home), "--camera", "apple", "--after", "2024",
                               "--json", "-k", "10"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    want = [p for p, m in expected.items() if m["camera"] == ("Apple", "iPhone 13") and m["taken"].year >= 2024]
    assert sorted(r["path"] for r in rows) == sorted(want) and len(rows) == 2
    for r in rows:
        assert r["camera_make"] == "Apple" and r["date"].startswith("2024")

    out = runner.invoke(main, ["search", "anything", "--home", str(home), "--camera", "hasselblad"])
    assert out.exit_code == 0 and "no results: nothing passes camera 'hasselblad'" in out.stderr

    out = runner.invoke(main, ["search", "anything", "--home", str(home), "--after", "someday"])
    assert out.exit_code == 1 and "cannot read the date 'someday'" in out.stderr
    assert "Traceback" not in out.output


def test_tag_filter_needs_every_tag_and_hits_carry_tags(tmp_path, tiny_clip, tiny_encoder):
    from retriever.encoders import ModelSpec
    from retriever.index import Index
    from retriever.indexer import run_index

    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(5)
    for i in range(12):
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype("uint8")).save(root / f"p{i}.png")
    spec = ModelSpec(tiny_clip["config"], tiny_clip["pt"])
    index = Index.create(tmp_path / "home", "default", spec, tiny_encoder.model_id, tiny_encoder.dim)
    index.acquire_lock()
    run_index(index, tiny_encoder, [str(root)])
    ids = sorted(r["id"] for r in index.catalog.image_rows(range(1, 100)).values())
    beach = ids[:5]
    sunset = ids[3:8]
    index.catalog.write_tags(ids, [(i, "beach", 0.9) for i in beach] + [(i, "sunset", 0.5) for i in sunset])
    searcher = Searcher(index, encoder=tiny_encoder)
    q = query_vector(index, 0)
    assert sorted(h.id for h in searcher.by_vector(q, 10, filters=build(tags=["Beach "]))) == beach
    both = searcher.by_vector(q, 10, filters=build(tags=["beach", "sunset"]))
    assert sorted(h.id for h in both) == [ids[3], ids[4]]
    assert all(h.meta["tags"] == ["beach", "sunset"] for h in both)
    assert searcher.by_vector(q, 10, filters=build(tags=["snow"])) == []
    index.close()
