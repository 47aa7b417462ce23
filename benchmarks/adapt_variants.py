"""Concept rules that were tried and not taken (issue 20), on the TRAIN split only: more views of
each example (a flip, crops: encoded from the example's own file, as `concept add` could), and
other linear classifiers (logistic regression, a linear SVM) in place of retriever's closed-form
least-squares fit. Offline encoder. Prints one JSON line, then a table.

    python benchmarks/adapt_variants.py --cache /tmp/adapt-cache      # ~7 min (views cached)

The protocol is benchmarks/adapt.py --fit's: 5 examples drawn (seeds 0, 1, 2) from the first 15
images of each caltech101-train class; ranked: the other 15 of every class + distractors-tune;
mean average precision over classes and draws. Every variant keeps the library's pseudo-positive
round (retriever.concepts.learn: the collection's 5 best photos added as positives, refitted).
Nothing here looks at a test split: the report of the chosen rule is benchmarks/adapt.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adapt as A  # noqa: E402
from tags import log  # noqa: E402

from retriever.concept_fit import BACKGROUND_SIZE, PARAMS  # noqa: E402
from retriever.concepts import PSEUDO_POSITIVES, learn  # noqa: E402

POOL, K, SEEDS = 15, 5, (0, 1, 2)
VIEWS = ("flip", "centre 80%", "flip + centre 80%", "corner 70% top-left", "corner 70% bottom-right",
         "corner 70% top-right", "corner 70% bottom-left")


def views_of(image) -> list:
    from PIL import ImageOps

    w, h = image.size
    flipped = ImageOps.mirror(image)

    def crop(img, share, ax, ay):
        cw, ch = int(w * share), int(h * share)
        x0, y0 = int((w - cw) * ax), int((h - ch) * ay)
        return img.crop((x0, y0, x0 + cw, y0 + ch))

    return [flipped, crop(image, 0.8, .5, .5), crop(flipped, 0.8, .5, .5), crop(image, 0.7, 0, 0),
            crop(image, 0.7, 1, 1), crop(image, 0.7, 1, 0), crop(image, 0.7, 0, 1)]


def encoded_views(cache: Path, paths: list[str], picks: list[int]) -> np.ndarray:
    """(len(picks), len(VIEWS), dim): the views of each pool image, encoded once into the cache."""
    from PIL import Image, ImageOps

    from retriever.encoders.offline import OfflineEncoder

    path = cache / f"views-caltech101-train-{POOL}.npz"
    if path.exists():
        stored = np.load(path)
        if stored["picks"].tolist() == picks:
            return stored["views"]
    log(f"encoding {len(VIEWS)} views of {len(picks)} images ...")
    encoder = OfflineEncoder(device="cpu")
    out = []
    for i in picks:
        with Image.open(paths[i]) as im:
            image = ImageOps.exif_transpose(im).convert("RGB")
        out.append(encoder.embed_images(views_of(image)))
    views = np.stack(out).astype(np.float32)
    np.savez(path, picks=np.array(picks), views=views)
    return views


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "retriever-adapt-cache")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tx, ty, paths = A.split("caltech101-train", args.cache)
    dx, _ = A.encoded(A.DATA / "distractors-tune", args.cache)
    classes = sorted(set(ty.tolist()))
    pools = {c: np.flatnonzero(ty == c)[:POOL] for c in classes}
    later = np.ones(len(ty), bool)
    for pool in pools.values():
        later[pool] = False
    col = A.Collection(np.vstack([tx[later], dx]), np.concatenate([ty[later], np.full(len(dx), "")]))
    picks = [int(i) for c in classes for i in pools[c]]
    views = encoded_views(args.cache, paths, picks)
    row_of = {i: n for n, i in enumerate(picks)}
    background = col.x[np.random.default_rng(0).choice(len(col.x), min(BACKGROUND_SIZE, len(col.x)), replace=False)]
    no_negatives = np.zeros((0, tx.shape[1]), np.float32)

    def library(view_ids=(), lam_times=1.0):
        def rank(pick):
            ex = [tx[pick]] + ([views[[row_of[int(i)] for i in pick]][:, list(view_ids)].reshape(-1, tx.shape[1])]
                               if view_ids else [])
            params = {**PARAMS, "lam": PARAMS["lam"] * lam_times}  # lam x views: each view weighs 1 / views
            fitted, _ = learn(np.vstack(ex), no_negatives, col.background, col.best(), params)
            return fitted.scores(col.x)
        return rank

    def sklearn_rule(kind: str, c: float, prototype: float = 0.0):
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import LinearSVC

        def direction(pos):
            x = np.vstack([pos, background])
            y = np.r_[np.ones(len(pos)), np.zeros(len(background))]
            model = (LogisticRegression(C=c, class_weight="balanced", max_iter=300) if kind == "logistic"
                     else LinearSVC(C=c, class_weight="balanced"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(x, y)
            w = model.coef_[0]
            if prototype:  # the positives' mean added in units of w's spread over the background, as the library does
                mean = pos.mean(axis=0)
                w = w + prototype * (background @ w).std() / (background @ mean).std() * mean
            return w

        def rank(pick):
            ex = tx[pick]
            w = direction(ex)
            top = np.argsort(-(col.x @ w))[:PSEUDO_POSITIVES]
            return col.x @ direction(np.vstack([ex, col.x[top]]))
        return rank

    variants = [
        ("library rule (least squares + prototype)", library()),
        ("+ flip", library((0,), 2)),
        ("+ flip, centre crops", library((0, 1, 2), 4)),
        ("+ all 7 views", library(tuple(range(7)), 8)),
        ("+ corner crops", library((3, 4, 5, 6), 5)),
        ("logistic C=10 + prototype 0.5", sklearn_rule("logistic", 10.0, 0.5)),
        ("linear SVM C=1", sklearn_rule("svm", 1.0)),
    ]
    rows = []
    for name, rank in variants:
        t = time.time()
        aps = []
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            for c in classes:
                pick = rng.choice(pools[c], K, replace=False)
                aps.append(A.average_precision(rank(pick), col.y == c))
        rows.append({"variant": name, "ap": round(float(np.mean(aps)), 4), "seconds": round(time.time() - t, 1)})
        log(f"{name}: {rows[-1]['ap']}")
    out = {"benchmark": "adapt_variants", "split": "caltech101-train + distractors-tune", "examples": K,
           "seeds": list(SEEDS), "classes": len(classes), "collection": int(len(col.x)), "variants": rows,
           "wall_s": round(time.time() - started, 1)}
    print(json.dumps(out))
    print()
    print(f"concept rules at {K} examples, train split (mean AP over {len(classes)} classes x {len(SEEDS)} draws)")
    print("| variant | AP | against the library's |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['ap']:.4f} | {r['ap'] - rows[0]['ap']:+.4f} |")
    return out


if __name__ == "__main__":
    main()
