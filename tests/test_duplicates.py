"""`retriever duplicates`: exact copies by fingerprint, near-duplicates by range search over the
stored vectors, the chaining guard, videos, and the command.

Most tests write catalog rows with hand-made vectors of known cosines (no encoder, no decoding);
the last ones index real photos with planted copies through the real pipeline."""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from retriever.cli import main
from retriever.duplicates import (
    DEFAULT_THRESHOLDS,
    FALLBACK_THRESHOLD,
    DuplicatesError,
    connected_components,
    default_threshold,
    find_duplicates,
    guard_threshold,
    range_pairs,
    video_pair_score,
)
from retriever.encoders import ModelSpec
from retriever.errors import RetrieverError
from retriever.index import Index
from tests.conftest import PHOTOS

OFFLINE_ID = "offline/conse-effnetlite0-minilm/v1"
DIM = 8


# -- a catalog with hand-made vectors ---------------------------------------------------------------


def basis(k: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[k] = 1.0
    return v


def at_cosine(base: np.ndarray, c: float, towards: int) -> np.ndarray:
    """A unit vector with cosine `c` to the unit vector `base`, turned towards axis `towards`."""
    return (c * base + math.sqrt(1 - c * c) * basis(towards)).astype(np.float32)


@pytest.fixture
def made(tmp_path):
    """-> (index, put): put(name, vector, ...) writes one catalog row with that vector."""
    index = Index.create(tmp_path / "home", "default", ModelSpec(name="offline"), OFFLINE_ID, DIM)
    col = tmp_path / "col"
    counter = iter(range(1, 10_000))

    def put(name, vector, *, fingerprint=None, frame_ms=None, size=1000, width=64, height=48, status="indexed"):
        n = next(counter)
        row = {
            "path": str(col / name), "frame_ms": frame_ms, "size": size, "mtime_ns": n * 10**9,
            "fingerprint": fingerprint or f"fp-{name}", "status": status, "error": None,
            "width": width, "height": height, "format": "JPEG",
            "vector": None if status != "indexed" else np.asarray(vector, np.float32) / np.linalg.norm(vector),
        }
        return index.catalog.write_batch([row])[0]

    yield index, put
    index.close()


def names(group) -> list[str]:
    return sorted(m.path.rsplit("/", 1)[-1] for m in group.members)


def put_arc(put) -> None:
    """Seven photos p0..p6 on an arc, each linked only to its neighbours, at cosines
    0.93, 0.97, 0.95, 0.96, 0.94, 0.92: the ends are 113 degrees apart."""
    links = [0.93, 0.97, 0.95, 0.96, 0.94, 0.92]
    angles = np.concatenate([[0.0], np.cumsum(np.arccos(links))])
    for k, angle in enumerate(angles):
        put(f"p{k}.jpg", np.cos(angle) * basis(0) + np.sin(angle) * basis(1))


# -- thresholds -------------------------------------------------------------------------------------


def test_links_need_the_threshold(made):
    index, put = made
    a = basis(0)
    put("a.jpg", a)
    put("b.jpg", at_cosine(a, 0.95, 1))
    put("c.jpg", at_cosine(a, 0.85, 2))  # b.c = 0.95 * 0.85 = 0.8075
    put("far.jpg", basis(3))

    strict = find_duplicates(index, 0.9)
    assert [names(g) for g in strict.groups] == [["a.jpg", "b.jpg"]]
    group = strict.groups[0]
    assert group.kind == "near" and group.pairs == [(0, 1, pytest.approx(0.95, abs=1e-5))]
    assert [m.score for m in group.members] == [pytest.approx(0.95, abs=1e-5)] * 2
    assert strict.threshold == 0.9 and strict.files == 4 and strict.files_in_groups == 2

    assert find_duplicates(index, 0.96).groups == []
    loose = find_duplicates(index, 0.8)
    assert [names(g) for g in loose.groups] == [["a.jpg", "b.jpg", "c.jpg"]]
    assert sorted(round(s, 4) for _, _, s in loose.groups[0].pairs) == [0.8075, 0.85, 0.95]


def test_the_default_threshold_depends_on_the_model_family(made, monkeypatch):
    index, put = made
    monkeypatch.setitem(DEFAULT_THRESHOLDS, "offline/", 0.81)
    monkeypatch.setitem(DEFAULT_THRESHOLDS, "open_clip/", 0.92)
    assert default_threshold(OFFLINE_ID) == 0.81
    assert default_threshold("open_clip/ViT-B-32/laion2b_s34b_b79k") == 0.92
    assert default_threshold("someone-else/model") == FALLBACK_THRESHOLD
    # the index's own model decides when no threshold is given
    t = 0.81
    a = basis(0)
    put("a.jpg", a)
    put("just-above.jpg", at_cosine(a, t + 0.004, 1))
    put("just-below.jpg", at_cosine(a, t - 0.004, 2))
    report = find_duplicates(index)
    assert report.threshold == t
    assert [names(g) for g in report.groups] == [["a.jpg", "just-above.jpg"]]


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.01, float("nan")])
def test_a_threshold_out_of_range_is_a_typed_error(made, bad):
    index, _ = made
    with pytest.raises(DuplicatesError) as err:
        find_duplicates(index, bad)
    assert isinstance(err.value, RetrieverError) and "threshold" in str(err.value)
    with pytest.raises(DuplicatesError):
        find_duplicates(index, 0.9, min_size=1)


# -- range search against brute force ---------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_range_pairs_find_exactly_the_pairs_brute_force_finds(chunk):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 16)).astype(np.float32)
    noise = rng.uniform(0.05, 0.6, size=(200, 1)).astype(np.float32)
    vecs = centres[rng.integers(0, 40, 200)] / 4 + rng.standard_normal((200, 16)).astype(np.float32) * noise / 4
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1000, 1200, dtype=np.int64)
    threshold = 0.9

    # the chunks as the catalog hands them out (uneven), re-cut by range_pairs into `chunk`s
    given = [(ids[lo:hi], vecs[lo:hi]) for lo, hi in [(0, 13), (13, 150), (150, 151), (151, 200)]]
    index, pos_ids, (qi, qj, qs) = range_pairs(given, 16, threshold, chunk=chunk)
    assert index.ntotal == 200 and np.array_equal(pos_ids, ids)
    assert np.all(qi > qj)  # each pair once

    sims = vecs @ vecs.T
    expected = {(i, j) for i in range(200) for j in range(i) if sims[i, j] >= threshold}
    found = dict(zip(zip(qi.tolist(), qj.tolist()), qs.tolist()))
    borderline = {(i, j) for i in range(200) for j in range(i) if abs(sims[i, j] - threshold) < 1e-5}
    assert len(expected) > 100  # the data has plenty of pairs above the threshold
    assert set(found) - borderline == expected - borderline
    assert max(abs(found[p] - sims[p]) for p in found) < 1e-5


def test_the_ivf_range_search_finds_the_planted_pairs_the_exact_one_finds():
    """Above EXACT_MAX vectors: 3,000 seeded vectors with 300 planted near-copies; the approximate
    search finds only true pairs, with their exact scores, and nearly all of the exact pairs."""
    from retriever.duplicates_ivf import range_pairs_ivf

    rng = np.random.default_rng(1)
    base = rng.standard_normal((2700, 32)).astype(np.float32) + 2.0 * rng.standard_normal((1, 32)).astype(np.float32)
    copies = base[:300] + rng.standard_normal((300, 32)).astype(np.float32) * 0.15
    vecs = np.concatenate([base, copies])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(5, 3005, dtype=np.int64)
    given = [(ids[lo:lo + 700], vecs[lo:lo + 700]) for lo in range(0, 3000, 700)]
    _, exact_ids, (ei, ej, es) = range_pairs(given, 32, 0.95)
    rows, pos_ids, (qi, qj, qs) = range_pairs_ivf(given, 32, 0.95)
    assert np.array_equal(pos_ids, exact_ids) and np.allclose(rows.reconstruct(7), vecs[7])
    exact = dict(zip(zip(ei.tolist(), ej.tolist()), es.tolist()))
    found = dict(zip(zip(qi.tolist(), qj.tolist()), qs.tolist()))
    assert len(found) == len(qi) and np.all(qi > qj)  # each pair once
    assert len(exact) >= 250 and set(found) <= set(exact)
    assert len(found) >= 0.97 * len(exact)
    assert max(abs(found[p] - exact[p]) for p in found) < 1e-5


def test_groups_are_the_same_through_the_ivf_search(made, monkeypatch):
    import retriever.duplicates as D

    index, put = made
    put_arc(put)
    put("far.jpg", basis(3))
    exact = find_duplicates(index, 0.9)
    monkeypatch.setattr(D, "EXACT_MAX", 0)
    approx = find_duplicates(index, 0.9)
    assert [names(g) for g in approx.groups] == [names(g) for g in exact.groups] == [["p1.jpg", "p2.jpg"],
                                                                                      ["p3.jpg", "p4.jpg"]]


def test_connected_components_and_the_video_score():
    assert connected_components({(1, 2): 0.9, (3, 4): 0.9, (2, 5): 0.95}) == [[1, 2, 5], [3, 4]]
    assert connected_components({}) == []
    inf = -np.inf
    # more than half of the shorter video's frames must match; frames without a match count as misses
    assert video_pair_score(np.array([0.99, 0.98, inf]), np.array([0.99, 0.97, 0.98, inf, inf])) == 0.98
    assert video_pair_score(np.array([0.99, inf, inf]), np.array([0.99, inf, inf, inf])) == inf
    assert video_pair_score(np.array([0.99, 0.95]), np.array([0.97, 0.96, 0.9])) == pytest.approx(0.95)
    # as many frames on both sides: the weaker of the two
    assert video_pair_score(np.array([0.99, 0.96]), np.array([0.97, 0.95])) == pytest.approx(0.95)


# -- the chaining guard -----------------------------------------------------------------------------


def test_the_guard_breaks_a_chain_at_its_weakest_links(made):
    """Seven photos on an arc, each linked only to its neighbours (cosines below): unguarded they
    are one group although the ends are 113 degrees apart."""
    index, put = made
    put_arc(put)

    plain = find_duplicates(index, 0.9, guard=False)
    assert [len(g.members) for g in plain.groups] == [7] and len(plain.groups[0].pairs) == 6

    # cut weakest first (0.92, 0.93, 0.94, 0.95) until every group is a near-duplicate of its centre
    guarded = find_duplicates(index, 0.9)
    assert [names(g) for g in guarded.groups] == [["p1.jpg", "p2.jpg"], ["p3.jpg", "p4.jpg"]]
    assert [g.best for g in guarded.groups] == [pytest.approx(0.97, abs=1e-5), pytest.approx(0.96, abs=1e-5)]
    assert guarded.guard and not plain.guard


def test_the_guard_loosens_with_its_factor(made, monkeypatch):
    index, put = made
    put_arc(put)
    monkeypatch.setattr("retriever.duplicates.GUARD_FACTOR", 2.0)  # members within 0.8 of the centre
    assert guard_threshold(0.9) == pytest.approx(0.8)
    (group,) = find_duplicates(index, 0.9).groups
    assert names(group) == ["p1.jpg", "p2.jpg", "p3.jpg", "p4.jpg"]  # p2 is the centre: p4 is 34 degrees off
    vecs = np.vstack(list(index.catalog.vectors_for([m.id for m in group.members], DIM).values()))
    sims = vecs @ vecs.T
    assert sims.min() < 0.9 and max(row.min() for row in sims) >= 0.8


def test_the_guard_keeps_tight_groups_whole(made):
    index, put = made
    a = basis(0)
    put("a.jpg", a)
    put("b.jpg", at_cosine(a, 0.97, 1))
    put("c.jpg", at_cosine(a, 0.96, 2))
    put("d.jpg", at_cosine(a, 0.95, 3))
    report = find_duplicates(index, 0.9)
    assert [names(g) for g in report.groups] == [["a.jpg", "b.jpg", "c.jpg", "d.jpg"]]
    best = {n.rsplit("/", 1)[-1]: m for n, m in ((m.path, m) for m in report.groups[0].members)}
    assert best["a.jpg"].score == pytest.approx(0.97, abs=1e-5)
    assert best["d.jpg"].score == pytest.approx(0.95, abs=1e-5)


# -- exact copies -----------------------------------------------------------------------------------


def test_exact_copies_are_grouped_by_fingerprint_and_stand_once_in_near_groups(made):
    index, put = made
    a = basis(0)
    put("a.jpg", a, fingerprint="same", size=5000, width=640, height=480)
    put("copy/a.jpg", a, fingerprint="same", size=5000, width=640, height=480)
    put("a again.jpg", a, fingerprint="same", size=5000, width=640, height=480)
    put("a-small.jpg", at_cosine(a, 0.97, 1), size=900, width=320, height=240)
    put("b.jpg", basis(2), fingerprint="twin", size=7000)
    put("b-twin.jpg", basis(2), fingerprint="twin", size=7000)
    put("broken.jpg", None, fingerprint="twin", status="failed")  # failed files are not copies

    report = find_duplicates(index, 0.9)
    three, two = report.exact  # most bytes to reclaim first
    oldest_first = ["a.jpg", "copy/a.jpg", "a again.jpg"]
    assert [m.path.rsplit("col/", 1)[1] for m in three.members] == oldest_first
    assert three.reclaimable_bytes == 10_000 and all(m.score == 1.0 for m in three.members)
    assert three.pairs == [(0, 1, 1.0), (0, 2, 1.0)]
    assert names(two) == ["b-twin.jpg", "b.jpg"] and two.reclaimable_bytes == 7_000
    # the near group holds a.jpg once, standing for its two copies; b and its twin make no near group
    (near,) = report.near
    assert [m.path.rsplit("col/", 1)[1] for m in near.members] == ["a.jpg", "a-small.jpg"]  # most pixels first
    assert sorted(p.rsplit("col/", 1)[1] for p in near.members[0].copies) == ["a again.jpg", "copy/a.jpg"]
    assert report.reclaimable_bytes == 10_000 + 7_000
    assert report.files == 6 and report.files_in_groups == 6


def test_exact_only_needs_no_faiss(made, monkeypatch):
    index, put = made
    put("a.jpg", basis(0), fingerprint="same")
    put("b.jpg", basis(0), fingerprint="same")
    put("c.jpg", at_cosine(basis(0), 0.99, 1))
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails
    report = find_duplicates(index, exact_only=True)
    assert [g.kind for g in report.groups] == ["exact"] and report.threshold is None
    with pytest.raises(ImportError):
        find_duplicates(index)  # the near-duplicate search does need it: the block works


# -- videos -----------------------------------------------------------------------------------------


def test_videos_take_part_as_whole_files(made):
    index, put = made
    scene = [basis(0), basis(1), basis(2), basis(3)]
    for k, v in enumerate([scene[0], scene[0], scene[1], scene[2]]):  # frames 0 and 1: one still scene
        put("trip.mp4", v, fingerprint="trip", frame_ms=5000 * k, size=10**6)
    put("frame-grab.jpg", scene[1])  # a still equal to a frame of trip.mp4
    for k, v in enumerate([scene[0], scene[0], scene[1], scene[2]]):
        put("trip-reencoded.mov", at_cosine(v, 0.98, 4 + k), fingerprint="trip2", frame_ms=5000 * k, size=4 * 10**5)
    for k, v in enumerate([scene[0], basis(5), basis(6), basis(7)]):  # shares its opening shot only
        put("other.mp4", v, fingerprint="other", frame_ms=5000 * k)
    for k, v in enumerate([scene[0], scene[0], scene[1], scene[2]]):
        put("backup/trip.mp4", v, fingerprint="trip", frame_ms=5000 * k, size=10**6)

    report = find_duplicates(index, 0.9)
    assert report.files == 5
    (exact,) = report.exact
    assert names(exact) == ["trip.mp4", "trip.mp4"] and exact.reclaimable_bytes == 10**6
    assert [m.frames for m in exact.members] == [4, 4]
    (near,) = report.near  # not the frames of one video, not the still, not the shared opening
    assert names(near) == ["trip-reencoded.mov", "trip.mp4"]
    assert all(m.frames == 4 for m in near.members)
    assert near.pairs[0][2] == pytest.approx(0.98, abs=1e-4)
    as_json = near.as_dict()
    assert all(m["video"] is True and m["frames"] == 4 for m in as_json["members"])
    assert [m for m in as_json["members"] if m.get("copies")][0]["copies"][0].endswith("backup/trip.mp4")


# -- the command ------------------------------------------------------------------------------------


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_the_command_prints_groups_json_and_a_summary(made, run, tmp_path):
    index, put = made
    a = basis(0)
    put("a.jpg", a, fingerprint="same", size=2_000_000, width=4000, height=3000)
    put("a-copy.jpg", a, fingerprint="same", size=2_000_000, width=4000, height=3000)
    put("a-small.jpg", at_cosine(a, 0.97, 1), size=300_000, width=1000, height=750)
    put("lonely.jpg", basis(2))
    home = tmp_path / "home"

    text = run("duplicates", "--home", home)
    assert text.exit_code == 0, text.output
    blocks = text.stdout.strip().split("\n\n")
    assert len(blocks) == 2
    assert blocks[0].splitlines()[0] == "exact copies: 2 files, 2.0 MB reclaimable"
    assert blocks[1].splitlines()[0] == "near-duplicates: 2 files, best 0.9700"
    first, second = blocks[1].splitlines()[1:]
    assert first.split()[:2] == ["0.9700", "4000x3000"] and first.endswith("a.jpg  (+1 exact copy)")
    assert second.split()[1] == "1000x750" and second.endswith("a-small.jpg")
    assert "lonely" not in text.stdout
    assert text.stderr.strip() == (
        "2 groups (1 exact, 1 near) holding 3 of 4 files; removing the exact copies would free 2.0 MB "
        f"(threshold {DEFAULT_THRESHOLDS['offline/']:g})"
    )

    lines = [json.loads(line) for line in run("duplicates", "--home", home, "--json").stdout.splitlines()]
    assert [g["kind"] for g in lines] == ["exact", "near"]
    near = lines[1]
    assert near["size"] == 2 and near["pairs"] == [[0, 1, pytest.approx(0.97, abs=1e-5)]]
    assert set(near["members"][0]) >= {"id", "path", "score", "size", "width", "height", "format", "mtime",
                                       "fingerprint", "copies"}
    assert lines[0]["reclaimable_bytes"] == 2_000_000 and "reclaimable_bytes" not in near

    assert run("duplicates", "--home", home, "--threshold", 0.98).stdout.startswith("exact copies")
    assert "near" not in run("duplicates", "--home", home, "--threshold", 0.98).stdout
    assert run("duplicates", "--home", home, "--min-size", 3).stdout == ""
    exact_only = run("duplicates", "--home", home, "--exact-only")
    assert exact_only.stdout.count("exact copies") == 1 and "near" not in exact_only.stdout
    assert "threshold" not in exact_only.stderr
    bad = run("duplicates", "--home", home, "--threshold", 1.5)
    assert bad.exit_code == 2 and "1.5" in bad.stderr


def test_the_command_says_when_there_is_nothing(made, run, tmp_path):
    index, put = made
    home = tmp_path / "home"
    empty = run("duplicates", "--home", home)
    assert empty.exit_code == 0 and empty.stdout == "" and "the index is empty" in empty.stderr
    put("a.jpg", basis(0))
    put("b.jpg", basis(1))
    none = run("duplicates", "--home", home, "--json")
    assert none.exit_code == 0 and none.stdout == ""
    assert none.stderr.strip() == f"no duplicates among 2 files (threshold {DEFAULT_THRESHOLDS['offline/']:g})"
    missing = run("duplicates", "--home", tmp_path / "nowhere")
    assert missing.exit_code == 1 and "no index" in missing.stderr


# -- real photos, planted copies --------------------------------------------------------------------


def _jpeg(image, path, quality=90):
    image.convert("RGB").save(path, "JPEG", quality=quality)


def _planted_collection(folder):
    """Eight example photos; three of them again resized to 50 %, re-encoded at q50 and
    centre-cropped to 85 %; one byte-for-byte copy."""
    from PIL import Image

    keep = ["astronaut.jpg", "brick.png", "chelsea.png", "coffee.jpg", "coins.png", "flower.jpg", "rocket.jpg",
            "camera.png"]
    folder.mkdir()
    for name in keep:
        shutil.copyfile(PHOTOS / name, folder / name)
    planted = {}
    for name in ["chelsea.png", "coffee.jpg", "rocket.jpg"]:
        stem = name.split(".")[0]
        with Image.open(PHOTOS / name) as im:
            im = im.convert("RGB")
            w, h = im.size
            _jpeg(im.resize((w // 2, h // 2), Image.BICUBIC), folder / f"{stem}-half.jpg")
            _jpeg(im, folder / f"{stem}-q50.jpg", quality=50)
            cw, ch = round(w * 0.85), round(h * 0.85)
            _jpeg(im.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)),
                  folder / f"{stem}-crop.jpg")
        planted[name] = {f"{stem}-half.jpg", f"{stem}-q50.jpg", f"{stem}-crop.jpg"}
    shutil.copyfile(PHOTOS / "flower.jpg", folder / "flower (1).jpg")
    return planted


@pytest.mark.slow
def test_planted_copies_of_real_photos_are_found_without_any_model(tmp_path, offline_encoder, monkeypatch, run):
    from retriever.indexer import run_index

    folder = tmp_path / "photos"
    planted = _planted_collection(folder)
    home = tmp_path / "home"
    index = Index.create(home, "default", ModelSpec(name="offline"), offline_encoder.model_id, offline_encoder.dim)
    index.acquire_lock()
    run_index(index, offline_encoder, [str(folder)])
    index.close()

    def no_model(*args, **kwargs):
        raise AssertionError("duplicates must not load an encoder")

    monkeypatch.setattr("retriever.encoders.create_encoder", no_model)
    monkeypatch.setattr(Index, "load_encoder", no_model)

    lines = [json.loads(line) for line in run("duplicates", "--home", home, "--json").stdout.splitlines()]
    groups = {frozenset(m["path"].rsplit("/", 1)[-1] for m in g["members"]): g for g in lines}
    assert frozenset({"flower.jpg", "flower (1).jpg"}) in groups
    assert groups[frozenset({"flower.jpg", "flower (1).jpg"})]["kind"] == "exact"
    near = {k for k, g in groups.items() if g["kind"] == "near"}
    # each planted family is one group, and nothing else is grouped
    assert near == {frozenset({original} | copies) for original, copies in planted.items()}
    for key in near:
        g = groups[key]
        assert g["members"][0]["path"].rsplit("/", 1)[-1] in planted  # the original is the largest
        assert all(s >= DEFAULT_THRESHOLDS["offline/"] for _, _, s in g["pairs"])
        assert all(m["score"] == max(s for i, j, s in g["pairs"] if k in (i, j)) for k, m in enumerate(g["members"]))

    monkeypatch.setitem(sys.modules, "faiss", None)
    exact = run("duplicates", "--home", home, "--exact-only", "--json")
    assert exact.exit_code == 0
    assert [sorted(m["path"].rsplit("/", 1)[-1] for m in json.loads(x)["members"]) for x in exact.stdout.splitlines()] \
        == [["flower (1).jpg", "flower.jpg"]]


@pytest.mark.slow
def test_frames_of_one_video_are_not_duplicates_of_each_other(tmp_path, offline_encoder):
    av = pytest.importorskip("av")
    from PIL import Image

    from retriever.indexer import run_index

    def video(path, codec, fps):
        container = av.open(str(path), "w")
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 224, 168, "yuv420p"
        stream.bit_rate = 2_000_000  # a good re-encode (mpeg4's default rate smears the frames)
        for name in ["chelsea.png", "coffee.jpg"]:  # 6 s each: frames at 0 and 5 s show the same cat
            frame = av.VideoFrame.from_image(Image.open(PHOTOS / name).convert("RGB").resize((224, 168)))
            for _ in range(6 * fps):
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        container.close()

    folder = tmp_path / "clips"
    folder.mkdir()
    video(folder / "cat.mp4", "libx264", 2)
    video(folder / "cat-again.mov", "mpeg4", 3)  # the same footage, other bytes
    shutil.copyfile(PHOTOS / "chelsea.png", folder / "chelsea.png")  # the still the video was made of
    index = Index.create(tmp_path / "home", "default", ModelSpec(name="offline"), offline_encoder.model_id,
                         offline_encoder.dim)
    index.acquire_lock()
    run_index(index, offline_encoder, [str(folder)])
    report = find_duplicates(index)
    index.close()
    assert [(g.kind, names(g)) for g in report.groups] == [("near", ["cat-again.mov", "cat.mp4"])]
    assert all(m.frames == 3 for m in report.groups[0].members)
