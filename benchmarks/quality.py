"""Retrieval quality on a folder-per-class collection (folder name = label).

    python benchmarks/quality.py --data ../shared/datasets/caltech101-test
    python benchmarks/quality.py --data DIR --model ViT-B-32 --pretrained laion2b_s34b_b79k
    python benchmarks/quality.py --data DIR --limit-per-class 10        # a quick look

Report on caltech101-test; anything chosen from these figures is chosen on caltech101-train
(benchmarks/refit.py re-fits the offline encoder's constants there with this file's functions).

Figures:
  t2i_map, t2i_p10  text -> image: one query per class, "a photo of a {class}" (underscores to
                    spaces, plural folder names made singular); relevant = the images of that
                    folder. Mean over classes of average precision, and of precision at 10.
  i2i_p10           image -> image: every image queries all the others (itself excluded);
                    relevant = same folder. Mean precision at 10.
  near_dup_r1/_r5   a sample of images (--dup-samples, seed 0) is copied with a random crop of
                    70-90 % of each side, resized to 60 %, saved as JPEG quality 60, brightened
                    x1.2; the copy queries the whole collection: how often the original ranks
                    first / in the top 5.

Prints FIRST one JSON line holding every figure, THEN a readable table; progress goes to stderr.
Embeddings are kept in memory for the run only. Scoring is brute-force numpy.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
QUERY_TEMPLATE = "a photo of a {}"
K = 10
SINGULAR_EXCEPTIONS = {"faces_easy": "face", "scissors": "scissors", "glasses": "glasses"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def class_query_name(folder: str) -> str:
    """Folder name -> the noun a person would type: "airplanes" -> "airplane", "car_side" -> "car side"."""
    name = folder.lower()
    if name in SINGULAR_EXCEPTIONS:
        return SINGULAR_EXCEPTIONS[name]
    words = name.replace("_", " ").split()
    last = words[-1] if words else name
    # Obvious English plurals only; "bass", "octopus", "ibis" stay as they are.
    if last.endswith("s") and not last.endswith(("ss", "us", "is")) and len(last) > 3:
        words[-1] = last[:-1]
    return " ".join(words)


def list_collection(root: Path, limit_per_class: int | None) -> tuple[list[Path], list[str]]:
    paths, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files[:limit_per_class] if limit_per_class else files:
            paths.append(f)
            labels.append(folder.name)
    return paths, labels


def load_rgb(path: Path):
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def near_duplicate(image, rng: random.Random):
    """The same photo again: another crop, size, compression and exposure."""
    from PIL import Image, ImageEnhance

    w, h = image.size
    frac = rng.uniform(0.7, 0.9)
    cw, ch = max(1, round(w * frac)), max(1, round(h * frac))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((x, y, x + cw, y + ch))
    image = image.resize((max(1, round(cw * 0.6)), max(1, round(ch * 0.6))), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=60)
    buf.seek(0)
    with Image.open(buf) as jpeg:
        image = jpeg.convert("RGB")
    return ImageEnhance.Brightness(image).enhance(1.2)


def make_encoder(model: str, pretrained: str | None, device: str, batch_size: int):
    """The one place that builds the encoder: the registry when present, else the offline class."""
    try:
        from retriever.encoders import ModelSpec, create_encoder
    except ImportError:
        create_encoder = None
    if create_encoder is not None:
        return create_encoder(ModelSpec(name=model, pretrained=pretrained, device=device, batch_size=batch_size))
    if model != "offline":
        raise SystemExit("no encoder registry (retriever.encoders.create_encoder): only --model offline works")
    from retriever.encoders.offline import OfflineEncoder

    return OfflineEncoder(device=device, batch_size=batch_size)


def embed_all(encoder, loaders: Sequence[Callable[[], Any]], what: str) -> tuple[np.ndarray, list[int]]:
    """Decode + preprocess in threads while the encoder runs; returns (vectors, indices kept)."""
    kept, vectors = [], []

    def prep(i: int):
        try:
            return i, encoder.preprocess(loaders[i]())
        except Exception as exc:  # a broken file is reported and skipped, not fatal
            log(f"skip {i}: {exc}")
            return i, None

    step = encoder.batch_size
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for lo in range(0, len(loaders), step):
            items = [r for r in pool.map(prep, range(lo, min(lo + step, len(loaders)))) if r[1] is not None]
            if items:
                vectors.append(encoder.embed_preprocessed([t for _, t in items]))
                kept.extend(i for i, _ in items)
            done = min(lo + step, len(loaders))
            if done % (step * 10) == 0 or done == len(loaders):
                rate = done / (time.perf_counter() - start)
                log(f"{what}: {done}/{len(loaders)} ({rate:.1f} images/s)")
    dim = encoder.dim
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), kept


def average_precision(relevant_in_rank_order: np.ndarray) -> float:
    hits = np.cumsum(relevant_in_rank_order)
    ranks = np.flatnonzero(relevant_in_rank_order) + 1
    return float((hits[relevant_in_rank_order] / ranks).mean()) if len(ranks) else 0.0


def text_to_image(encoder, vectors: np.ndarray, label_ids: np.ndarray, classes: list[str]) -> dict[str, Any]:
    queries = [QUERY_TEMPLATE.format(class_query_name(c)) for c in classes]
    scores = encoder.embed_texts(queries) @ vectors.T
    aps, p10 = [], []
    for c in range(len(classes)):
        relevant = label_ids[np.argsort(-scores[c], kind="stable")] == c
        aps.append(average_precision(relevant))
        p10.append(relevant[:K].mean())
    per_class = {q: round(ap, 4) for q, ap in zip(classes, aps)}
    return {"t2i_map": float(np.mean(aps)), "t2i_p10": float(np.mean(p10)), "per_class_ap": per_class}


def image_to_image(vectors: np.ndarray, label_ids: np.ndarray, chunk: int = 1024) -> float:
    precisions = []
    for lo in range(0, len(vectors), chunk):
        scores = vectors[lo : lo + chunk] @ vectors.T
        rows = np.arange(scores.shape[0])
        scores[rows, lo + rows] = -np.inf  # the query itself is not an answer
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        precisions.append((label_ids[top] == label_ids[lo + rows, None]).mean(axis=1))
    return float(np.concatenate(precisions).mean())


def near_duplicates(encoder, paths: list[Path], vectors: np.ndarray, n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    sample = sorted(rng.sample(range(len(paths)), min(n, len(paths))))
    # One rng per copy, so the copies do not depend on decode order in the threads.
    loaders = [lambda i=i: near_duplicate(load_rgb(paths[i]), random.Random(seed * 1_000_003 + i)) for i in sample]
    copies, kept = embed_all(encoder, loaders, "near-duplicates")
    originals = np.array([sample[k] for k in kept])
    scores = copies @ vectors.T
    rank = (scores > scores[np.arange(len(originals)), originals][:, None]).sum(axis=1)  # 0 = first
    return {"near_dup_n": len(originals), "near_dup_r1": float((rank == 0).mean()), "near_dup_r5": float((rank < 5).mean())}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="folder of class folders")
    ap.add_argument("--model", default="offline", help="offline (default) or an open_clip architecture")
    ap.add_argument("--pretrained", default=None, help="open_clip tag or weights file")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit-per-class", type=int, default=None, help="first N files of each folder")
    ap.add_argument("--dup-samples", type=int, default=200, help="near-duplicate queries (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    paths, labels = list_collection(args.data, args.limit_per_class)
    if not paths:
        raise SystemExit(f"no images under {args.data}")
    log(f"{len(paths)} images in {len(set(labels))} classes")
    t0 = time.perf_counter()
    encoder = make_encoder(args.model, args.pretrained, args.device, args.batch_size)
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    vectors, kept = embed_all(encoder, [lambda p=p: load_rgb(p) for p in paths], "collection")
    encode_s = time.perf_counter() - t0
    paths = [paths[i] for i in kept]
    classes = sorted(set(labels[i] for i in kept))
    label_ids = np.array([classes.index(labels[i]) for i in kept])

    result: dict[str, Any] = {
        "model_id": encoder.model_id,
        "model": args.model,
        "pretrained": args.pretrained,
        "data": str(args.data),
        "n_images": len(paths),
        "n_classes": len(classes),
        "dim": int(vectors.shape[1]),
    }
    t2i = text_to_image(encoder, vectors, label_ids, classes)
    result.update(t2i_map=round(t2i["t2i_map"], 4), t2i_p10=round(t2i["t2i_p10"], 4))
    result["i2i_p10"] = round(image_to_image(vectors, label_ids), 4)
    if args.dup_samples > 0:
        dup = near_duplicates(encoder, paths, vectors, args.dup_samples, args.seed)
        result.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in dup.items()})
    result.update(
        model_load_s=round(load_s, 2),
        encode_s=round(encode_s, 2),
        images_per_s=round(len(paths) / encode_s, 2),
        batch_size=args.batch_size,
        device=getattr(encoder, "device", args.device),
        seconds=round(time.perf_counter() - t_start, 1),
        load_avg_1m=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    )
    print(json.dumps(result), flush=True)

    print(f"\nmodel       {result['model_id']}  (dim {result['dim']}, {result['device']})")
    print(f"collection  {args.data}: {result['n_images']} images, {result['n_classes']} classes")
    print(f"speed       {result['images_per_s']} images/s (batch {args.batch_size}), run {result['seconds']} s\n")
    rows = [
        ("text -> image mAP", result["t2i_map"]),
        (f"text -> image P@{K}", result["t2i_p10"]),
        (f"image -> image P@{K}", result["i2i_p10"]),
    ]
    if args.dup_samples > 0:
        rows += [
            (f"near-duplicate R@1 (n={result['near_dup_n']})", result["near_dup_r1"]),
            ("near-duplicate R@5", result["near_dup_r5"]),
        ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:.3f}")
    worst = sorted(t2i["per_class_ap"].items(), key=lambda kv: kv[1])[:5]
    print("\n  hardest text queries (AP): " + ", ".join(f"{class_query_name(c)} {ap:.2f}" for c, ap in worst))
    return result


if __name__ == "__main__":
    main()
