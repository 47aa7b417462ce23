"""Filtered search: where the IDSelector should give way to over-fetching.

Both strategies of retriever.search return the best k among the ids a filter allows:
  selector   FAISS scores only the allowed ids (IDSelectorBatch inside the scan);
  overfetch  an unfiltered search for ~k / fraction results, keep those allowed, double until k.
For each fraction of the index a filter lets through, both are timed on the same queries, with
allowed ids drawn two ways: at random (a camera, a date range: unrelated to the content), and
"against the query" (the allowed ids are the images least like the query: the worst case for
over-fetching, which must then rank most of the index). The crossover sets
retriever.search.SELECTOR_MAX_FRACTION.

    python benchmarks/filters.py                      # 100,000 x 512, exact (IDMap2,Flat)
    python benchmarks/filters.py --n 300000 --dim 704

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FRACTIONS = (0.0005, 0.002, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def clustered(n: int, dim: int, seed: int, clusters: int = 1000) -> np.ndarray:
    """Unit vectors around random centres (image embeddings are clustered, not isotropic)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        x = centres[rng.integers(0, clusters, m)] + rng.normal(scale=0.6 / np.sqrt(dim) * 2, size=(m, dim))
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed(fn, repeat: int) -> tuple[float, object]:
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors in the index")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=20, help="queries per fraction and draw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", default="flat", help="vector index kind: flat, or ivf-sq8 (built as optimize builds it)")
    ap.add_argument("--threads", type=int, default=0, help="faiss.omp_set_num_threads (0: faiss's default)")
    args = ap.parse_args(argv)

    import faiss

    from retriever import search
    from retriever.vectors import VectorIndex

    log = lambda msg: print(f"[filters] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"{args.n} x {args.dim} clustered vectors ...")
    data = clustered(args.n, args.dim, args.seed)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.kind == "flat":
        vectors = VectorIndex(args.dim)
        vectors.add(ids, data)
    else:
        from retriever.vectors import build_tuned

        log(f"building {args.kind} ...")
        vectors, _ = build_tuned(args.dim, lambda: iter([(ids, data)]), args.n, kind=args.kind)
    rng = np.random.default_rng(args.seed + 1)
    queries = clustered(args.queries, args.dim, args.seed + 2)
    queries += 0.3 * rng.normal(size=args.dim).astype(np.float32) / np.sqrt(args.dim) * 4  # a modality gap
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    t0 = time.perf_counter()
    for q in queries:
        vectors.search(q[None, :], args.k)
    unfiltered_ms = (time.perf_counter() - t0) / len(queries) * 1000

    rows = []
    for fraction in FRACTIONS:
        m = max(args.k, int(round(fraction * args.n)))
        for draw in ("random", "against"):
            sel_ms, over_ms, fetches, agree = [], [], [], 0
            for qi, q in enumerate(queries):
                q2 = q[None, :]
                if draw == "random":
                    allowed = np.sort(rng.choice(ids, size=m, replace=False))
                else:
                    order = np.argsort(data @ q)  # least similar first
                    allowed = np.sort(ids[order[:m]])
                t_sel, got_sel = timed(lambda: search.search_selector(vectors, q2, args.k, allowed), 3)
                calls = []
                original = vectors.search

                def counting(*a, **kw):
                    calls.append(a[1])
                    return original(*a, **kw)

                vectors.search = counting
                try:
                    t_over, got_over = timed(lambda: search.search_overfetch(vectors, q2, args.k, allowed), 3)
                finally:
                    vectors.search = original
                sel_ms.append(t_sel * 1000)
                over_ms.append(t_over * 1000)
                fetches.append(max(calls) if calls else 0)
                agree += [i for _, i in got_sel] == [i for _, i in got_over]
            rows.append({
                "fraction": fraction, "allowed": m, "draw": draw,
                "selector_ms_p50": round(statistics.median(sel_ms), 3),
                "overfetch_ms_p50": round(statistics.median(over_ms), 3),
                "overfetch_deepest_fetch_p50": int(statistics.median(fetches)),
                "same_results": f"{agree}/{len(queries)}",
            })
            log(f"fraction {fraction:<7} {draw:<8} selector {rows[-1]['selector_ms_p50']:8.2f} ms   "
                f"overfetch {rows[-1]['overfetch_ms_p50']:8.2f} ms")

    def crossover(draw: str) -> float | None:
        """The smallest fraction from which over-fetching is at least as fast, staying so."""
        cands = [r for r in rows if r["draw"] == draw]
        for i, r in enumerate(cands):
            if all(c["overfetch_ms_p50"] <= c["selector_ms_p50"] for c in cands[i:]):
                return r["fraction"]
        return None

    result = {
        "benchmark": "filters",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n": args.n, "dim": args.dim, "k": args.k, "queries": args.queries, "index": args.kind, "factory": getattr(vectors, "factory", None),
        "nprobe": getattr(vectors, "nprobe", None),
        "unfiltered_ms": round(unfiltered_ms, 3),
        "rows": rows,
        "crossover_random": crossover("random"),
        "crossover_against": crossover("against"),
        "selector_max_fraction_in_code": search.SELECTOR_MAX_FRACTION,
        "env": {"python": platform.python_version(), "faiss": faiss.__version__, "numpy": np.__version__,
                "cpu_count": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                "loadavg_1m": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(result))
    print()
    print(f"{args.n:,} x {args.dim} vectors, {args.kind} ({result['factory']}, nprobe {result['nprobe']}), k={args.k}; "
          f"unfiltered search {unfiltered_ms:.2f} ms")
    print(f"{'fraction allowed':>16}  {'allowed ids':>11}  {'draw':<8}  {'selector ms':>11}  {'overfetch ms':>12}  "
          f"{'fetched':>10}  same")
    for r in rows:
        print(f"{r['fraction']:>16}  {r['allowed']:>11,}  {r['draw']:<8}  {r['selector_ms_p50']:>11.2f}  "
              f"{r['overfetch_ms_p50']:>12.2f}  {r['overfetch_deepest_fetch_p50']:>10,}  {r['same_results']}")
    print(f"over-fetch is as fast from: random ids {result['crossover_random']}, ids against the query "
          f"{result['crossover_against']}; SELECTOR_MAX_FRACTION = {search.SELECTOR_MAX_FRACTION}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
