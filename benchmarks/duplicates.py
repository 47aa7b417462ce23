"""Near-duplicate grouping (`retriever duplicates`): recall of planted copies, false pairs, and cost.

    python benchmarks/duplicates.py --data ../shared/datasets/caltech101-test
    python benchmarks/duplicates.py --data DIR --photos 200 --planted 80 --synthetic 10000   # quicker
    python benchmarks/duplicates.py --data DIR --home /tmp/dup-home       # keep the index to look at

    # fit the threshold on the train split, then report it on the test split (run twice):
    python benchmarks/duplicates.py --data ../shared/datasets/caltech101-train \
        --mix ../shared/datasets/distractors-tune --synthetic ""
    python benchmarks/duplicates.py --data ../shared/datasets/caltech101-test \
        --mix ../shared/datasets/distractors-test --synthetic ""

What it does:
  1. Takes --photos real photos from a folder-per-class collection (seeded, evenly over the
     classes) and plants variants of --planted of them, --variants-each per photo, the kinds taken in turn:
        resize50 / resize25   the whole photo at 50 % / 25 % of each side (bicubic), JPEG q90
        jpeg40-60             re-encoded as JPEG at a random quality in [40, 60]
        crop80-90             centre crop keeping 80-90 % of each side, JPEG q90
        tone15                brightness and contrast each x(1 +- 0.15), random signs, JPEG q90
        rotate2-5             rotated 2-5 degrees either way, then centre-cropped to drop the
                              corners (what "straighten" does in photo editors), JPEG q90
        watermark             a text line ("(c) 2024 Jane Doe Photography") in white at 60 %
                              opacity across the bottom, on a dark band, JPEG q90
        flip                  mirrored left-right: a harder case, reported apart and left out of
                              the headline recall
  2. Indexes originals and variants with the offline encoder through the real pipeline
     (`run_index` into a fresh index), then groups them with `retriever.duplicates.find_duplicates`
     at each --thresholds value, with the chaining guard (the default) and without it.
  3. Figures, per threshold:
        recall            share of planted (original, variant) pairs that end up in one group;
                          per kind, and overall without flip (`recall`) and with it
        false_share       of all pairs of files that share a group, the share that are not from one
                          planted family (original + its variants). Split into same-class pairs
                          (two photos of one Caltech class: often genuine near-duplicates in the
                          data set, e.g. two frames of one scene) and cross-class pairs (certainly
                          wrong)
        groups, grouped_files, largest_group, mixed_groups (groups holding more than one family)
     The suggested default is the threshold with the best recall among those with
     false_share <= 5 % (ties: the higher threshold). It is a fit on --data: choose it on a
     train split (caltech101-train) and read the figures at the shipped default on a test split.
     --mix DIR adds --mix-photos photos of another folder (distractors: pictures of none of the
     classes) as originals without variants, each its own label, so a false pair with one of them
     counts as cross-class: a collection is not only four photos of each of 101 subjects.
  4. Cost: `find_duplicates` on the collection (median of 3, catalog read included), and the
     range search + grouping alone on --synthetic vectors (perturbed copies of the real
     embeddings, Gaussian noise of norm 0.5 renormalised, plus 1 % close copies at noise 0.1 so
     that groups exist), in one process, on the CPU.

Prints FIRST one JSON line holding every figure, THEN a readable table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
KINDS = ("resize50", "resize25", "jpeg40-60", "crop80-90", "tone15", "rotate2-5", "watermark", "flip")
HARD_KINDS = ("flip",)
DEFAULT_THRESHOLDS = "0.86,0.88,0.90,0.91,0.92,0.93,0.94,0.95,0.96,0.97"
GUARD_FACTORS = (1.0, 1.5, 2.0, 3.0)
TARGET_RECALL = 0.9
TARGET_FALSE_SHARE = 0.05
INDEX_NAME = "duplicates-bench"


def log(msg: str) -> None:
    print(f"[duplicates] {msg}", file=sys.stderr, flush=True)


# -- planted variants -------------------------------------------------------------------------------


def _save_jpeg(image, path: Path, quality: int = 90) -> None:
    image.convert("RGB").save(path, "JPEG", quality=quality)


def _centre_crop(image, frac: float):
    w, h = image.size
    cw, ch = max(1, round(w * frac)), max(1, round(h * frac))
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def _watermark(image):
    from PIL import Image, ImageDraw, ImageFont

    base = image.convert("RGBA")
    w, h = base.size
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    text = "(c) 2024 Jane Doe Photography"
    size = max(8, h // 12)
    font = ImageFont.load_default(size=size)
    while size > 8 and draw.textlength(text, font=font) > 0.9 * w:
        size -= 1
        font = ImageFont.load_default(size=size)
    band = round(size * 1.6)
    draw.rectangle((0, h - band, w, h), fill=(0, 0, 0, 90))
    draw.text((round(0.05 * w), h - band + round(0.25 * size)), text, font=font, fill=(255, 255, 255, 153))
    return Image.alpha_composite(base, layer).convert("RGB")


def make_variant(image, kind: str, rng: random.Random, path: Path) -> None:
    """Write the `kind` variant of `image` (RGB) to `path` (JPEG)."""
    from PIL import Image, ImageEnhance, ImageOps

    w, h = image.size
    if kind in ("resize50", "resize25"):
        f = 0.5 if kind == "resize50" else 0.25
        _save_jpeg(image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC), path)
    elif kind == "jpeg40-60":
        _save_jpeg(image, path, quality=rng.randint(40, 60))
    elif kind == "crop80-90":
        _save_jpeg(_centre_crop(image, rng.uniform(0.80, 0.90)), path)
    elif kind == "tone15":
        out = ImageEnhance.Brightness(image).enhance(1 + rng.choice((-1, 1)) * 0.15)
        _save_jpeg(ImageEnhance.Contrast(out).enhance(1 + rng.choice((-1, 1)) * 0.15), path)
    elif kind == "rotate2-5":
        angle = rng.choice((-1, 1)) * rng.uniform(2, 5)
        rotated = image.rotate(angle, resample=Image.BICUBIC, expand=False)
        # the largest centred box of the same shape free of the black corners
        c, s = np.cos(np.radians(abs(angle))), np.sin(np.radians(abs(angle)))
        keep = min(w / (w * c + h * s), h / (w * s + h * c))
        _save_jpeg(_centre_crop(rotated, keep), path)
    elif kind == "watermark":
        _save_jpeg(_watermark(image), path)
    elif kind == "flip":
        _save_jpeg(ImageOps.mirror(image), path)
    else:
        raise ValueError(kind)


def load_rgb(path: Path):
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def build_collection(data: Path, dest: Path, n_photos: int, n_planted: int, per_photo: int, seed: int):
    """-> (paths, family, label, kind) per file: originals copied byte for byte, variants made."""
    every = sorted(
        p for p in data.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if len(every) < n_photos:
        raise SystemExit(f"{data} holds {len(every)} images, fewer than --photos {n_photos}")
    rng = random.Random(seed)
    # Evenly over the classes (a seeded shuffle within each, then one from each class in turn): a
    # plain sample would be a third motorbikes, aeroplanes and faces, Caltech's largest classes,
    # whose photos look alike to the encoder (same pose on the same background).
    by_class: dict[str, list[Path]] = {}
    for p in every:
        by_class.setdefault(p.parent.name, []).append(p)
    for paths in by_class.values():
        rng.shuffle(paths)
    chosen: list[Path] = []
    while len(chosen) < n_photos:
        for label in sorted(by_class):
            if by_class[label] and len(chosen) < n_photos:
                chosen.append(by_class[label].pop())
    chosen.sort()
    planted = sorted(rng.sample(range(n_photos), min(n_planted, n_photos)))
    (dest / "originals").mkdir(parents=True)
    (dest / "variants").mkdir()
    files: list[dict[str, Any]] = []
    for i, src in enumerate(chosen):
        label = src.parent.name
        target = dest / "originals" / f"p{i:04d}_{label}_{src.name}"
        shutil.copyfile(src, target)
        files.append({"path": str(target), "family": i, "label": label, "kind": "original", "source": str(src)})
    turn = 0
    for i in planted:
        image = load_rgb(chosen[i])
        for _ in range(per_photo):
            kind = KINDS[turn % len(KINDS)]
            turn += 1
            target = dest / "variants" / f"p{i:04d}_{kind}.jpg"
            make_variant(image, kind, random.Random(seed * 1_000_003 + turn), target)
            files.append({"path": str(target), "family": i, "label": files[i]["label"], "kind": kind,
                          "source": str(chosen[i])})
    return files


def add_mixed(files: list[dict[str, Any]], mix: Path, dest: Path, n: int | None, seed: int) -> None:
    """Append up to `n` photos of `mix` (all when None) as originals of their own families."""
    every = sorted(p for p in mix.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if n is not None and n < len(every):
        every = sorted(random.Random(seed).sample(every, n))
    (dest / "mixed").mkdir()
    first = 1 + max(f["family"] for f in files)
    for k, src in enumerate(every):
        target = dest / "mixed" / f"m{k:04d}_{src.name}"
        shutil.copyfile(src, target)
        files.append({"path": str(target), "family": first + k, "label": f"{mix.name}/{src.name}",
                      "kind": "original", "source": str(src)})


# -- scoring ----------------------------------------------------------------------------------------


def score(report, truth: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Recall of planted pairs and false pairs among co-grouped files, for one grouping."""
    group_of: dict[str, int] = {}
    pair_total = false_same = false_cross = 0
    mixed = 0
    false_pairs: list[tuple[float, str, str]] = []
    sizes = []
    for g, group in enumerate(report.groups):
        paths = [m.path for m in group.members]
        for p in paths:
            group_of.setdefault(p, g)
        # exact copies stand for their files inside near groups
        for m in group.members:
            for c in m.copies:
                group_of.setdefault(c, g)
        sizes.append(len(paths))
        families = {truth[p]["family"] for p in paths}
        mixed += len(families) > 1
        scores = {(min(i, j), max(i, j)): s for i, j, s in group.pairs}
        for i, j in combinations(range(len(paths)), 2):
            pair_total += 1
            a, b = truth[paths[i]], truth[paths[j]]
            if a["family"] == b["family"]:
                continue
            if a["label"] == b["label"]:
                false_same += 1
            else:
                false_cross += 1
            false_pairs.append((scores.get((i, j), float("nan")), paths[i], paths[j]))
    by_kind: dict[str, list[bool]] = {k: [] for k in KINDS}
    originals = {t["family"]: p for p, t in truth.items() if t["kind"] == "original"}
    for p, t in truth.items():
        if t["kind"] == "original":
            continue
        o = originals[t["family"]]
        by_kind[t["kind"]].append(p in group_of and group_of.get(o) == group_of[p])
    easy = [x for k, v in by_kind.items() if k not in HARD_KINDS for x in v]
    every = [x for v in by_kind.values() for x in v]
    false_total = false_same + false_cross
    false_pairs.sort(key=lambda x: -x[0] if x[0] == x[0] else 0)
    return {
        "recall": _ratio(sum(easy), len(easy)),
        "recall_with_hard": _ratio(sum(every), len(every)),
        "recall_by_kind": {k: _ratio(sum(v), len(v)) for k, v in by_kind.items() if v},
        "planted_pairs": len(every),
        "pairs_grouped": pair_total,
        "false_pairs": false_total,
        "false_share": _ratio(false_total, pair_total),
        "false_same_class": false_same,
        "false_cross_class": false_cross,
        "groups": len(report.groups),
        "grouped_files": report.files_in_groups,
        "largest_group": max(sizes, default=0),
        "mixed_groups": mixed,
        "seconds": round(report.seconds, 4),
        "top_false_pairs": [
            {"score": None if s != s else round(s, 4), "a": _short(a), "b": _short(b),
             "same_class": truth[a]["label"] == truth[b]["label"]}
            for s, a, b in false_pairs[:12]
        ],
    }


def _ratio(a: int, b: int) -> float:
    return round(a / b, 4) if b else 0.0


def _short(path: str) -> str:
    return "/".join(Path(path).parts[-2:])


def choose_default(sweep: list[dict[str, Any]]) -> float | None:
    ok = [r for r in sweep if r["false_share"] <= TARGET_FALSE_SHARE]
    if not ok:
        return None
    best = max(r["recall"] for r in ok)
    return max(r["threshold"] for r in ok if r["recall"] == best)


# -- cost on synthetic vectors ------------------------------------------------------------------


def synthetic_cost(real: np.ndarray, n: int, threshold: float, seed: int) -> dict[str, Any]:
    from retriever.duplicates import connected_components, range_pairs

    rng = np.random.default_rng(seed)
    dim = real.shape[1]
    base = real[rng.integers(0, len(real), size=n)]
    scale = np.where(rng.random(n) < 0.01, 0.1, 0.5).astype(np.float32)[:, None] / np.sqrt(dim)
    vecs = base + rng.standard_normal((n, dim)).astype(np.float32) * scale
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    _, _, (qi, qj, qs) = range_pairs(((ids[lo : lo + 20_000], vecs[lo : lo + 20_000]) for lo in range(0, n, 20_000)),
                                     dim, threshold)
    search_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    components = connected_components({(int(a), int(b)): float(s) for a, b, s in zip(qj, qi, qs)})
    group_s = time.perf_counter() - t0
    return {
        "n": n, "dim": dim, "threshold": threshold, "pairs": int(len(qs)), "components": len(components),
        "range_search_s": round(search_s, 2), "union_find_s": round(group_s, 3),
        "index_mb": round(n * dim * 4 / 1e6, 1),
    }


# -- the benchmark ------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path, home: Path) -> dict[str, Any]:
    from retriever.duplicates import default_threshold, find_duplicates
    from retriever.encoders import ModelSpec, create_encoder
    from retriever.index import Index
    from retriever.indexer import IndexOptions, run_index

    result: dict[str, Any] = {
        "benchmark": "duplicates", "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "data": str(args.data), "seed": args.seed, "load_avg_1m_start": _loadavg(),
    }
    log(f"1/4 planting variants of {args.planted} of {args.photos} photos ...")
    t0 = time.perf_counter()
    files = build_collection(args.data, work / "collection", args.photos, args.planted, args.variants_each, args.seed)
    n_variants = len(files) - args.photos
    if args.mix is not None:
        add_mixed(files, args.mix, work / "collection", args.mix_photos, args.seed)
    truth = {f["path"]: f for f in files}
    result["collection"] = {
        "photos": args.photos, "planted": args.planted, "variants": n_variants,
        "mix": None if args.mix is None else str(args.mix), "mixed": len(files) - args.photos - n_variants,
        "files": len(files), "variants_by_kind": dict(Counter(f["kind"] for f in files if f["kind"] != "original")),
        "build_s": round(time.perf_counter() - t0, 1),
    }

    log(f"2/4 indexing {len(files)} files with the offline encoder ...")
    t0 = time.perf_counter()
    encoder = create_encoder(ModelSpec(name="offline", device=args.device, batch_size=args.batch_size))
    load_s = time.perf_counter() - t0
    index = Index.create(home, INDEX_NAME, ModelSpec(name="offline"), encoder.model_id, encoder.dim)
    index.acquire_lock()
    summary = run_index(index, encoder, [str(work / "collection")], IndexOptions(workers=args.workers))
    index.release_lock()
    if summary.failed:
        log(f"warning: {summary.failed} files failed to index: {summary.failures[:3]}")
    missing = [p for p in truth if index.catalog.find_by_path(p) is None]
    for p in missing:
        truth.pop(p)
    result["index"] = {"model_id": encoder.model_id, "dim": encoder.dim, "indexed": summary.indexed,
                       "failed": summary.failed, "model_load_s": round(load_s, 1),
                       "seconds": round(summary.seconds, 1),
                       "images_per_s": round(summary.indexed / summary.seconds, 1) if summary.seconds else None}

    log("3/4 grouping at each threshold ...")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    sweep = []
    for t in thresholds:
        guarded = score(find_duplicates(index, t), truth)
        plain = score(find_duplicates(index, t, guard=False), truth)
        row = {"threshold": t, **{k: v for k, v in guarded.items() if k != "top_false_pairs"},
               "no_guard": {k: plain[k] for k in ("recall", "false_share", "largest_group", "mixed_groups")}}
        sweep.append(row)
        log(f"  T={t:.2f}  recall {row['recall']:.3f}  false {row['false_share']:.3f}  groups {row['groups']}")
    result["sweep"] = sweep
    shipped = default_threshold(encoder.model_id)
    result["default_threshold"] = shipped
    result["suggested_threshold"] = choose_default(sweep)
    at_default = score(find_duplicates(index, shipped), truth)
    result["at_default"] = at_default
    import retriever.duplicates as dup

    shipped_factor = dup.GUARD_FACTOR
    guard_sweep = []
    try:
        for factor in GUARD_FACTORS:
            dup.GUARD_FACTOR = factor
            for t in sorted({shipped, *thresholds[:3]}):
                s = score(find_duplicates(index, t), truth)
                guard_sweep.append({"factor": factor, "threshold": t, "loose": round(dup.guard_threshold(t), 4),
                                    **{k: s[k] for k in ("recall", "false_share", "largest_group", "mixed_groups")}})
    finally:
        dup.GUARD_FACTOR = shipped_factor
    result["guard_factor"] = shipped_factor
    result["guard_sweep"] = guard_sweep
    result["meets_target"] = at_default["recall"] >= TARGET_RECALL and at_default["false_share"] <= TARGET_FALSE_SHARE

    log("4/4 cost ...")
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        find_duplicates(index, shipped)
        runs.append(time.perf_counter() - t0)
    real = np.vstack([v for _, v in index.catalog.iter_vectors(index.dim)])
    index.close()
    cost: dict[str, Any] = {"collection_files": len(truth),
                            "find_duplicates_s_median": round(statistics.median(runs), 3)}
    cost["synthetic"] = []
    for n in [int(x) for x in args.synthetic.split(",") if x]:
        log(f"  range search over {n} synthetic vectors ...")
        cost["synthetic"].append(synthetic_cost(real, n, shipped, args.seed))
    try:
        import faiss

        cost["faiss_threads"] = faiss.omp_get_max_threads()
    except Exception:  # pragma: no cover - faiss builds without OpenMP
        pass
    cost["cpus"] = os.cpu_count()
    result["cost"] = cost
    result["load_avg_1m_end"] = _loadavg()
    return result


def _loadavg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def table(r: dict[str, Any]) -> str:
    c = r["collection"]
    lines = [
        "",
        f"collection  {c['photos']} photos from {r['data']}, "
        f"{c['variants']} planted variants of {c['planted']} of them"
        + (f", {c['mixed']} photos of {c['mix']} mixed in" if c.get("mixed") else ""),
        f"model       {r['index']['model_id']} (dim {r['index']['dim']}), "
        f"indexed at {r['index']['images_per_s']} img/s",
        f"default     {r['default_threshold']} (suggested by this sweep: {r['suggested_threshold']}); "
        f"target recall >= {TARGET_RECALL} with false pairs <= {TARGET_FALSE_SHARE:.0%}: "
        f"{'met' if r['meets_target'] else 'NOT met'}",
        "",
    ]
    kinds = [k for k in KINDS if k in r["sweep"][0]["recall_by_kind"]]
    head = f"  {'T':>5}  {'recall':>6}  {'false':>6}  {'same/cross':>10}  {'groups':>6}  {'max':>4}  {'mixed':>5}  " \
           f"{'no guard: recall false max':>27}  " + "  ".join(f"{k:>9}" for k in kinds)
    lines.append(head)
    for s in r["sweep"]:
        ng = s["no_guard"]
        lines.append(
            f"  {s['threshold']:>5.2f}  {s['recall']:>6.3f}  {s['false_share']:>6.3f}  "
            f"{s['false_same_class']:>4}/{s['false_cross_class']:<5}  {s['groups']:>6}  {s['largest_group']:>4}  "
            f"{s['mixed_groups']:>5}  {ng['recall']:>15.3f} {ng['false_share']:>5.3f} {ng['largest_group']:>4}  "
            + "  ".join(f"{s['recall_by_kind'][k]:>9.3f}" for k in kinds)
        )
    lines += ["", f"chaining guard (members within 1 - F x (1 - T) of the centre; shipped F = {r['guard_factor']}):"]
    lines.append(f"  {'F':>4}  {'T':>5}  {'loose':>6}  {'recall':>6}  {'false':>6}  {'max':>4}  {'mixed':>5}")
    for g in r["guard_sweep"]:
        lines.append(f"  {g['factor']:>4}  {g['threshold']:>5.2f}  {g['loose']:>6.3f}  {g['recall']:>6.3f}  "
                     f"{g['false_share']:>6.3f}  {g['largest_group']:>4}  {g['mixed_groups']:>5}")
    d = r["at_default"]
    lines += ["", f"false pairs at the default ({d['false_pairs']} of {d['pairs_grouped']} co-grouped pairs), "
                  "linked pairs best first (-: in one group, not linked):"]
    for p in d["top_false_pairs"]:
        shown = f"{p['score']:.4f}" if p["score"] is not None else "  -   "
        lines.append(f"  {shown}  {'same class ' if p['same_class'] else 'cross-class'}  {p['a']}  ~  {p['b']}")
    cost = r["cost"]
    lines += ["", f"cost        find_duplicates on {cost['collection_files']} files: "
                  f"{cost['find_duplicates_s_median']} s "
                  f"(median of 3; {cost['cpus']} CPUs, faiss threads {cost.get('faiss_threads')})"]
    for s in cost["synthetic"]:
        lines.append(f"            {s['n']:,} synthetic vectors (dim {s['dim']}, {s['index_mb']} MB): range search "
                     f"{s['range_search_s']} s, union-find {s['union_find_s']} s, "
                     f"{s['pairs']} pairs at {s['threshold']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="a folder of real photos (class folders: label = folder)")
    ap.add_argument("--photos", type=int, default=400, help="real photos taken from --data")
    ap.add_argument("--planted", type=int, default=160, help="how many of them get variants")
    ap.add_argument("--variants-each", type=int, default=2, help="variants per planted photo (kinds in turn)")
    ap.add_argument("--mix", type=Path, default=None, help="a folder of other photos (distractors) to mix in")
    ap.add_argument("--mix-photos", type=int, default=None, help="how many of --mix (default: all)")
    ap.add_argument("--thresholds", default=DEFAULT_THRESHOLDS, help="comma-separated cosine thresholds to sweep")
    ap.add_argument("--synthetic", default="10000,100000", help="comma-separated vector counts for the cost figures")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="decode workers (0: retriever's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", type=Path, default=None, help="keep the index (and the collection) here")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.home is not None:
        args.home.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="collection-", dir=args.home))
        result = run(args, work, args.home)
    else:
        with tempfile.TemporaryDirectory(prefix="retriever-dup-bench-") as tmp:
            result = run(args, Path(tmp), Path(tmp) / "home")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result), flush=True)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
