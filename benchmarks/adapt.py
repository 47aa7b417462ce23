"""Teaching retriever a collection's own concepts, measured against zero-shot (issue 20):
concepts from a few examples, relevance feedback, refit speed, and (benchmarks/adapt_adapter.py)
the collection adapter. Offline encoder. Prints one JSON line, then a table.

    python benchmarks/adapt.py --cache /tmp/adapt-cache            # report (~3 min the first time)
    python benchmarks/adapt.py --cache /tmp/adapt-cache --fit      # choose the rule's constants on train

Fit on one split, report on another:
* --fit: examples are drawn from the first 15 images (by file name) of each class of
  caltech101-train; the collection is the other 15 of every class plus distractors-tune. The
  constants of retriever/concept_fit.py (PARAMS: lam, background_weight, prototype) and
  concepts.PSEUDO_POSITIVES were chosen from this grid (best mean AP at 5 examples), then
  NEIGHBOURS (pool, k, weight: the re-scoring of a concept ranking's best photos by their
  neighbours; three draws) the same way, and the yes/no threshold as the lowest with precision
  >= 0.85 at 15 examples.
* report: examples are drawn from caltech101-train; the collection ranked and judged is
  caltech101-test + distractors-test (nothing of it is seen while fitting).

For each class and number of examples K (1, 5, 30; K = 30 is every train image of the class, one
draw; K = 1 and 5, three seeded draws): average precision over the collection of
  text  the class name as a text query ("a photo of a {name}"),
  mean  the mean of the examples' vectors,
  concept  retriever's concept (retriever.concepts.learn: the same code `concept add` runs),
           its ranking as `search concept:NAME` gives it (the best photos re-scored by their
           neighbours, concept_fit.smooth_by_neighbours); `linear`: the fitted rule alone,
and the concept's yes/no (precision, recall: a distractor said yes to is a false positive).
Relevance feedback: a concept from one example; three rounds in which a simulated user marks
the 10 best photos not yet marked (yes when of the class, else no) and the concept is refitted;
AP after each round. Speed: a refit with 100 examples in an index of 100,000 vectors (built with
benchmarks/scale.py's rows through the catalog's write path), and the --concept filter's range
search there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality import class_query_name  # noqa: E402
from tags import encoded, log  # noqa: E402

from retriever import concept_fit  # noqa: E402
from retriever.concept_fit import Background  # noqa: E402
from retriever.concepts import PSEUDO_POSITIVES, learn  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
KS = (1, 5, 30)
FEEDBACK_ROUNDS, FEEDBACK_MARKS = 3, 10
BACKGROUND = concept_fit.BACKGROUND_SIZE


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = relevant[order]
    if not hits.any():
        return 0.0
    ranks = np.flatnonzero(hits) + 1
    return float((np.arange(1, len(ranks) + 1) / ranks).mean())


def split(name: str, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(vectors, class of each (file order within a class), paths) of a folder-per-class split."""
    x, paths = encoded(DATA / name, cache)
    classes = np.array([Path(p).parent.name for p in paths])
    order = np.lexsort((np.array([Path(p).name for p in paths]), classes))
    return x[order], classes[order], [paths[i] for i in order]


def text_vectors(cache: Path, classes: list[str]) -> np.ndarray:
    path = cache / "class-text-vectors.npz"
    if path.exists():
        data = np.load(path)
        if list(data["classes"]) == classes:
            return data["vectors"]
    from retriever.encoders.offline import OfflineEncoder

    vectors = np.asarray(OfflineEncoder("cpu").embed_texts([f"a photo of a {class_query_name(c)}" for c in classes]),
                         dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.savez(path, classes=np.array(classes), vectors=vectors)
    return vectors


class Collection:
    """The vectors ranked and judged, their classes ('' for a distractor), and its background."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y
        rng = np.random.default_rng(0)
        sample = x[rng.choice(len(x), min(BACKGROUND, len(x)), replace=False)]
        self.background = Background.of(sample)

    def best(self, exclude: set[int] = frozenset()):
        """The `best(direction, k)` that retriever.concepts.learn asks for, over these vectors."""
        def best(direction: np.ndarray, k: int):
            scores = self.x @ direction
            if exclude:
                scores = scores.copy()
                scores[list(exclude)] = -np.inf
            top = np.argsort(-scores)[:k]
            return [int(i) for i in top], self.x[top]
        return best


def concept_scores(examples: np.ndarray, collection: Collection, params: dict | None, pseudo: int,
                   negatives: np.ndarray | None = None, exclude: set[int] = frozenset()):
    neg = np.zeros((0, examples.shape[1]), np.float32) if negatives is None else negatives
    fitted, _ = learn(examples, neg, collection.background, collection.best(exclude), params, pseudo)
    return fitted.scores(collection.x), fitted


def ranking(scores: np.ndarray, x: np.ndarray, neighbours: dict | None = None) -> np.ndarray:
    """A concept's ranking as `retriever search concept:NAME` gives it (retriever.search): its
    pool of best photos re-scored by their neighbours (concept_fit.smooth_by_neighbours, the
    library's code), the rest below them in their order. neighbours: NEIGHBOURS overridden."""
    nb = {**concept_fit.NEIGHBOURS, **(neighbours or {})}
    top = np.argsort(-scores)[:int(nb["pool"])]
    out = np.array(scores, dtype=np.float64)
    out[top] = concept_fit.smooth_by_neighbours(out[top], x[top], nb["k"], nb["weight"])
    return out


def episodes(pool_x, pool_y, collection: Collection, text: np.ndarray, classes: list[str], k: int, seeds,
             params=None, pseudo=PSEUDO_POSITIVES, first: int | None = None, neighbours: dict | None = None) -> dict:
    """Mean AP (text, mean, concept) and the concept's yes/no precision / recall over classes;
    `linear`: the AP of the concept's linear rule alone, without the neighbours' re-scoring."""
    out = {"text": [], "mean": [], "concept": [], "linear": [], "precision": [], "recall": [], "said_yes": []}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for ci, c in enumerate(classes):
            pool = np.flatnonzero(pool_y == c)
            if first is not None:
                pool = pool[:first]
            if len(pool) < k:
                continue
            ex = pool_x[rng.choice(pool, k, replace=False)]
            relevant = collection.y == c
            scores, fitted = concept_scores(ex, collection, params, pseudo)
            out["text"].append(average_precision(collection.x @ text[ci], relevant))
            out["mean"].append(average_precision(collection.x @ ex.mean(axis=0), relevant))
            out["concept"].append(average_precision(ranking(scores, collection.x, neighbours), relevant))
            out["linear"].append(average_precision(scores, relevant))
            yes = scores >= fitted.threshold
            out["precision"].append(float((yes & relevant).sum() / max(yes.sum(), 1)))
            out["recall"].append(float((yes & relevant).sum() / max(relevant.sum(), 1)))
            out["said_yes"].append(int(yes.sum()))
    return {key: round(float(np.mean(v)), 4) for key, v in out.items()}


def feedback(pool_x, pool_y, collection: Collection, classes: list[str], seed: int = 0) -> list[float]:
    """Mean AP over classes: one example, then after each round of FEEDBACK_MARKS marks."""
    rng = np.random.default_rng(seed)
    per_round = [[] for _ in range(FEEDBACK_ROUNDS + 1)]
    for c in classes:
        relevant = collection.y == c
        pos = [pool_x[rng.choice(np.flatnonzero(pool_y == c))]]
        neg: list[np.ndarray] = []
        marked: set[int] = set()
        for r in range(FEEDBACK_ROUNDS + 1):
            scores, _ = concept_scores(np.array(pos), collection, None, PSEUDO_POSITIVES,
                                       np.array(neg).reshape(-1, collection.x.shape[1]), exclude=marked)
            scores = ranking(scores, collection.x)
            per_round[r].append(average_precision(scores, relevant))
            if r == FEEDBACK_ROUNDS:
                break
            order = [int(i) for i in np.argsort(-scores) if int(i) not in marked][:FEEDBACK_MARKS]
            for i in order:
                marked.add(i)
                (pos if relevant[i] else neg).append(collection.x[i])
    return [round(float(np.mean(v)), 4) for v in per_round]


def speed(n: int = 100_000, examples: int = 100, repeat: int = 7) -> dict:
    """A refit with `examples` examples in an index of n vectors (retriever.concepts.add_examples,
    as `concept add --id` runs it), and the --concept filter's range search."""
    import scale
    from retriever.concepts import accepted_ids, add_examples, concept_vector
    from retriever.index import Index
    from retriever.query import CONCEPT, Term
    from retriever.search import Searcher

    with tempfile.TemporaryDirectory(prefix="retriever-adapt-speed-") as tmp:
        log(f"building an index of {n:,} vectors ...")
        scale.build(Path(tmp), scale.Rows(n), lambda m: None)
        index = Index.open(Path(tmp), "scale", read_only=True)
        try:
            vectors = index.vector_index()
            ids = np.random.default_rng(1).choice(np.arange(1, n + 1), examples, replace=False)
            cold = time.perf_counter()
            add_examples(index, "speed", ids=ids[: examples // 2].tolist(), vectors=vectors)
            cold_s = time.perf_counter() - cold
            times, fit_ms = [], []
            for i in range(repeat):  # each a refit over every example, the new ones marked "no" / "yes"
                t = time.perf_counter()
                info = add_examples(index, "speed", ids=ids[examples // 2:].tolist() if i % 2 == 0 else [],
                                    not_ids=[] if i % 2 == 0 else ids[examples // 2:].tolist(), vectors=vectors)
                times.append(time.perf_counter() - t)
                fit_ms.append(info["fit_ms"])
            concept = concept_vector(index, "speed")
            filter_ms = []
            for _ in range(repeat):
                t = time.perf_counter()
                accepted = accepted_ids(vectors, concept)
                filter_ms.append((time.perf_counter() - t) * 1000)
            searcher = Searcher(index)
            searcher.by_vector(concept.vector, 10)  # loads its FAISS index
            search_ms: dict[str, list[float]] = {"concept": [], "plain": []}
            for _ in range(repeat):  # `search concept:speed` (re-scored by neighbours) against its bare vector
                t = time.perf_counter()
                searcher.query([Term(CONCEPT, "speed", 1.0)], 10)
                search_ms["concept"].append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                searcher.by_vector(concept.vector, 10)
                search_ms["plain"].append((time.perf_counter() - t) * 1000)
        finally:
            index.close()
    return {"vectors": n, "examples": examples, "refit_ms_p50": round(statistics.median(times) * 1000, 1),
            "fit_ms_p50": round(statistics.median(fit_ms), 1), "first_refit_ms": round(cold_s * 1000, 1),
            "filter_ms_p50": round(statistics.median(filter_ms), 1), "filter_accepted": int(len(accepted)),
            "search_ms_p50": round(statistics.median(search_ms["concept"]), 1),
            "plain_search_ms_p50": round(statistics.median(search_ms["plain"]), 1)}


def fit_grid(cache: Path) -> dict:
    tx, ty, _ = split("caltech101-train", cache)
    dx, _ = encoded(DATA / "distractors-tune", cache)
    classes = sorted(set(ty.tolist()))
    text = text_vectors(cache, classes)
    later = np.zeros(len(ty), bool)  # the last 15 of each class: the collection
    for c in classes:
        later[np.flatnonzero(ty == c)[15:]] = True
    collection = Collection(np.vstack([tx[later], dx]), np.concatenate([ty[later], np.full(len(dx), "")]))
    rows = []
    for lam in (0.003, 0.01, 0.03):
        for bw in (2.0, 4.0, 8.0):
            for prototype in (0.0, 0.5, 1.0):
                params = {"lam": lam, "background_weight": bw, "prototype": prototype}
                r = episodes(tx, ty, collection, text, classes, 5, [0], params, PSEUDO_POSITIVES, first=15)
                rows.append({**params, "pseudo": PSEUDO_POSITIVES, **r})
                log(json.dumps(rows[-1]))
    best = max(rows, key=lambda r: r["concept"])
    params = {"lam": best["lam"], "background_weight": best["background_weight"], "prototype": best["prototype"]}
    for pseudo in (0, 3, 10):  # the number of pseudo-positives, at the best constants
        r = episodes(tx, ty, collection, text, classes, 5, [0], params, pseudo, first=15)
        rows.append({**params, "pseudo": pseudo, **r})
        log(json.dumps(rows[-1]))
    neighbours = []  # the re-scoring of a concept ranking's best photos by their neighbours
    for pool in (100, 200, 400):
        for nk in (3, 5, 10):
            for weight in (0.0, 0.5, 1.0, 2.0):
                nb = {"pool": pool, "k": nk, "weight": weight}
                r = episodes(tx, ty, collection, text, classes, 5, [0, 1, 2], params, best["pseudo"], first=15,
                             neighbours=nb)  # three draws: the steps here are small
                neighbours.append({**nb, "concept": r["concept"], "linear": r["linear"]})
                log(json.dumps(neighbours[-1]))
    best_neighbours = max(neighbours, key=lambda r: r["concept"])
    thresholds = []
    for t in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5):
        r = episodes(tx, ty, collection, text, classes, 15, [0], {**params, "threshold": t}, best["pseudo"], first=15)
        thresholds.append({"threshold": t, "precision": r["precision"], "recall": r["recall"]})
        log(json.dumps(thresholds[-1]))
    chosen = min((t for t in thresholds if t["precision"] >= 0.85), key=lambda t: t["threshold"], default=None)
    return {"benchmark": "adapt-fit", "grid_k5": rows, "best": best, "neighbours_k5": neighbours,
            "best_neighbours": best_neighbours, "thresholds_k15": thresholds, "chosen_threshold": chosen,
            "name_prior": name_prior(tx, ty, collection, text, classes, params)}


def name_prior(tx, ty, collection: Collection, text: np.ndarray, classes: list[str], params: dict) -> dict:
    """The class name's text vector as a prior (WiSE-FT mixing, `mix` z-units, gated by the
    name's AUC on the examples), against none, and against a wrong name (another class's):
    mean AP at 1 and 5 examples, no pseudo-positives (train split)."""
    out = {}
    for k in (1, 5):
        rng = np.random.default_rng(0)
        aps: dict[str, list[float]] = {"none": [], "name": [], "wrong_name": []}
        for ci, c in enumerate(classes):
            ex = tx[rng.choice(np.flatnonzero(ty == c)[:15], k, replace=False)]
            relevant = collection.y == c
            sample = collection.x[:BACKGROUND]
            for key, prior in (("none", None), ("name", text[ci]), ("wrong_name", text[(ci + 37) % len(classes)])):
                fitted = concept_fit.fit(ex, None, collection.background, sample, prior, {**params, "mix": 0.5})
                aps[key].append(average_precision(fitted.scores(collection.x), relevant))
        out[str(k)] = {key: round(float(np.mean(v)), 4) for key, v in aps.items()}
        log(f"name prior, K={k}: {out[str(k)]}")
    return out


def report(cache: Path, with_speed: bool, with_adapter: bool) -> dict:
    tx, ty, _ = split("caltech101-train", cache)
    cx, cy, _ = split("caltech101-test", cache)
    dx, _ = encoded(DATA / "distractors-test", cache)
    classes = sorted(set(ty.tolist()))
    text = text_vectors(cache, classes)
    collection = Collection(np.vstack([cx, dx]), np.concatenate([cy, np.full(len(dx), "")]))
    out: dict = {"benchmark": "adapt", "params": {**concept_fit.PARAMS, "pseudo_positives": PSEUDO_POSITIVES,
                                                 "neighbours": concept_fit.NEIGHBOURS},
                 "collection": {"photos": int(len(collection.y)), "distractors": int(len(dx)), "classes": len(classes)},
                 "concepts": {}}
    for k in KS:
        t = time.perf_counter()
        out["concepts"][str(k)] = episodes(tx, ty, collection, text, classes, k, [0] if k == 30 else [0, 1, 2])
        log(f"K={k}: {out['concepts'][str(k)]} ({time.perf_counter() - t:.0f} s)")
    c5 = out["concepts"]["5"]
    out["gain_at_5"] = round(c5["concept"] - max(c5["text"], c5["mean"]), 4)
    out["feedback_ap"] = feedback(tx, ty, collection, classes)
    log(f"feedback: {out['feedback_ap']}")
    if with_speed:
        out["speed"] = speed()
        log(f"speed: {out['speed']}")
    if with_adapter:
        try:
            import adapt_adapter
        except ImportError as exc:
            out["adapter"] = {"error": f"benchmarks/adapt_adapter.py: {exc}"}
        else:
            out["adapter"] = adapt_adapter.measure(cache, DATA / "caltech101-train", DATA / "caltech101-test",
                                                   DATA / "distractors-tune", DATA / "distractors-test")
    return out


def table(out: dict) -> str:
    lines = ["examples  AP text  AP mean  AP concept  (linear alone)   yes/no P   R     "
             "(caltech101-test + distractors-test)"]
    for k, r in out["concepts"].items():
        lines.append(f"{k:>8}  {r['text']:7.3f}  {r['mean']:7.3f}  {r['concept']:10.3f}  ({r['linear']:.3f})         "
                     f"{r['precision']:8.3f}  {r['recall']:.3f}")
    lines.append(f"gain at 5 examples over the better of text and mean: {out['gain_at_5']:+.3f} (target +0.05)")
    r30 = out["concepts"].get("30", {})
    if r30:
        ok = r30["precision"] >= 0.8 and r30["recall"] >= 0.6
        lines.append(f"yes/no at 30 examples: P {r30['precision']:.3f} R {r30['recall']:.3f} "
                     f"(target P >= 0.8 at R >= 0.6: {'PASS' if ok else 'FAIL'})")
    lines.append("relevance feedback (1 example, then 3 rounds of 10 marks): AP " + " -> ".join(
        f"{v:.3f}" for v in out["feedback_ap"]))
    if "speed" in out:
        s = out["speed"]
        lines.append(f"refit, {s['examples']} examples over {s['vectors']:,} vectors: p50 {s['refit_ms_p50']} ms "
                     f"(fit alone {s['fit_ms_p50']} ms; first {s['first_refit_ms']} ms; target < 200 ms); "
                     f"--concept filter {s['filter_ms_p50']} ms; search concept:NAME {s['search_ms_p50']} ms "
                     f"(its vector alone, not re-scored: {s['plain_search_ms_p50']} ms)")
    a = out.get("adapter") or {}
    if "prompt" in a:
        p, sp = a["prompt"], a["speed"]
        lines.append(f"adapter, text -> image mAP: the {len(a['fitted_classes'])} fitted classes {p['zero_shot_fitted']:.3f}"
                     f" -> {p['adapted_fitted']:.3f} (target >= 0.65); the other classes {p['zero_shot_held_out']:.3f} -> "
                     f"{p['adapted_held_out']:.3f} (target: within 0.02); image -> image P@10 {a['i2i_p10']:.3f} -> "
                     f"{a['i2i_p10_adapted']:.3f}; adapted search {sp['ratio']:.2f}x the time of a plain one (target <= 1.1)")
    elif a:
        lines.append(f"adapter: {a}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "retriever-adapt-cache",
                        help="Where the encoded splits are kept between runs.")
    parser.add_argument("--fit", action="store_true", help="The grid on the train split (choose the constants).")
    parser.add_argument("--no-speed", action="store_true", help="Skip the 100,000-vector refit timing.")
    parser.add_argument("--no-adapter", action="store_true", help="Skip the adapter (benchmarks/adapt_adapter.py).")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.fit:
        out = fit_grid(args.cache)
        print(json.dumps(out))
        print(f"best at 5 examples (train): {out['best']}; neighbours: {out['best_neighbours']}; "
              f"threshold: {out['chosen_threshold']}")
        return 0
    out = report(args.cache, not args.no_speed, not args.no_adapter)
    printable = {k: v for k, v in out.items() if k != "adapter"}
    if "adapter" in out:
        printable["adapter"] = {k: v for k, v in out["adapter"].items() if k != "table"}
    print(json.dumps(printable))
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
