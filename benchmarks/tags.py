"""Open-world zero-shot tags (retriever/tags.py, retriever/tag_rule.py): quality and speed.

    python benchmarks/tags.py                          # report on caltech101-test + distractors-test
    python benchmarks/tags.py --fit                    # fit the threshold on train + tune (prints it)
    python benchmarks/tags.py --fit-rule               # fit w, beta, the synonym cut-off and t (a grid)
    python benchmarks/tags.py --cache /tmp/tags-cache  # keep the encoded splits between runs

Quality (offline encoder). A collection is 20 Caltech-101 classes drawn at random (100 draws,
seed 0..99): those classes' images plus every distractor (Caltech's BACKGROUND_Google: photos
that show none of the classes). The 20 class names are the labels ("a photo of a {class}",
quality.py's names). Per label: precision = images tagged with it that show it / images tagged
with it; recall = images that show it and are tagged / images that show it. Means over labels
and draws; precision is averaged over the labels that tagged something ("silent" says how often
a label tagged nothing: its recall counts as 0). no_tag = share of distractors with no tag.
  one-label   the same collections, each label tagged alone (a label set of one).
  ceiling     each label's ranking by cosine, cut at the best threshold chosen in hindsight:
              precision at recall 0.5, and mean average precision (first 30 draws).
  examples    examples/photos + 29 Caltech test photos (1 airplane, 4 sunflowers, 24 of other
              classes, seed 0), labels "cat, coffee, rocket, airplane" alone: what each gets.
Speed: tag_index on an index of --speed-n synthetic stored vectors (dim 704) with 500 labels
(--only: 500 labels against the 384-concept background), catalog reads and writes included; no
image is decoded. Label texts come from a fake encoder (random unit vectors), so only the
tagging itself is timed.

Fitted (--fit) on caltech101-train + distractors-tune; reported on caltech101-test +
distractors-test. Splits are encoded once with `retriever index --model offline` into --cache.

Prints FIRST one JSON line, THEN readable tables; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from quality import class_query_name

DATASETS = REPO.parent / "shared" / "datasets"
N_LABELS, N_DRAWS, CEILING_DRAWS = 20, 100, 30
EXAMPLE_LABELS = ["cat", "coffee", "rocket", "airplane"]
TARGETS = {"precision": 0.6, "recall": 0.5, "no_tag": 0.8}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- data -------------------------------------------------------------------------------------------


def encoded(folder: Path, cache: Path) -> tuple[np.ndarray, list[str]]:
    """(vectors, paths) of a folder, indexed once with the offline encoder under cache/NAME and
    read back through the catalog."""
    from retriever.index import Index

    home = cache / folder.name
    if not (home / "default").exists():
        log(f"indexing {folder} ...")
        subprocess.run([sys.executable, "-m", "retriever", "index", str(folder), "--model", "offline",
                        "--home", str(home), "-q"], check=True)
    with Index.open(home, "default", read_only=True) as idx:
        chunks = list(idx.catalog.iter_vectors(idx.dim))
        ids = np.concatenate([i for i, _ in chunks])
        vectors = np.concatenate([v for _, v in chunks])
        rows = idx.catalog.image_rows(ids.tolist())
        return vectors, [rows[int(i)]["path"] for i in ids]


def collection(cache: Path, classes_dir: Path, distractors_dir: Path, classes: list[str]):
    """-> (vectors, y, paths): y = class index, -1 for a distractor."""
    xc, pc = encoded(classes_dir, cache)
    xd, pd = encoded(distractors_dir, cache)
    y = [classes.index(Path(p).parent.name) for p in pc] + [-1] * len(pd)
    return np.concatenate([xc, xd]), np.array(y), pc + pd


# -- measures ---------------------------------------------------------------------------------------


def draws(n_classes: int) -> list[np.ndarray]:
    return [np.random.default_rng(seed).choice(n_classes, N_LABELS, replace=False) for seed in range(N_DRAWS)]


def evaluate(decisions: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """decisions (n, n_classes) bool: label l on image i. A per-label rule makes a draw's result
    the rows of its classes and the distractors, so each draw is a sum of counts."""
    onehot = np.zeros((len(y), n_classes + 1), np.int64)
    onehot[np.arange(len(y)), np.where(y < 0, n_classes, y)] = 1
    count = decisions.T.astype(np.int64) @ onehot  # (label, true class or distractor)
    positives = onehot.sum(0)
    distractor_rows = decisions[y < 0]
    per_class = {c: {"p": [], "r": [], "tagged": []} for c in range(n_classes)}
    precisions, recalls, silent, no_tag = [], [], 0, []
    for draw in draws(n_classes):
        for label in draw:
            tp = count[label, label]
            tagged = count[label, draw].sum() + count[label, n_classes]
            recalls.append(tp / positives[label])
            per_class[label]["r"].append(tp / positives[label])
            per_class[label]["tagged"].append(tagged)
            if tagged:
                precisions.append(tp / tagged)
                per_class[label]["p"].append(tp / tagged)
            else:
                silent += 1
        no_tag.append(float((~distractor_rows[:, draw].any(axis=1)).mean()))
    return {
        "precision": round(float(np.mean(precisions)), 4),
        "recall": round(float(np.mean(recalls)), 4),
        "no_tag": round(float(np.mean(no_tag)), 4),
        "silent": round(silent / (N_DRAWS * N_LABELS), 4),
        "per_class": per_class,
        "distractors_tagged": count[:, n_classes],
    }


def ceiling(cosines: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """Best threshold in hindsight per label and draw: precision at recall 0.5; mean AP."""
    at_half, aps = [], []
    for draw in draws(n_classes)[:CEILING_DRAWS]:
        rows = np.isin(y, draw) | (y < 0)
        for label in draw:
            order = np.argsort(-cosines[rows, label])
            relevant = (y[rows] == label)[order]
            hits = np.cumsum(relevant)
            precision = hits / np.arange(1, len(relevant) + 1)
            recall = hits / relevant.sum()
            aps.append(float((precision * relevant).sum() / relevant.sum()))
            at_half.append(float(precision[recall >= 0.5].max()))
    return {"precision_at_recall_0.5": round(float(np.mean(at_half)), 4), "map": round(float(np.mean(aps)), 4)}


# -- the parts --------------------------------------------------------------------------------------


def unique(names: list[str]) -> tuple[list[str], list[int]]:
    """Caltech has two face classes ("Faces", "Faces_easy"): one label text, one column each."""
    labels = list(dict.fromkeys(names))
    return labels, [labels.index(n) for n in names]


def quality(args, encoder, classes: list[str], names: list[str]) -> dict:
    from retriever.tags import make_tag_set, score_tags

    cache_dir = args.cache / "model-cache"
    x, y, _ = collection(args.cache, args.test, args.distractors, classes)
    labels, column = unique(names)
    tag_set = make_tag_set(encoder, labels, only=True, cache_dir=cache_dir)
    together = (score_tags(x, tag_set) >= tag_set.threshold)[:, column]
    alone = np.zeros_like(together)
    for c, name in enumerate(names):  # a label set of one, each
        single = make_tag_set(encoder, [name], only=True, cache_dir=cache_dir)
        alone[:, c] = (score_tags(x, single) >= single.threshold)[:, 0]
    query = encoder.embed_texts([f"a photo of a {name}" for name in names])
    vocabulary = make_tag_set(encoder, cache_dir=cache_dir, only=False)  # `retriever tag` alone
    kept = score_tags(x, vocabulary) >= vocabulary.threshold
    return {
        "vocabulary": {"labels": len(vocabulary.labels),
                       "tags_per_photo": round(float(kept[y >= 0].sum(1).mean()), 2),
                       "tags_per_distractor": round(float(kept[y < 0].sum(1).mean()), 2),
                       "photos_without_tag": round(float((~kept[y >= 0].any(1)).mean()), 3)},
        "together": evaluate(together, y, len(classes)),
        "alone": evaluate(alone, y, len(classes)),
        "same_decisions": bool((alone == together).all()),
        "ceiling": ceiling(x @ query.T, y, len(classes)),
        "n_images": int((y >= 0).sum()), "n_distractors": int((y < 0).sum()),
        "calibration": tag_set.calibration,
    }


def fit(args, encoder, classes: list[str], names: list[str]) -> dict:
    """The threshold on train + tune: the highest mean precision at mean recall >= 0.52 (a margin
    over the 0.5 target). Reported as the confidence that threshold corresponds to and as t."""
    from retriever.tag_rule import decision_scores
    from retriever.tags import make_tag_set

    x, y, _ = collection(args.cache, args.train, args.tune, classes)
    labels, column = unique(names)
    tag_set = make_tag_set(encoder, labels, only=True, cache_dir=args.cache / "model-cache")
    scores = decision_scores(x, tag_set.label_vectors, tag_set.background_vectors, tag_set.mask,
                             tag_set.calibration)
    shift, best = best_shift(scores[:, column], y, len(classes))
    return {"t": round(tag_set.calibration.threshold + shift, 3), "train_precision": best["precision"],
            "train_recall": best["recall"], "train_no_tag": best["no_tag"]}


def best_shift(scores: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[float, dict]:
    """The decision threshold (added to the rule's t) with the largest mean precision at mean
    recall >= 0.52, among 120 quantiles of the scores -> (shift, its evaluation)."""
    results = [(float(t), evaluate(scores >= t, y, n_classes))
               for t in np.quantile(scores, np.linspace(0.80, 0.9995, 120))]
    return max(((t, r) for t, r in results if r["recall"] >= 0.52), key=lambda tr: tr[1]["precision"])


FIT_GRID = {"synonym_cosine": (0.5, 0.6, 0.7), "label_weight": (0.5, 1.0, 2.0), "hub_weight": (0.0, 1.0, 1.5, 2.0)}


def fit_rule(args, encoder, classes: list[str], names: list[str]) -> dict:
    """The rule's constants on train + tune: a grid over the synonym cut-off, w and beta (the
    hubness weight, measured with the mean vector of these same photos), t fitted at each point
    as `fit` does; the best is the largest train precision at recall >= 0.52."""
    from dataclasses import replace

    from retriever.tag_rule import FITTED, background_mask, decision_scores, hub_vector
    from retriever.tags import WORD_TEMPLATE, label_embeddings, make_tag_set

    x, y, _ = collection(args.cache, args.train, args.tune, classes)
    hub = x.mean(axis=0)
    labels, column = unique(names)
    tag_set = make_tag_set(encoder, labels, only=True, cache_dir=args.cache / "model-cache")
    words = label_embeddings(encoder, list(tag_set.labels), WORD_TEMPLATE)
    background_words = label_embeddings(encoder, list(tag_set.background), WORD_TEMPLATE)
    rows = []
    for cut in FIT_GRID["synonym_cosine"]:
        mask = background_mask(words, background_words, cut)
        for w in FIT_GRID["label_weight"]:
            for beta in FIT_GRID["hub_weight"]:
                calibration = replace(tag_set.calibration, label_weight=w, hub_weight=beta, threshold=0.0)
                scores = decision_scores(x, tag_set.label_vectors, tag_set.background_vectors, mask, calibration,
                                         hub=hub)[:, column]
                t, best = best_shift(scores, y, len(classes))
                rows.append({"synonym_cosine": cut, "label_weight": w, "hub_weight": beta, "t": round(t, 3),
                             **{k: best[k] for k in ("precision", "recall", "no_tag")}})
                log(json.dumps(rows[-1]))
    best = max(rows, key=lambda r: r["precision"])
    shipped = FITTED.get(encoder.model_id)
    same_hub = bool(shipped and shipped.hub and np.allclose(hub_vector(shipped.hub), hub, atol=1e-5))
    return {"grid": rows, "best": best, "shipped_hub_is_this_mean": same_hub}


def examples(args, encoder) -> dict:
    """The issue's case: examples/photos plus Caltech photos, four labels alone."""
    from retriever.tags import make_tag_set, score_tags

    xe, pe = encoded(args.examples, args.cache)
    xt, pt = encoded(args.test, args.cache)
    cls = [Path(p).parent.name for p in pt]
    rng = np.random.default_rng(0)
    pick = [int(rng.choice([i for i, c in enumerate(cls) if c == "airplanes"]))]
    pick += rng.choice([i for i, c in enumerate(cls) if c == "sunflower"], 4, replace=False).tolist()
    others = [i for i, c in enumerate(cls) if c not in ("airplanes", "sunflower")]
    pick += rng.choice(others, 24, replace=False).tolist()
    x = np.concatenate([xe, xt[pick]])
    paths = pe + [pt[i] for i in pick]
    tag_set = make_tag_set(encoder, EXAMPLE_LABELS, only=True, cache_dir=args.cache / "model-cache")
    conf = score_tags(x, tag_set)
    tagged = {label: [f"{Path(paths[i]).parent.name}/{Path(paths[i]).name}" for i in np.nonzero(conf[:, c] >= 0.5)[0]]
              for c, label in enumerate(EXAMPLE_LABELS)}
    names = [f"{Path(p).parent.name}/{Path(p).name}" for p in paths]
    return {
        "photos": len(paths),
        "tagged": tagged,
        "sunflower_cat": sum("sunflower/" in n for n in tagged["cat"]),
        "airplane_on_non_airplane": sum(not n.startswith("airplanes/") for n in tagged["airplane"]),
        "no_tag": sum(not (conf[i] >= 0.5).any() for i in range(len(names))),
    }


class RandomTextEncoder:
    """Label texts -> seeded random unit vectors: the speed run needs no model."""

    def __init__(self, model_id: str, dim: int):
        self.model_id, self.dim = model_id, dim

    def embed_texts(self, texts):
        out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def speed(n: int, n_labels: int = 500, dim: int = 704) -> dict:
    from retriever.encoders import ModelSpec
    from retriever.index import Index
    from retriever.tags import tag_index

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        index = Index.create(Path(tmp) / "home", "speed", ModelSpec(name="offline"), "synthetic/v1", dim)
        with index:
            index.acquire_lock()
            log(f"storing {n:,} synthetic vectors ...")
            for start in range(0, n, 10_000):
                m = min(10_000, n - start)
                v = rng.normal(size=(m, dim)).astype(np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                index.catalog.write_batch([
                    {"path": f"/synthetic/{start + i}.jpg", "frame_ms": None, "size": 1, "mtime_ns": 1,
                     "fingerprint": f"f{start + i}", "status": "indexed", "vector": v[i]} for i in range(m)])
            labels = [f"label {i}" for i in range(n_labels)]
            encoder = RandomTextEncoder("synthetic/v1", dim)
            t0 = time.perf_counter()
            run = tag_index(index, labels=labels, only=True, encoder=encoder, cache_dir=Path(tmp) / "cache")
            seconds = time.perf_counter() - t0
    return {"images": n, "labels": n_labels, "background": 384, "dim": dim, "seconds": round(seconds, 2),
            "images_per_s": round(n / seconds), "scored": run.scored}


# -- main -------------------------------------------------------------------------------------------


def split_arguments(parser: argparse.ArgumentParser) -> None:
    """--train, --tune (fit on these), --test, --distractors (report on these): the shared datasets."""
    parser.add_argument("--train", type=Path, default=DATASETS / "caltech101-train")
    parser.add_argument("--tune", type=Path, default=DATASETS / "distractors-tune")
    parser.add_argument("--test", type=Path, default=DATASETS / "caltech101-test")
    parser.add_argument("--distractors", type=Path, default=DATASETS / "distractors-test")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split_arguments(parser)
    parser.add_argument("--examples", type=Path, default=REPO / "examples" / "photos")
    parser.add_argument("--cache", type=Path, default=None, help="Where the encoded splits are kept.")
    parser.add_argument("--fit", action="store_true", help="Fit the threshold on train + tune instead.")
    parser.add_argument("--fit-rule", action="store_true",
                        help="Fit the rule's constants (synonym cut-off, w, beta, t) on train + tune instead.")
    parser.add_argument("--speed-n", type=int, default=100_000)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    if args.cache is None:
        args.cache = Path(tempfile.mkdtemp(prefix="retriever-tags-"))
    args.cache.mkdir(parents=True, exist_ok=True)

    from retriever.encoders import ModelSpec, create_encoder

    encoder = create_encoder(ModelSpec(name="offline", device="cpu"))
    classes = sorted(p.name for p in args.test.iterdir() if p.is_dir())
    names = [class_query_name(c) for c in classes]
    if args.fit:
        print(json.dumps({"benchmark": "tags-fit", "model": encoder.model_id, **fit(args, encoder, classes, names)}))
        return 0
    if args.fit_rule:
        out = fit_rule(args, encoder, classes, names)
        print(json.dumps({"benchmark": "tags-fit-rule", "model": encoder.model_id, **out}))
        print(f"\n{'synonyms':>9}{'w':>6}{'beta':>6}{'t':>9}{'P':>8}{'R':>8}{'no tag':>8}   (train + tune)")
        for r in out["grid"]:
            mark = "  <- best" if r is out["best"] else ""
            print(f"{r['synonym_cosine']:>9}{r['label_weight']:>6}{r['hub_weight']:>6}{r['t']:>9.3f}{r['precision']:>8.3f}"
                  f"{r['recall']:>8.3f}{r['no_tag']:>8.3f}{mark}")
        print(f"shipped hub vector = this mean: {out['shipped_hub_is_this_mean']}")
        return 0

    q = quality(args, encoder, classes, names)
    ex = examples(args, encoder)
    sp = None if args.skip_speed else speed(args.speed_n)
    together, alone = q["together"], q["alone"]
    summary = {
        "benchmark": "tags", "model": encoder.model_id, "rule": q["calibration"].name,
        "calibration": {k: v for k, v in vars(q["calibration"]).items() if k != "name"},
        "draws": N_DRAWS, "labels_per_draw": N_LABELS,
        **{k: together[k] for k in ("precision", "recall", "no_tag", "silent")},
        "one_label": {k: alone[k] for k in ("precision", "recall", "no_tag", "silent")},
        "one_label_same_decisions": q["same_decisions"],
        "ceiling": q["ceiling"],
        "targets_met": together["precision"] >= TARGETS["precision"] and together["recall"] >= TARGETS["recall"]
                       and together["no_tag"] >= TARGETS["no_tag"],
        "vocabulary": q["vocabulary"],
        "examples": {k: ex[k] for k in ("photos", "sunflower_cat", "airplane_on_non_airplane", "no_tag")},
        "speed": sp,
    }
    print(json.dumps(summary), flush=True)

    print(f"\ntags, {encoder.model_id}: {N_DRAWS} draws of {N_LABELS} Caltech-101 test classes + "
          f"{q['n_distractors']} distractors")
    print(f"{'':24}{'precision':>10}{'recall':>8}{'no tag':>8}{'silent':>8}")
    for name, r in (("20 labels together", together), ("one label at a time", alone)):
        print(f"{name:24}{r['precision']:>10.3f}{r['recall']:>8.3f}{r['no_tag']:>8.3f}{r['silent']:>8.3f}")
    c = q["ceiling"]
    print(f"{'hindsight ceiling':24}{c['precision_at_recall_0.5']:>10.3f}{0.5:>8.3f}{'':>8}{'':>8}   mAP {c['map']:.3f}")
    print(f"targets (P >= 0.6 at R >= 0.5, no tag >= 0.8): {'met' if summary['targets_met'] else 'NOT met'}")

    print(f"\nper class (mean over the draws it is in; distractors: of {q['n_distractors']} tagged with it)")
    print(f"{'class':22}{'draws':>6}{'precision':>10}{'recall':>8}{'tagged':>8}{'distractors':>12}")
    for c_i, cls in enumerate(classes):
        row = together["per_class"][c_i]
        if not row["r"]:
            continue
        p = f"{np.mean(row['p']):.3f}" if row["p"] else "-"
        print(f"{cls:22}{len(row['r']):>6}{p:>10}{np.mean(row['r']):>8.3f}{np.mean(row['tagged']):>8.1f}"
              f"{int(together['distractors_tagged'][c_i]):>12}")

    v = q["vocabulary"]
    print(f"\nbuilt-in vocabulary ({v['labels']} labels) on the test photos: {v['tags_per_photo']} tags a photo, "
          f"{v['tags_per_distractor']} a distractor, {v['photos_without_tag']:.1%} of photos with none")

    print(f"\nexamples: {ex['photos']} photos (examples/photos + 29 Caltech test photos), labels "
          f"{', '.join(EXAMPLE_LABELS)} (--only); {ex['no_tag']} photos get no tag")
    for label, got in ex["tagged"].items():
        print(f"  {label:9} {len(got):>2}  {', '.join(got)}")
    if sp:
        print(f"\nspeed: {sp['images']:,} stored vectors x {sp['labels']} labels (+{sp['background']} background): "
              f"{sp['seconds']:.1f} s, {sp['images_per_s']:,} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
