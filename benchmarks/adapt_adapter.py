"""The collection adapter of `retriever adapt` (retriever/adapter.py): quality and speed, offline
encoder. Called by benchmarks/adapt.py (measure); runs alone too:

    python benchmarks/adapt_adapter.py --cache /tmp/adapt-cache          # report, the library's defaults
    python benchmarks/adapt_adapter.py --cache /tmp/adapt-cache --fit    # choose them on train, then report
    python benchmarks/adapt_adapter.py --cache /tmp/adapt-cache --fit --alternatives   # + the rivals (torch)

Report (issue 20): the adapter is fitted from 51 labels, the first 51 Caltech-101 classes in
sorted folder order, each the class name (quality.py's class_query_name) with its 30
caltech101-train photos; the collection's mean (the fit centres on it) is that of caltech101-train
+ distractors-tune. Each of the 101 classes then queries caltech101-test + distractors-test with
"a photo of a {class}" (quality.py's query), ranked with and without the adapter: mAP on the 51
fitted classes (target >= 0.65) and on the 50 others (target: within 0.02 of zero-shot), also
with the bare class name as the query. Image -> image P@10 (caltech101-test, each photo queries
the others) with the map applied to the image query and without. Speed: the closed-form fit; a
text search through retriever.search.Searcher on the encoded test split (query embedded, ranked,
hits read), adapted and not, interleaved in one run; the `retriever adapt` library path
(fit_index with --folders-as-labels, held-out check included) on a copy of the train index.

--fit (caltech101-train + distractors-tune only): class-held-out cross-validation. Three seeded
draws split the 101 classes into 51 fitted and 50 held out; each fitted class gives its first 20
photos to the fit; every class's last 10 photos, with distractors-tune, are ranked. Chosen: the
parameters with the best fitted-class mAP whose held-out classes lose at most HELD_OUT_MARGIN.

Prints FIRST one JSON line, THEN readable tables; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from quality import QUERY_TEMPLATE, class_query_name
from tags import encoded, split_arguments

from retriever.adapter import (
    DEFAULT_PARAMS,
    Adapter,
    AdapterParams,
    anchor_texts,
    average_precision,
    fit_labels,
    label_text_rows,
)

N_FITTED = 51
CV_SEEDS = (0, 1, 2)
CV_FIT_PHOTOS = 20  # per fitted class, the first in path order; the rest (10) are ranked
HELD_OUT_MARGIN = 0.01  # on train: half the 0.02, for the draw-to-draw spread
GRID = {"ridge": (0.01, 0.03, 0.1, 0.3), "anchor_weight": (0.3, 1.0, 3.0, 10.0),
        "strength": (0.5, 0.75, 1.0, 1.5, 2.0)}
TARGETS = {"fitted_map": 0.65, "held_out_drop": 0.02, "speed_ratio": 1.1}
K = 10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _split(folder: Path, cache: Path, classes: list[str] | None = None):
    """(vectors float32, class index per photo, classes, paths) of an encoded split."""
    vectors, paths = encoded(folder, cache)
    names = [Path(p).parent.name for p in paths]
    classes = classes or sorted(set(names))
    return vectors, np.array([classes.index(n) for n in names]), classes, paths


def _map(queries: np.ndarray, vectors: np.ndarray, y: np.ndarray, classes) -> float:
    scores = queries @ vectors.T
    return float(np.mean([average_precision(scores[k], y == c) for k, c in enumerate(classes)]))


def _p10(queries: np.ndarray, vectors: np.ndarray, y: np.ndarray) -> float:
    scores = queries @ vectors.T
    np.fill_diagonal(scores, -np.inf)  # the query itself is not an answer
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    return float((y[top] == y[:, None]).mean())


def _texts(encoder, classes: list[str]):
    names = [class_query_name(c) for c in classes]
    rows, row_label, bare = label_text_rows(encoder, names, [True] * len(names))
    prompted = encoder.embed_texts([QUERY_TEMPLATE.format(n) for n in names])
    return rows, row_label, bare, prompted / np.linalg.norm(prompted, axis=1, keepdims=True)


def _fit(rows, row_label, fitted, photos, mean, anchors, params) -> Adapter:
    use = np.isin(row_label, fitted)
    remap = {int(c): i for i, c in enumerate(fitted)}
    return Adapter(fit_labels(rows[use], np.array([remap[int(r)] for r in row_label[use]]), photos, mean, anchors,
                              params))


# -- choosing the parameters on train ------------------------------------------------------------


def cross_validate(cache: Path, train_dir: Path, distractors_tune: Path, encoder=None,
                   alternatives: bool = False) -> dict:
    """The --fit protocol (module docstring) over GRID -> {"chosen", "zero_shot", "table", ...}."""
    encoder = encoder or _encoder()
    x, y, classes, _ = _split(train_dir, cache)
    xd, _ = encoded(distractors_tune, cache)
    rows, row_label, bare, queries = _texts(encoder, classes)
    anchors = anchor_texts(encoder.model_id, encoder, cache)
    order = np.zeros(len(y), int)
    for c in range(len(classes)):
        order[y == c] = np.arange((y == c).sum())
    fit_part = order < CV_FIT_PHOTOS
    ranked = np.concatenate([x[~fit_part], xd])
    ranked_y = np.concatenate([y[~fit_part], -np.ones(len(xd), int)])
    mean = np.concatenate([x[fit_part], xd]).mean(axis=0)
    draws = [np.random.default_rng(s).permutation(len(classes)) for s in CV_SEEDS]

    def score(make_queries) -> tuple[float, float, float]:
        """-> mAP of the fitted classes, of the held-out ones, of the held-out ones' bare names."""
        fitted_maps, held_maps, bare_maps = [], [], []
        for p in draws:
            fitted, held = np.sort(p[:N_FITTED]), np.sort(p[N_FITTED:])
            q, q_bare = make_queries(fitted, [x[fit_part & (y == c)] for c in fitted])
            fitted_maps.append(_map(q[fitted], ranked, ranked_y, fitted))
            held_maps.append(_map(q[held], ranked, ranked_y, held))
            bare_maps.append(_map(q_bare[held], ranked, ranked_y, held))
        return float(np.mean(fitted_maps)), float(np.mean(held_maps)), float(np.mean(bare_maps))

    def adapted(params):
        def make(fitted, photos):
            adapter = _fit(rows, row_label, fitted, photos, mean, anchors, params)
            return adapter.apply_many(queries), adapter.apply_many(bare)
        return make

    zero = score(lambda fitted, photos: (queries, bare))
    table = []
    for values in itertools.product(*GRID.values()):
        params = AdapterParams(**dict(zip(GRID, values)), shrink=DEFAULT_PARAMS.shrink)
        f, h, hb = score(adapted(params))
        table.append({**params.as_dict(), "fitted_map": round(f, 4), "held_out_map": round(h, 4),
                      "held_out_bare_map": round(hb, 4)})
    allowed = [r for r in table if r["held_out_map"] >= zero[1] - HELD_OUT_MARGIN
               and r["held_out_bare_map"] >= zero[2] - HELD_OUT_MARGIN] or table
    best = max(allowed, key=lambda r: r["fitted_map"])
    out = {"zero_shot": {"fitted_map": round(zero[0], 4), "held_out_map": round(zero[1], 4),
                         "held_out_bare_map": round(zero[2], 4)},
           "chosen": {k: best[k] for k in ("ridge", "anchor_weight", "strength", "shrink")},
           "chosen_cv": {k: best[k] for k in ("fitted_map", "held_out_map", "held_out_bare_map")}, "table": table}
    if alternatives:
        out["alternatives"] = _alternatives(score, rows, row_label, queries, bare, x, fit_part, y, xd, anchors)
    return out


def _alternatives(score, rows, row_label, queries, bare, x, fit_part, y, xd, anchors) -> dict:
    """The rivals, on the same protocol: plain ridge to the normalised means (no centring, no
    anchors), and residuals I + U V^T (rank 32) or I + D trained with InfoNCE over the collection
    plus a distillation loss holding the vocabulary's rankings (torch, fit time only)."""
    out = {}
    for ridge, strength in ((0.01, 1.0), (0.1, 0.5), (0.3, 0.5)):
        def plain(fitted, photos, q0, ridge=ridge, strength=strength):
            means = np.stack([p.mean(0) for p in photos])
            means /= np.linalg.norm(means, axis=1, keepdims=True)
            t = rows[np.isin(row_label, fitted)]
            lab = np.array([list(fitted).index(r) for r in row_label[np.isin(row_label, fitted)]])
            gram = t.T.astype(np.float64) @ t + ridge * np.eye(t.shape[1])
            w = np.linalg.solve(gram, t.T @ (strength * (means[lab] - t))).T
            q = q0 + q0 @ w.T
            return q / np.linalg.norm(q, axis=1, keepdims=True)
        out[f"plain ridge {ridge} x{strength}"] = score(lambda f, p, g=plain: (g(f, p, queries), g(f, p, bare)))
    try:
        import torch
    except ImportError:
        return out
    pool = np.concatenate([x[fit_part], xd])
    for rank, mu in ((32, 10.0), (0, 10.0)):
        def nce(fitted, photos, rank=rank, mu=mu):
            torch.manual_seed(0)
            X = torch.tensor(np.concatenate(photos + [pool[np.random.default_rng(0).choice(len(pool), 1000, False)]]))
            pos = torch.zeros(len(photos), len(X))
            start = 0
            for i, p in enumerate(photos):
                pos[i, start:start + len(p)] = 1
                start += len(p)
            t = torch.tensor(queries[fitted])
            anc = torch.tensor(anchors)
            p0 = torch.softmax(anc @ X.T / 0.05, 1)
            d = t.shape[1]
            if rank:
                u = torch.zeros(d, rank, requires_grad=True)
                v = (torch.randn(d, rank) / d ** 0.5).requires_grad_()
                params, amap = [u, v], (lambda q: q + (q @ v) @ u.T)
            else:
                m = torch.zeros(d, d, requires_grad=True)
                params, amap = [m], (lambda q: q + q @ m.T)
            opt = torch.optim.Adam(params, lr=1e-2)
            for _ in range(150):
                logits = torch.nn.functional.normalize(amap(t), dim=1) @ X.T / 0.05
                loss = (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(pos == 0, -1e9), 1)).mean()
                lpa = torch.log_softmax(torch.nn.functional.normalize(amap(anc), dim=1) @ X.T / 0.05, 1)
                loss = loss + mu * (p0 * (torch.log(p0 + 1e-12) - lpa)).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                return tuple(torch.nn.functional.normalize(amap(torch.tensor(q)), dim=1).numpy() for q in (queries, bare))
        log(f"alternative: InfoNCE rank {rank or 'full'} ...")
        out[f"InfoNCE {'rank ' + str(rank) if rank else 'full'} distill {mu:g}"] = score(nce)
    return {k: {"fitted_map": round(f, 4), "held_out_map": round(h, 4), "held_out_bare_map": round(hb, 4)}
            for k, (f, h, hb) in out.items()}


# -- the report ----------------------------------------------------------------------------------


def measure(cache: Path, train_dir: Path, test_dir: Path, distractors_tune: Path, distractors_test: Path,
            params: AdapterParams = DEFAULT_PARAMS, encoder=None, speed_rounds: int = 3) -> dict:
    """The issue's adapter figures (module docstring) as one dict."""
    encoder = encoder or _encoder()
    x, y, classes, _ = _split(train_dir, cache)
    xt, yt, _, _ = _split(test_dir, cache, classes)
    xd_tune, _ = encoded(distractors_tune, cache)
    xd_test, _ = encoded(distractors_test, cache)
    rows, row_label, bare, prompted = _texts(encoder, classes)
    anchors = anchor_texts(encoder.model_id, encoder, cache)
    fitted, held = np.arange(N_FITTED), np.arange(N_FITTED, len(classes))
    mean = np.concatenate([x, xd_tune]).mean(axis=0)
    started = time.perf_counter()
    adapter = _fit(rows, row_label, fitted, [x[y == c] for c in fitted], mean, anchors, params)
    fit_s = time.perf_counter() - started
    ranked = np.concatenate([xt, xd_test])
    ranked_y = np.concatenate([yt, -np.ones(len(xd_test), int)])
    out = {"fitted_classes": [classes[c] for c in fitted], "params": params.as_dict(), "fit_s": round(fit_s, 3)}
    for name, q in (("prompt", prompted), ("bare", bare)):
        adapted = adapter.apply_many(q)
        out[name] = {
            "zero_shot_fitted": _map(q[fitted], ranked, ranked_y, fitted),
            "adapted_fitted": _map(adapted[fitted], ranked, ranked_y, fitted),
            "zero_shot_held_out": _map(q[held], ranked, ranked_y, held),
            "adapted_held_out": _map(adapted[held], ranked, ranked_y, held),
            "zero_shot_all": _map(q, ranked, ranked_y, range(len(classes))),
            "zero_shot_all_test_only": _map(q, xt, yt, range(len(classes))),
        }
        out[name] = {k: round(v, 4) for k, v in out[name].items()}
    out["i2i_p10"] = round(_p10(xt, xt, yt), 4)
    out["i2i_p10_adapted"] = round(_p10(adapter.apply_many(xt), xt, yt), 4)
    p = out["prompt"]
    out["targets_met"] = {
        "fitted_map": p["adapted_fitted"] >= TARGETS["fitted_map"],
        "held_out": p["adapted_held_out"] >= p["zero_shot_held_out"] - TARGETS["held_out_drop"]}
    out["speed"] = _speed(cache / test_dir.name, adapter, [QUERY_TEMPLATE.format(class_query_name(c))
                                                           for c in classes], speed_rounds)
    out["targets_met"]["speed"] = out["speed"]["ratio"] <= TARGETS["speed_ratio"]
    out["library"] = _library_fit(cache / train_dir.name, encoder)
    return out


def _speed(home: Path, adapter: Adapter, queries: list[str], rounds: int) -> dict:
    """Per query, in one run: the text embedding, then the ranking (Searcher.by_vector: FAISS,
    hits read from the catalog) of that vector plain and through the adapter (the map timed with
    it), in alternating order so drift favours neither. A search is embedding + ranking. Times:
    medians over rounds x queries; ratios: the median of each query's own ratio. The map alone
    is timed too."""
    from retriever.adapter import adapt_query
    from retriever.index import Index
    from retriever.search import Searcher

    with Index.open(home, "default", read_only=True) as index:
        searcher = Searcher(index, device="cpu")
        embed = searcher.query_encoder.embed_texts
        for q in queries[:5]:  # warm: the encoder, the FAISS file, the catalog's pages
            searcher.by_vector(adapt_query(adapter, embed([q])[0]), 10)
        embeds, plain, adapted = [], [], []

        def timed(vector, use) -> float:
            t0 = time.perf_counter()
            searcher.by_vector(adapt_query(adapter if use else None, vector), 10)
            return time.perf_counter() - t0

        for n in range(rounds):
            for i, q in enumerate(queries):
                t0 = time.perf_counter()
                vector = embed([q])[0]
                embeds.append(time.perf_counter() - t0)
                first = (n + i) % 2 == 0
                a = timed(vector, first)
                b = timed(vector, not first)
                adapted.append(a if first else b)
                plain.append(b if first else a)
        vector = embed([queries[0]])[0]
        t0 = time.perf_counter()
        for _ in range(1000):
            adapter.apply(vector)
        apply_us = (time.perf_counter() - t0) * 1000
        count = len(index.vector_index())
    e, p, a = (float(np.median(v)) * 1000 for v in (embeds, plain, adapted))
    em, pl, ad = (np.asarray(v) for v in (embeds, plain, adapted))
    # per query, the pair's own ratio (a burst of load from another process hits both halves of a
    # pair, not one side of a median), then the median
    return {"collection": count, "queries": len(plain), "embed_ms": round(e, 3), "rank_plain_ms": round(p, 3),
            "rank_adapted_ms": round(a, 3), "plain_ms": round(e + p, 3), "adapted_ms": round(e + a, 3),
            "ratio": round(float(np.median((em + ad) / (em + pl))), 3),
            "rank_ratio": round(float(np.median(ad / pl)), 3), "apply_us": round(apply_us, 1)}


def _library_fit(train_home: Path, encoder) -> dict:
    """`retriever adapt --folders-as-labels` as the library runs it (labels read from the catalog,
    texts embedded, held-out check, files written) on a copy of the encoded train split's index."""
    from retriever.adapter import fit_index
    from retriever.index import Index

    with tempfile.TemporaryDirectory(prefix="retriever-adapt-") as tmp:
        shutil.copytree(train_home / "default", Path(tmp) / "default",
                        ignore=shutil.ignore_patterns("write.lock", "adapter.*"))
        with Index.open(Path(tmp), "default") as index:
            report = fit_index(index, encoder, sources=("folders",), cache_dir=train_home.parent)
    return {"labels": report.labels, "photos": report.photos, "seconds": round(report.seconds, 2),
            "check": report.check}


def _encoder():
    from retriever.encoders import ModelSpec, create_encoder

    return create_encoder(ModelSpec(name="offline", device="cpu"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split_arguments(parser)
    parser.add_argument("--cache", type=Path, default=None, help="Where the encoded splits are kept.")
    parser.add_argument("--fit", action="store_true", help="Choose the parameters on train first, report with them.")
    parser.add_argument("--alternatives", action="store_true", help="With --fit: also the rivals (InfoNCE: torch).")
    args = parser.parse_args(argv)
    if args.cache is None:
        args.cache = Path(tempfile.mkdtemp(prefix="retriever-adapt-"))
    args.cache.mkdir(parents=True, exist_ok=True)
    encoder = _encoder()
    params, cv = DEFAULT_PARAMS, None
    if args.fit:
        log("cross-validating on caltech101-train ...")
        cv = cross_validate(args.cache, args.train, args.tune, encoder, args.alternatives)
        params = AdapterParams(**cv["chosen"])
    log("measuring ...")
    out = measure(args.cache, args.train, args.test, args.tune, args.distractors, params, encoder)
    summary = {"benchmark": "adapt-adapter", "model": encoder.model_id,
               **{k: v for k, v in out.items() if k != "fitted_classes"}}
    if cv is not None:
        summary["cv"] = {k: v for k, v in cv.items() if k != "table"}
    print(json.dumps(summary), flush=True)

    p, b = out["prompt"], out["bare"]
    print(f"\nadapter, {encoder.model_id}: fitted on {N_FITTED} classes (first in sorted order) x 30 train photos; "
          f"ranked: caltech101-test + distractors-test")
    print(f"{'text -> image mAP':34}{'zero-shot':>10}{'adapted':>10}{'change':>9}")
    for name, r in (("'a photo of a {class}'", p), ("bare class name", b)):
        for group, zs, ad in (("fitted 51", "zero_shot_fitted", "adapted_fitted"),
                              ("held-out 50", "zero_shot_held_out", "adapted_held_out")):
            print(f"{name + ', ' + group:34}{r[zs]:>10.3f}{r[ad]:>10.3f}{r[ad] - r[zs]:>+9.3f}")
    print(f"zero-shot, all 101 classes: {p['zero_shot_all']:.3f} (test split alone: {p['zero_shot_all_test_only']:.3f})")
    print(f"image -> image P@10 (test): {out['i2i_p10']:.3f} plain, {out['i2i_p10_adapted']:.3f} with the map")
    s = out["speed"]
    print(f"speed: fit {out['fit_s']:.3f}s; a text search over {s['collection']} photos {s['plain_ms']:.2f} ms plain, "
          f"{s['adapted_ms']:.2f} ms adapted (x{s['ratio']:.3f}; embedding {s['embed_ms']:.2f} ms, ranking "
          f"{s['rank_plain_ms']:.2f} / {s['rank_adapted_ms']:.2f} ms, x{s['rank_ratio']:.3f}); the map alone "
          f"{s['apply_us']:.0f} us")
    lib = out["library"]
    print(f"library fit (--folders-as-labels, train index): {lib['labels']} labels, {lib['photos']} photos, "
          f"{lib['seconds']:.1f}s; its held-out check: {json.dumps(lib['check'])}")
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in out["targets_met"].items()))
    if cv is not None:
        z = cv["zero_shot"]
        print(f"\n--fit on train (3 draws 51/50; zero-shot fitted {z['fitted_map']:.3f}, held-out "
              f"{z['held_out_map']:.3f}, bare {z['held_out_bare_map']:.3f}); best 8 within {HELD_OUT_MARGIN} on "
              f"both held-outs:")
        allowed = [r for r in cv["table"] if r["held_out_map"] >= z["held_out_map"] - HELD_OUT_MARGIN
                   and r["held_out_bare_map"] >= z["held_out_bare_map"] - HELD_OUT_MARGIN]
        for r in sorted(allowed, key=lambda r: -r["fitted_map"])[:8]:
            print(f"  ridge {r['ridge']:<5} anchors {r['anchor_weight']:<5} strength {r['strength']:<5}"
                  f" fitted {r['fitted_map']:.3f}  held-out {r['held_out_map']:.3f} (bare {r['held_out_bare_map']:.3f})")
        for name, r in (cv.get("alternatives") or {}).items():
            print(f"  {name:34} fitted {r['fitted_map']:.3f}  held-out {r['held_out_map']:.3f}"
                  f" (bare {r['held_out_bare_map']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
