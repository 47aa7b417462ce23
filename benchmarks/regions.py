"""Region search (retriever/regions.py): small objects in wide photos, with and without regions.

    python benchmarks/regions.py --work /tmp/regions-bench          # report: caltech101-test + distractors-test
    python benchmarks/regions.py --fit --work /tmp/regions-bench    # choose grids and margin on train + tune

The set: one photo per Caltech-101 class, its object (the class photo, which Caltech crops
around the object, with the margin it has) pasted at 5-20 % of the area at a random place into a
background photo (`distractors-*`, which show none of the classes, and examples/photos), the
paste box recorded; plus every background unpasted, as distractors. Indexed by `retriever`'s own
API with the offline encoder, then regions added (`add_regions`, timed apart).

Figures (with regions = the library's rule; without = whole-photo vectors only):
- t2i R@1 / R@10: `a photo of a {class}` finds the class's pasted photo at rank 1 / in the top 10.
- i2i R@10: the object's own image (not in the collection) as the query.
- IoU: of the correct hits in the top 10, the share whose returned box overlaps the pasted box
  at IoU >= 0.3 / >= 0.5 (without regions the box is the whole photo).
- caltech: t2i mAP of `a photo of a {class}` over a caltech split's photos (every --caltech-step-th
  photo), with and without regions (must not drop by more than 0.01).
- cost: indexing seconds without regions and the regions' extra, regions per photo, bytes; query
  p50 at 10,000 photos with regions in process (synthetic vectors, the library's RegionIndex).
- grid: every (levels, margin) rule on the same vectors (numpy, the library's merge), so that the
  choice is visible; --fit picks, among the rules whose caltech mAP drop is at most 0.01, the one
  with the best t2i R@10 on train + tune (ties: fewer regions, then the larger margin).

Prints FIRST one JSON line, THEN readable tables; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from quality import class_query_name  # noqa: E402

DATA = REPO.parent / "shared" / "datasets"
MARGINS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08)
LEVEL_SETS = ((2,), (3,), (2, 3))
ALL_LEVELS = (2, 3)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_set(work: Path, caltech: Path, backgrounds: list[Path], seed: int) -> dict[str, Any]:
    """Paste one object per class into a background; write the photos and a manifest."""
    from PIL import Image, ImageOps

    folder = work / "photos"
    manifest_path = work / "manifest.json"
    if manifest_path.exists():
        return json.loads(manifest_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    classes = sorted(p.name for p in caltech.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")
    pasted = []
    for n, cls in enumerate(classes):
        files = sorted((caltech / cls).glob("*.jpg"))
        obj_path = rng.choice(files)
        bg_path = backgrounds[n % len(backgrounds)]
        bg = ImageOps.exif_transpose(Image.open(bg_path)).convert("RGB")
        if min(bg.size) < 200:
            bg = bg.resize((bg.size[0] * 2, bg.size[1] * 2), Image.BICUBIC)
        obj = Image.open(obj_path).convert("RGB")
        share = rng.uniform(0.05, 0.20)
        area = share * bg.size[0] * bg.size[1]
        aspect = obj.size[0] / obj.size[1]
        w = int(round((area * aspect) ** 0.5))
        h = int(round(w / aspect))
        w, h = min(w, bg.size[0]), min(h, bg.size[1])
        obj = obj.resize((max(w, 8), max(h, 8)), Image.BICUBIC)
        x0, y0 = rng.randint(0, bg.size[0] - obj.size[0]), rng.randint(0, bg.size[1] - obj.size[1])
        bg.paste(obj, (x0, y0))
        name = f"pasted-{n:03d}-{cls}.jpg"
        bg.save(folder / name, quality=92)
        pasted.append({"file": name, "class": cls, "object": str(obj_path), "background": str(bg_path),
                       "box": [x0, y0, x0 + obj.size[0], y0 + obj.size[1]], "share": round(share, 4),
                       "size": list(bg.size)})
    for n, bg_path in enumerate(backgrounds):
        im = ImageOps.exif_transpose(Image.open(bg_path)).convert("RGB")
        im.save(folder / f"background-{n:03d}.jpg", quality=92)
    manifest = {"seed": seed, "caltech": str(caltech), "pasted": pasted, "backgrounds": len(backgrounds)}
    manifest_path.write_text(json.dumps(manifest))
    return manifest


def build_index(home: Path, folder: Path, dense: bool | None = None) -> dict[str, Any]:
    import retriever
    from retriever.api import NewIndex

    with retriever.open(home, writable=True, new=NewIndex(model="offline")) as c:
        t = time.perf_counter()
        summary = c.index([str(folder)])
        index_s = time.perf_counter() - t
        t = time.perf_counter()
        regions = c.add_regions(dense=dense, levels=ALL_LEVELS)  # every level: the grid picks among them
        regions_s = time.perf_counter() - t
        status = c.status()
    faiss_bytes = sum(f.stat().st_size for f in (home / "default").glob("regions.*"))
    return {"photos": summary.indexed or status["images"], "index_s": round(index_s, 2),
            "regions_s": round(regions_s, 2), "regions": status["regions"], "regions_files_bytes": faiss_bytes,
            "backend": summary.backend, "region_run": regions.as_dict()}


def load_vectors(home: Path):
    """Photo vectors, paths, sizes and every region (ids, boxes, vectors) of the index."""
    import retriever
    from retriever.store.regions import iter_regions

    c = retriever.open(home)
    idx = c.idx
    ids, vecs = [], []
    for i, v in idx.catalog.iter_vectors(idx.dim):
        ids.append(i)
        vecs.append(v)
    ids = np.concatenate(ids)
    vecs = np.concatenate(vecs)
    rows = idx.catalog.image_rows([int(i) for i in ids])
    paths = {int(i): rows[int(i)]["path"] for i in ids}
    sizes = {int(i): (rows[int(i)]["width"], rows[int(i)]["height"]) for i in ids}
    r_ids, r_boxes, r_vecs = [], [], []
    for a, b, v in iter_regions(idx.catalog, idx.dim):
        r_ids.append(a)
        r_boxes.append(b)
        r_vecs.append(v)
    regions = (np.concatenate(r_ids), np.concatenate(r_boxes), np.concatenate(r_vecs))
    return c, ids, vecs, paths, sizes, regions


def region_levels(boxes: np.ndarray, r_ids: np.ndarray, sizes: dict) -> np.ndarray:
    """The grid level of each region from its side against the photo's short side."""
    from retriever.regions import SIDES

    short = np.array([min(sizes[int(i)]) for i in r_ids], np.float32)
    ratio = (boxes[:, 2] - boxes[:, 0]) / short
    levels = np.array(sorted(SIDES))
    sides = np.array([SIDES[n] for n in levels])
    return levels[np.abs(ratio[:, None] - sides[None, :]).argmin(axis=1)]


def rank_rule(q: np.ndarray, ids, vecs, r_ids, r_boxes, r_vecs, keep_mask, margin: float, k: int):
    """[(score, id, box)] top k under max(whole, best region - margin) over the regions kept."""
    from retriever.regions import merge

    whole = dict(zip(ids.tolist(), (vecs @ q).tolist()))
    best: dict[int, tuple[float, list]] = {}
    if keep_mask is not None and keep_mask.any():
        s = r_vecs[keep_mask] @ q
        rid, rbox = r_ids[keep_mask], r_boxes[keep_mask]
        order = np.argsort(-s)
        for j in order:
            i = int(rid[j])
            if i not in best:
                best[i] = (float(s[j]), rbox[j].tolist())
    return merge(whole, best, k, margin)


def iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def evaluate(queries: np.ndarray, targets: list[int], truth_boxes: list, ids, vecs, regions, keep_mask,
             margin: float, sizes: dict) -> dict[str, float]:
    r_ids, r_boxes, r_vecs = regions
    r1 = r10 = 0
    ious = []
    for q, target, tbox in zip(queries, targets, truth_boxes):
        ranked = rank_rule(q, ids, vecs, r_ids, r_boxes, r_vecs, keep_mask, margin, 10)
        order = [i for _, i, _ in ranked]
        r1 += bool(order and order[0] == target)
        if target in order:
            r10 += 1
            box = ranked[order.index(target)][2] or [0, 0, *sizes[target]]
            ious.append(iou(box, tbox))
    n = len(targets)
    ious_a = np.array(ious) if ious else np.zeros(0)
    return {"r1": round(r1 / n, 4), "r10": round(r10 / n, 4),
            "iou_03": round(float((ious_a >= 0.3).mean()), 4) if len(ious_a) else None,
            "iou_05": round(float((ious_a >= 0.5).mean()), 4) if len(ious_a) else None, "hits": len(ious)}


def caltech_map(work: Path, caltech: Path, step: int, rules: list[tuple[tuple[int, ...], float]],
                dense: bool | None = None, scheme: str = "auto") -> dict[str, Any]:
    """t2i mAP over every step-th caltech photo: whole vectors, and each rule (levels, margin) with
    regions; the drop of each against whole."""
    import shutil

    home = work / f"caltech-{caltech.name}-{step}-{scheme}"
    folder = work / f"caltech-{caltech.name}-{step}-photos"
    if not (home / "done").exists():
        shutil.rmtree(home, ignore_errors=True)
        files = sorted(p for p in caltech.rglob("*.jpg") if p.parent.name != "BACKGROUND_Google")[::step]
        for p in files:
            dest = folder / p.parent.name / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                os.symlink(p, dest)
        build_index(home, folder, dense)
        (home / "done").write_text("1")
    c, ids, vecs, paths, sizes, regions = load_vectors(home)
    labels = np.array([Path(paths[int(i)]).parent.name for i in ids])
    classes = sorted(set(labels))
    text = c.idx.load_encoder("cpu").embed_texts([f"a photo of a {class_query_name(n)}" for n in classes])
    levels = region_levels(regions[1], regions[0], sizes)

    def mean_ap(keep, margin) -> float:
        aps = []
        for q, cls in zip(text, classes):
            ranked = rank_rule(q, ids, vecs, *regions, keep, margin, len(ids))
            rel = np.array([labels[np.searchsorted(ids, i)] == cls for _, i, _ in ranked])
            hits = np.cumsum(rel)
            aps.append(float((hits[rel] / (np.flatnonzero(rel) + 1)).mean()) if rel.any() else 0.0)
        return round(float(np.mean(aps)), 4)

    whole = mean_ap(None, 0.0)
    out = {"photos": int(len(ids)), "whole": whole, "rules": {}}
    for level_set, margin in rules:
        m = mean_ap(np.isin(levels, level_set), margin)
        out["rules"][f"{'+'.join(map(str, level_set))}/{margin}"] = {"map": m, "drop": round(whole - m, 4)}
    c.close()
    return out


def query_latency(n_photos: int = 10_000, per_photo: int = 15, dim: int = 704, queries: int = 50) -> dict[str, Any]:
    """p50 of RegionIndex.best + merge at n_photos with per_photo regions (synthetic unit vectors)."""
    import faiss

    from retriever.regions import MAX_REGIONS, RegionIndex, merge

    rng = np.random.default_rng(0)
    n = n_photos * per_photo
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    photo = np.repeat(np.arange(n_photos), per_photo)
    keys = photo * MAX_REGIONS + np.tile(np.arange(per_photo), n_photos)
    index = faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT))
    index.add_with_ids(v, keys.astype(np.int64))
    ri = RegionIndex(dim, index, keys.astype(np.int64), np.zeros((n, 4), np.float32), 1)
    whole_v = rng.standard_normal((n_photos, dim)).astype(np.float32)
    whole_v /= np.linalg.norm(whole_v, axis=1, keepdims=True)
    times = []
    for _ in range(queries):
        q = rng.standard_normal(dim).astype(np.float32)
        q /= np.linalg.norm(q)
        t = time.perf_counter()
        best = ri.best(q, 10)
        whole = {int(i): float(whole_v[i] @ q) for i in best}
        merge(whole, best, 10, ri.margin)
        times.append(time.perf_counter() - t)
    return {"photos": n_photos, "regions": n, "p50_ms": round(float(np.median(times)) * 1000, 2),
            "p95_ms": round(float(np.percentile(times, 95)) * 1000, 2)}


def main(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/regions-bench"))
    ap.add_argument("--fit", action="store_true", help="train + tune, and print the chosen rule")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--caltech-step", type=int, default=4, help="every N-th caltech photo for the mAP check")
    ap.add_argument("--scheme", choices=["auto", "dense", "crops"], default="auto",
                    help="how regions are made (auto: the library's choice for the offline encoder, dense)")
    ap.add_argument("--dense-side", type=int, default=None, metavar="PX",
                    help="the dense pass's short side instead of the library's (retriever.regions.DENSE_SHORT_SIDE): "
                         "what the dense scheme costs and finds at another resolution; its own homes under --work")
    args = ap.parse_args(argv)
    side_tag = f"-side{args.dense_side}" if args.dense_side else ""  # its own homes
    if args.dense_side:
        import retriever.regions

        retriever.regions.DENSE_SHORT_SIDE = args.dense_side  # read at each use; this process only
    split = "fit" if args.fit else "report"
    caltech = DATA / ("caltech101-train" if args.fit else "caltech101-test")
    distractors = DATA / ("distractors-tune" if args.fit else "distractors-test")
    backgrounds = sorted(p for p in distractors.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    backgrounds += sorted(p for p in (REPO / "examples" / "photos").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    dense = {"auto": None, "dense": True, "crops": False}[args.scheme]
    work = args.work / split
    home_name = ("home" if args.scheme == "auto" else f"home-{args.scheme}") + side_tag
    manifest = make_set(work, caltech, backgrounds, args.seed)
    home = work / home_name
    if (home / "built.json").exists():
        build = json.loads((home / "built.json").read_text())
    else:
        log("indexing the pasted set with regions ...")
        build = build_index(home, work / "photos", dense)
        (home / "built.json").write_text(json.dumps(build))
    c, ids, vecs, paths, sizes, regions = load_vectors(home)
    by_name = {Path(p).name: i for i, p in paths.items()}
    pasted = manifest["pasted"]
    targets = [by_name[p["file"]] for p in pasted]
    boxes = [p["box"] for p in pasted]
    encoder = c.idx.load_encoder("cpu")
    text_q = encoder.embed_texts([f"a photo of a {class_query_name(p['class'])}" for p in pasted])
    from PIL import Image

    image_q = encoder.embed_images([Image.open(p["object"]).convert("RGB") for p in pasted])
    levels = region_levels(regions[1], regions[0], sizes)
    from retriever.regions import scheme_for

    lib_scheme = scheme_for(build["region_run"]["scheme"].startswith("dense"))
    LEVELS, REGION_MARGIN = lib_scheme.levels, lib_scheme.margin

    grid = []
    for level_set in LEVEL_SETS:
        mask = np.isin(levels, level_set)
        for margin in MARGINS:
            t2i = evaluate(text_q, targets, boxes, ids, vecs, regions, mask, margin, sizes)
            grid.append({"levels": list(level_set), "margin": margin, "regions_per_photo": round(mask.sum() / len(ids), 2),
                         "t2i": t2i})
    without_t2i = evaluate(text_q, targets, boxes, ids, vecs, regions, None, 0.0, sizes)
    without_i2i = evaluate(image_q, targets, boxes, ids, vecs, regions, None, 0.0, sizes)
    lib_mask = np.isin(levels, LEVELS)
    with_t2i = evaluate(text_q, targets, boxes, ids, vecs, regions, lib_mask, REGION_MARGIN, sizes)
    with_i2i = evaluate(image_q, targets, boxes, ids, vecs, regions, lib_mask, REGION_MARGIN, sizes)
    # the library's own search path on the first queries: must agree with the numpy rule
    agree = None
    try:
        from retriever.search import Searcher

        s = Searcher(c.idx, encoder=encoder, device="cpu")
        same = 0
        for q, _ in zip(text_q[:20], range(20)):
            lib = [h.id for h in s.by_vector(q, 10)]
            ours = [i for _, i, _ in rank_rule(q, ids, vecs, *regions, np.ones(len(regions[0]), bool),
                                               s.regions.margin, 10)]
            same += lib == ours
        agree = same / min(20, len(text_q))
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
        agree = f"error: {exc}"
    c.close()
    log("caltech mAP with and without regions ...")
    rules = [(tuple(g["levels"]), g["margin"]) for g in grid]
    if (tuple(LEVELS), REGION_MARGIN) not in rules:
        rules.append((tuple(LEVELS), REGION_MARGIN))
    cal_all = caltech_map(args.work, caltech, args.caltech_step, rules, dense, args.scheme + side_tag)
    for g in grid:
        g["caltech_drop"] = cal_all["rules"][f"{'+'.join(map(str, g['levels']))}/{g['margin']}"]["drop"]
    lib = cal_all["rules"][f"{'+'.join(map(str, LEVELS))}/{REGION_MARGIN}"]
    cal = {"photos": cal_all["photos"], "whole": cal_all["whole"], "regions": lib["map"], "drop": lib["drop"]}
    chosen = None
    if args.fit:  # the best t2i R@10 among the rules that keep whole-photo mAP within 0.01
        fair = [g for g in grid if g["caltech_drop"] <= 0.01] or grid
        chosen = max(fair, key=lambda g: (g["t2i"]["r10"], -g["regions_per_photo"], g["margin"]))
    lat = query_latency()
    result = {
        "benchmark": "regions", "split": split, "model": "offline", "scheme": build["region_run"]["scheme"], "pasted": len(pasted),
        "backgrounds": manifest["backgrounds"], "photos": int(len(ids)), "build": build,
        "rule": {"levels": list(LEVELS), "margin": REGION_MARGIN},
        "without": {"t2i": without_t2i, "i2i": without_i2i}, "with": {"t2i": with_t2i, "i2i": with_i2i},
        "t2i_r10_ratio": round(with_t2i["r10"] / without_t2i["r10"], 3) if without_t2i["r10"] else None,
        "library_agrees": agree, "caltech_map": cal, "query_latency": lat, "grid": grid, "chosen": chosen,
        "loadavg": os.getloadavg()[0],
    }
    print(json.dumps(result))
    print(f"\nregions, offline encoder, {split}, {result['scheme']}: {len(pasted)} pasted photos + "
          f"{manifest['backgrounds']} backgrounds")
    print("| | t2i R@1 | t2i R@10 | i2i R@10 | IoU>=0.3 of t2i hits | IoU>=0.5 |")
    print("|---|---|---|---|---|---|")
    for name, r in (("whole photo only", result["without"]), (f"with regions {LEVELS} margin {REGION_MARGIN}", result["with"])):
        print(f"| {name} | {r['t2i']['r1']} | {r['t2i']['r10']} | {r['i2i']['r10']} | {r['t2i']['iou_03']} | {r['t2i']['iou_05']} |")
    print(f"\nt2i R@10 ratio {result['t2i_r10_ratio']} (target >= 1.5); library search agrees on {agree}")
    print(f"caltech t2i mAP over {cal['photos']} photos: whole {cal['whole']}, with regions {cal['regions']} "
          f"(drop {cal['drop']}, at most 0.01)")
    print(f"indexing {build['photos']} photos: {build['index_s']} s, regions {build['regions_s']} s more "
          f"({build['regions']['per_photo']} a photo, {build['regions']['bytes'] / 1e6:.1f} MB in the catalog, "
          f"{build['regions_files_bytes'] / 1e6:.1f} MB of files)")
    print(f"query p50 at {lat['photos']:,} photos with {lat['regions']:,} regions: {lat['p50_ms']} ms (p95 {lat['p95_ms']})")
    print("\n| levels | margin | regions/photo | t2i R@1 | R@10 | IoU>=0.3 | IoU>=0.5 | caltech mAP drop |")
    print("|---|---|---|---|---|---|---|---|")
    for g in grid:
        t = g["t2i"]
        print(f"| {g['levels']} | {g['margin']} | {g['regions_per_photo']} | {t['r1']} | {t['r10']} | {t['iou_03']} "
              f"| {t['iou_05']} | {g['caltech_drop']} |")
    if chosen:
        print(f"\nchosen on {split}: levels {chosen['levels']}, margin {chosen['margin']}")
    return result


if __name__ == "__main__":
    main()
