"""Region search: the grid's geometry, boxes in the photo's pixels (EXIF orientation, reduced
decoding), region FAISS against brute force, the merge rule, a small thing found in a wide photo
and where, filters, moved and edited files, an interrupted run resumed, status and the CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from retriever.cli import main
from tests.conftest import PHOTOS


def test_grid_boxes_cover_the_photo_on_its_aspect_ratio():
    from retriever.regions import SIDES, region_boxes

    for width, height in ((640, 480), (480, 640), (500, 500), (4000, 1000)):
        boxes = region_boxes(width, height)
        short = min(width, height)
        assert boxes and len(boxes) == len(set(boxes))
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= width + 0.1 and 0 <= y0 < y1 <= height + 0.1
            assert round((x1 - x0) / short, 2) in {round(v, 2) for v in SIDES.values()}
            assert abs((x1 - x0) - (y1 - y0)) < 0.2  # square crops
        # the crops reach every edge of the photo
        assert min(b[0] for b in boxes) == 0 and max(b[2] for b in boxes) == pytest.approx(width, abs=0.1)
        assert min(b[1] for b in boxes) == 0 and max(b[3] for b in boxes) == pytest.approx(height, abs=0.1)
    # more crops along the long side of a long photo, none for a tiny one
    assert len(region_boxes(4000, 1000)) > len(region_boxes(1000, 1000))
    assert region_boxes(40, 30) == []


def test_merge_scores_a_photo_once_by_its_best_part():
    from retriever.regions import merge

    whole = {1: 0.30, 2: 0.25, 3: 0.10}
    regions = {2: (0.40, [0, 0, 5, 5]), 3: (0.05, [1, 1, 2, 2])}
    assert merge(whole, regions, 3, margin=0.0) == [(0.40, 2, [0, 0, 5, 5]), (0.30, 1, None), (0.10, 3, None)]
    # a margin handicaps regions against whole photos
    assert merge(whole, regions, 3, margin=0.2)[0] == (0.30, 1, None)
    from retriever.regions import CROPS, DENSE, scheme_for

    assert scheme_for(True) is DENSE and scheme_for(False) is CROPS and DENSE.margin < CROPS.margin


def _pasted_photo(folder, name="kitten-in-a-field.jpg", size=(1600, 1000), at=(1180, 690), obj_side=240):
    """The cat photo pasted small into a wide, unrelated photo (about 3 % of it)."""
    from PIL import Image

    background = Image.open(PHOTOS / "grass.png" if (PHOTOS / "grass.png").exists() else PHOTOS / "coins.png")
    background = background.convert("RGB").resize(size)
    cat = Image.open(PHOTOS / "chelsea.png").convert("RGB").resize((obj_side, int(obj_side * 0.75)))
    background.paste(cat, at)
    path = folder / name
    background.save(path, quality=92)
    return path, (at[0], at[1], at[0] + cat.size[0], at[1] + cat.size[1])


@pytest.fixture(scope="module")
def region_home(tmp_path_factory, offline_index, offline_encoder):
    """The example photos' index plus one photo with a small cat pasted in, with regions."""
    from retriever.index import Index
    from retriever.indexer import run_index
    from retriever.regions import run_regions

    root = tmp_path_factory.mktemp("regions")
    home = root / "home"
    shutil.copytree(offline_index.folder, home / "default", ignore=shutil.ignore_patterns("write.lock"))
    extra = root / "extra"
    extra.mkdir()
    path, box = _pasted_photo(extra)
    with Index.open(home, "default") as idx:
        idx.acquire_lock()
        run_index(idx, offline_encoder, [str(PHOTOS), str(extra)])
        summary = run_regions(idx, offline_encoder)
    return {"home": home, "pasted": str(path), "box": box, "summary": summary, "extra": extra}


def _iou(a, b):
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_a_small_thing_is_found_with_its_box(region_home, offline_encoder):
    from retriever.index import Index
    from retriever.search import Searcher

    summary = region_home["summary"]
    assert summary.photos == 16 and summary.regions > 16 * 5 and not summary.interrupted
    with Index.open(region_home["home"], "default", read_only=True) as idx:
        searcher = Searcher(idx, encoder=offline_encoder)
        with_regions = searcher.text("a photo of a cat", k=16)
        searcher.use_regions = False
        without = searcher.text("a photo of a cat", k=16)
    rank = {h.path: h.rank for h in with_regions}
    rank_without = {h.path: h.rank for h in without}
    pasted = region_home["pasted"]
    hit = next(h for h in with_regions if h.path == pasted)
    hit_without = next(h for h in without if h.path == pasted)
    assert rank[pasted] <= rank_without[pasted] and rank[pasted] <= 2  # after the cat photo itself
    assert hit.score > hit_without.score + 0.02  # the crop around the cat matches better than the photo
    assert hit.meta["region"] is True
    assert _iou(hit.meta["box"], region_home["box"]) > 0.15  # a crop around the cat
    # one hit per photo; every hit says where; a whole-photo hit's box is the photo
    assert len({h.id for h in with_regions}) == len(with_regions)
    for h in without:
        assert h.meta["box"] == [0.0, 0.0, float(h.meta["width"]), float(h.meta["height"])]
        assert h.meta["region"] is False


def test_region_faiss_equals_brute_force_over_the_stored_regions(region_home, offline_encoder):
    from retriever.index import Index
    from retriever.regions import MAX_REGIONS, region_index_for
    from retriever.store.regions import iter_regions

    with Index.open(region_home["home"], "default", read_only=True) as idx:
        ri = region_index_for(idx)
        ids, boxes, vecs = (np.concatenate(a) for a in zip(*iter_regions(idx.catalog, idx.dim)))
        assert len(ri) == len(ids) and (region_home["home"] / "default" / "regions.faiss").exists()
        q = offline_encoder.embed_texts(["a photo of a cat"])[0]
        best = ri.best(q, 5)
        scores = vecs @ q
        for image_id, (score, box) in best.items():
            mine = scores[ids == image_id]
            assert score == pytest.approx(float(mine.max()), abs=2e-3)  # fp16 both sides
            assert box == pytest.approx(boxes[ids == image_id][int(mine.argmax())].tolist(), abs=0.05)
        top = sorted({int(i) for i in ids}, key=lambda i: -scores[ids == i].max())[:5]
        assert set(best) == set(top)
        # allowed photos only
        allowed = np.array(sorted(top[1:3]), np.int64)
        assert set(ri.best(q, 5, allowed=allowed)) == set(allowed.tolist())
        assert MAX_REGIONS >= max(np.bincount(ids))


def test_filters_hold_with_regions(region_home, offline_encoder):
    from retriever.filters import build
    from retriever.index import Index
    from retriever.search import Searcher

    with Index.open(region_home["home"], "default", read_only=True) as idx:
        searcher = Searcher(idx, encoder=offline_encoder)
        hits = searcher.text("a cat", k=5, filters=build(folders=[str(region_home["extra"])]))
        assert [h.path for h in hits] == [region_home["pasted"]]
        hits = searcher.text("a cat", k=5, filters=build(formats=["png"]))
        assert hits and all(h.path.endswith(".png") for h in hits)


@pytest.fixture
def new_home(tmp_path, offline_encoder):
    """A new, empty offline index's home (a few photos make a run quick)."""
    from retriever.encoders import ModelSpec
    from retriever.index import Index

    home = tmp_path / "new-home"
    Index.create(home, "default", ModelSpec(name="offline"), offline_encoder.model_id, offline_encoder.dim).close()
    return home


def test_boxes_follow_exif_orientation_and_reduced_decoding(tmp_path, new_home, offline_encoder):
    from PIL import Image

    from retriever.index import Index
    from retriever.indexer import run_index
    from retriever.regions import run_regions
    from retriever.store.regions import regions_of

    folder = tmp_path / "rotated"
    folder.mkdir()
    image = Image.open(PHOTOS / "coffee.jpg").convert("RGB").resize((2400, 1600))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees: 1600 wide, 2400 high
    image.save(folder / "turned.jpg", exif=exif, quality=90)
    with Index.open(new_home, "default") as idx:
        idx.acquire_lock()
        run_index(idx, offline_encoder, [str(folder)])
        run_regions(idx, offline_encoder)
        row = idx.catalog.find_by_path(str(folder / "turned.jpg"))
        assert (row["width"], row["height"]) == (1600, 2400)
        boxes, vectors, _ = regions_of(idx.catalog, row["id"])
    assert len(boxes) == len(vectors) > 0
    assert max(b[2] for b in boxes) <= 1600.1 and max(b[3] for b in boxes) <= 2400.1
    assert max(b[3] for b in boxes) > 2000  # boxes span the turned photo's height, not its stored width


def test_moved_files_keep_regions_edited_ones_are_encoded_again(tmp_path, new_home, offline_encoder):
    from PIL import Image

    from retriever.index import Index
    from retriever.indexer import run_index
    from retriever.regions import run_regions
    from retriever.store.regions import pending_region_rows, region_counts

    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy2(PHOTOS / "coffee.jpg", folder / "a.jpg")
    shutil.copy2(PHOTOS / "rocket.jpg", folder / "b.jpg")
    with Index.open(new_home, "default") as idx:
        idx.acquire_lock()
        run_index(idx, offline_encoder, [str(folder)])
        first = run_regions(idx, offline_encoder)
        assert first.photos == 2
        assert run_regions(idx, offline_encoder).photos == 0  # incremental: nothing left
        before = region_counts(idx.catalog)
        (folder / "a.jpg").rename(folder / "moved.jpg")
        Image.open(PHOTOS / "camera.png").convert("RGB").save(folder / "b.jpg")  # new content
        run_index(idx, offline_encoder, [str(folder)])
        pending = pending_region_rows(idx.catalog, first.scheme)
        assert [p[1] for p in pending] == [str(folder / "b.jpg")]
        assert region_counts(idx.catalog)["photos"] == before["photos"] - 1
        assert run_regions(idx, offline_encoder).photos == 1


def test_an_interrupted_run_keeps_its_batches_and_resumes(new_home, offline_encoder, monkeypatch):
    import retriever.regions as regions
    from retriever.index import Index
    from retriever.indexer import run_index

    monkeypatch.setattr(regions, "BATCH", 2)

    class Breaks:
        """The encoder, until the third batch: then Ctrl-C."""
        calls = 0

        def embed_images(self, images):
            Breaks.calls += 1
            if Breaks.calls == 3:
                raise KeyboardInterrupt
            return offline_encoder.embed_images(images)

    with Index.open(new_home, "default") as idx:
        idx.acquire_lock()
        run_index(idx, offline_encoder, [str(PHOTOS / n) for n in ("coffee.jpg", "rocket.jpg", "chelsea.png",
                                                                    "camera.png", "astronaut.jpg", "coins.png")])
        stopped = regions.run_regions(idx, Breaks())
        assert stopped.interrupted and stopped.photos == 4 and stopped.pending == 6
        rest = regions.run_regions(idx, offline_encoder, dense=False)  # crops, as the first run
        assert rest.pending == 2 and rest.photos == 2 and not rest.interrupted


def test_cli_optimize_regions_status_and_json_boxes(region_home, tmp_path):
    home = tmp_path / "cli-home"
    shutil.copytree(region_home["home"], home, ignore=shutil.ignore_patterns("write.lock", "regions.*"))
    runner = CliRunner()
    result = runner.invoke(main, ["optimize", "--regions", "--no-onnx", "--json", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["regions"]["photos"] == 0  # all encoded already
    result = runner.invoke(main, ["status", "--home", str(home)])
    assert "regions" in result.output and "a photo" in result.output
    result = runner.invoke(main, ["search", "a photo of a cat", "--home", str(home), "--json", "-k", "16"])
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(len(h["box"]) == 4 for h in hits) and any(h["region"] for h in hits)


def test_a_part_of_a_photo_as_the_query_cli_and_http(region_home, offline_encoder):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from retriever.index import Index
    from retriever.query import QueryError, parse, split_region
    from retriever.search import Searcher
    from retriever.serve.app import create_app
    from retriever.serve.service import Service as Engine

    pasted, box = region_home["pasted"], region_home["box"]
    region = ",".join(str(v) for v in box)
    assert split_region(f"{pasted}@{region}") == (pasted, tuple(float(v) for v in box))
    assert split_region("clip.mp4@00:01:23") == ("clip.mp4@00:01:23", None)  # a video frame's label
    with pytest.raises(QueryError, match="empty"):
        split_region("a.jpg@5,5,5,9")
    assert parse([f"{pasted}@{region}"])[0].kind == "image"  # an existing file, with a region
    with Index.open(region_home["home"], "default", read_only=True) as idx:
        searcher = Searcher(idx, encoder=offline_encoder)
        whole = [h.path.rsplit("/", 1)[-1] for h in searcher.image(pasted, k=3)]
        part = [h.path.rsplit("/", 1)[-1] for h in searcher.image(f"{pasted}@{region}", k=3)]
        assert part[0] == "chelsea.png" and whole[0] != "chelsea.png"  # the cat, not the field
        with pytest.raises(QueryError, match="outside"):
            searcher.image(f"{pasted}@5000,5000,6000,6000")
        image_id = idx.catalog.find_by_path(pasted)["id"]
        with TestClient(create_app(Engine(idx, encoder=offline_encoder))) as client:
            r = client.get("/api/similar", params={"id": image_id, "box": region, "k": 3})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["path"].endswith("chelsea.png") and r.json()["box"] == list(map(float, box))
            assert client.get("/api/similar", params={"id": image_id, "box": "1,2,3"}).status_code == 400
            assert client.get("/api/similar", params={"id": image_id, "box": "9000,9000,9100,9100"}).status_code == 400


KILLED_RUN = """
import os, signal, sys
import numpy as np
import retriever.regions as regions
from retriever.index import Index

regions.BATCH = 2

class DiesOnTheThirdBatch:  # unit vectors from the pixels (no model to load), then kill -9
    calls = 0
    def embed_images(self, images):
        DiesOnTheThirdBatch.calls += 1
        if DiesOnTheThirdBatch.calls == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 would, in the middle of a batch
        return pixel_vectors(images, int(sys.argv[2]))

def pixel_vectors(images, dim):
    out = np.stack([np.resize(np.asarray(im.resize((16, 16)), np.float32).ravel(), dim) + 1 for im in images])
    return out / np.linalg.norm(out, axis=1, keepdims=True)

with Index.open(sys.argv[1], "default") as idx:
    idx.acquire_lock()
    regions.run_regions(idx, DiesOnTheThirdBatch(), dense=False)
"""


def test_a_kill_during_a_region_run_loses_one_batch_and_resumes(new_home, offline_encoder):
    import signal
    import subprocess
    import sys

    from retriever.index import Index
    from retriever.indexer import run_index
    from retriever.regions import run_regions
    from retriever.store.regions import region_counts

    names = ("coffee.jpg", "rocket.jpg", "chelsea.png", "camera.png", "astronaut.jpg", "coins.png")
    with Index.open(new_home, "default") as idx:
        idx.acquire_lock()
        run_index(idx, offline_encoder, [str(PHOTOS / n) for n in names])
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, str(new_home), str(offline_encoder.dim)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    with Index.open(new_home, "default") as idx:
        assert region_counts(idx.catalog)["photos"] == 4  # two committed batches, the third lost
        idx.acquire_lock()  # the killed run's lock is free again
        rest = run_regions(idx, offline_encoder, dense=False)
        assert rest.pending == 2 and rest.photos == 2
        assert region_counts(idx.catalog)["photos"] == 6


def test_a_dense_region_covering_the_whole_input_is_the_whole_photo_vector(offline_encoder):
    """The dense pass pools boxes from the same feature maps the photo vector is made of: one box
    over the whole 224-px input gives the photo vector of that input (to float precision)."""
    from PIL import Image

    photo = Image.open(PHOTOS / "coffee.jpg").convert("RGB").resize((256, 256), Image.BICUBIC)
    centre = photo.crop((16, 16, 240, 240))  # what the encoder's own preprocessing feeds it
    whole = offline_encoder.embed_images([photo])[0]
    boxes, dense = offline_encoder.embed_regions(centre, [(0, 0, 224, 224), (0, 0, 112, 112)], (224, 224),
                                                 short_side=224)
    assert boxes[0] == [0.0, 0.0, 224.0, 224.0] and boxes[1] == [0.0, 0.0, 128.0, 128.0]  # snapped to 32-px cells
    assert np.abs(dense[0] - whole).max() < 1e-4
    assert float(dense[1] @ whole) < 0.99  # a corner is not the photo
