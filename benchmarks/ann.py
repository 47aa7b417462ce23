"""Approximate search at scale: the index `retriever optimize` builds, against exact search, same run.

    python benchmarks/ann.py                     # 1,000,000 vectors of dim 512 (about 8 minutes on 2 cores)
    python benchmarks/ann.py --n 2000000         # the second point for the 10M extrapolation
    python benchmarks/ann.py --sweep-only        # where exact search stops being fast (sets the threshold)
    python benchmarks/ann.py --n 300000 --kinds ivf-sq8,ivf-pq

Data: synthetic unit vectors that resemble image embeddings (see EmbeddingLike): clustered on the
sphere inside a cone (a shared mean direction, as CLIP image embeddings share one), 256 topics x
64 sub-clusters of uneven sizes, each a cloud of its own spread along its own 48 directions (a
low-dimensional manifold, not isotropic noise). Queries come from a shifted distribution: the
same clusters, noisier, plus an offset direction shared by every query, normalised, as text
embeddings sit apart from image embeddings in CLIP space (the modality gap): a query's best match
has cosine about 0.4, against about 0.6 between an image and its nearest neighbour.
Generated chunk by chunk from a seed; held once, in the exact index's own storage.

Measured, in one run:
  exact      IndexFlatIP over every vector (retriever's flat kind): ground truth for recall
             (top 10 of every query) and single-query latency.
  ivf-sq8    retriever.vectors.build_tuned: trained on a sample, nprobe chosen by its own
             held-out queries (perturbed stored vectors, not the benchmark's queries) for recall@10
             >= 0.95 + margin; then recall@10 on the benchmark's shifted queries against exact,
             single-query p50/p95 at 1 and 2 threads, filtered search (allowed = 0.01 % .. 10 %
             of the ids), bytes per vector (file; and RSS growth on loading it), build time
             (train + add + tune), and the recall/latency curve over nprobe.
  catalog    read rate of Catalog.iter_vectors (a real SQLite catalog of --catalog-rows rows): what
             `retriever optimize` adds to the build, reading the stored vectors twice.
  sweep      exact single-query p50 for N = 5k .. 100k at dim 512 and 704, 1 and 2 threads: the
             largest N at most 2 ms is the exact threshold (retriever.vectors.EXACT_MAX_FLOATS).

Prints FIRST one JSON line holding every figure, THEN a readable table; progress goes to stderr.
The load average is recorded at start and end: other processes on a 2-core machine move every
latency (a 2-thread search waits for a descheduled thread).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_RECALL = 0.95
TARGET_P50_MS = 2.0
TARGET_BYTES_PER_VECTOR = 700
TARGET_BUILD_S = 600
K = 10
CHUNK = 50_000


from benchmarks.speed import cpu_name, loadavg  # noqa: E402  (the same environment figures)


def log(msg: str) -> None:
    print(f"[ann] {msg}", file=sys.stderr, flush=True)


def load_rss_growth(path: Path) -> int:
    """Resident memory that loading the saved index adds to a fresh process (VectorIndex.load)."""
    code = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import faiss, numpy\n"
        "from retriever.vectors import VectorIndex\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "before = rss()\n"
        f"vi, _ = VectorIndex.load({str(path)!r})\n"
        "print(rss() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# -- data ----------------------------------------------------------------------------------------------


class EmbeddingLike:
    """Clustered unit vectors in a cone, and shifted queries; every chunk regenerated from the seed.

    x = normalise(0.8 mean + centre[c] + spread[c] * (48-d cloud in the cluster's own subspace)
                  + 0.5 * isotropic noise)
    centres: 256 topics x 64 sub-clusters (16,384, so IVF lists do not line up with them), a
    sub-cluster half-way between its topic and a random direction; cluster sizes uneven (Zipf
    0.6); spread[c] uniform in [1.0, 1.6]: tight and loose clusters. Embeddings lie near a
    low-dimensional manifold, not in isotropic noise: each cluster varies along 48 directions.
    q = normalise(0.8 mean + centre[c] + the same cloud + 1.2 * isotropic noise + 1.5 gap)."""

    TOPICS, SUB, SUBSPACE, BASES = 256, 64, 48, 64

    def __init__(self, dim: int, seed: int = 0):
        rng = np.random.default_rng([seed, 0])
        self.dim, self.seed = dim, seed
        self.mean = unit(rng.standard_normal((1, dim)))
        topics = unit(rng.standard_normal((self.TOPICS, dim)))
        n_centres = self.TOPICS * self.SUB
        self.centres = unit(np.repeat(topics, self.SUB, axis=0) + 0.5 * unit(rng.standard_normal((n_centres, dim))))
        self.spread = rng.uniform(1.0, 1.6, n_centres).astype(np.float32)
        weights = 1.0 / np.arange(1, n_centres + 1) ** 0.6
        self.weights = rng.permutation(weights / weights.sum())
        self.gap = unit(rng.standard_normal((1, dim)))
        # cluster c varies in subspace c % BASES (orthonormal rows): a pool, to keep memory small
        self.bases = np.stack([np.linalg.qr(rng.standard_normal((dim, self.SUBSPACE)))[0].T
                               for _ in range(self.BASES)]).astype(np.float32)

    def _cloud(self, rng, c: np.ndarray) -> np.ndarray:
        coef = rng.standard_normal((len(c), self.SUBSPACE), dtype=np.float32) / np.sqrt(self.SUBSPACE)
        out = np.empty((len(c), self.dim), np.float32)
        for b in range(self.BASES):
            rows = np.flatnonzero(c % self.BASES == b)
            out[rows] = coef[rows] @ self.bases[b]
        return out * self.spread[c][:, None]

    def chunk(self, i: int, size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, i])
        c = rng.choice(len(self.centres), size=size, p=self.weights)
        iso = rng.standard_normal((size, self.dim), dtype=np.float32) * (0.5 / np.sqrt(self.dim))
        return unit(0.8 * self.mean + self.centres[c] + self._cloud(rng, c) + iso)

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        for i, start in enumerate(range(0, n, CHUNK)):
            yield self.chunk(i, min(CHUNK, n - start))

    def queries(self, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2])
        c = rng.choice(len(self.centres), size=n, p=self.weights)
        iso = rng.standard_normal((n, self.dim), dtype=np.float32) * (1.2 / np.sqrt(self.dim))
        return unit(0.8 * self.mean + self.centres[c] + self._cloud(rng, c) + iso + 1.5 * self.gap)


# -- measuring ----------------------------------------------------------------------------------------


def single_query_ms(search: Callable[[np.ndarray], Any], queries: np.ndarray, n: int, threads: int) -> dict[str, float]:
    import faiss

    faiss.omp_set_num_threads(threads)
    for q in queries[:3]:  # warm-up
        search(q[None])
    times = []
    for i in range(n):
        q = queries[i % len(queries)][None]
        t = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p95": round(float(np.percentile(ms, 95)), 3), "n": n}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    from retriever.vectors import recall_at

    return round(recall_at(found, truth), 4)


def exact_index(data: EmbeddingLike, n: int):
    import faiss

    flat = faiss.IndexFlatIP(data.dim)
    for chunk in data.chunks(n):
        flat.add(chunk)
    return flat


def flat_view(flat, n: int, dim: int) -> np.ndarray:
    """The exact index's own storage as an (n, dim) array: no second copy."""
    import faiss

    return faiss.rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim)


def run_kind(kind: str, data: EmbeddingLike, n: int, flat, vectors: np.ndarray, queries: np.ndarray,
             truth: np.ndarray, args, work: Path) -> dict[str, Any]:
    import faiss

    from retriever.vectors import _allowed_selector, build_tuned, iter_array_chunks

    ids = np.arange(n, dtype=np.int64)
    faiss.omp_set_num_threads(args.threads)
    log(f"{kind}: building over {n:,} vectors (train, add, tune) ...")
    started = time.perf_counter()
    vi, report = build_tuned(data.dim, iter_array_chunks(ids, vectors, CHUNK), n, kind,
                             target_recall=TARGET_RECALL)
    wall = time.perf_counter() - started
    log(f"{kind}: {report.factory} nprobe {vi.nprobe} in {wall:.0f}s (train {report.train_s:.0f}s, "
        f"add {report.add_s:.0f}s, tune {report.tune_s:.0f}s)")

    _, found = vi.search(queries, K)
    rec = recall(found, truth)
    curve = []
    chosen = vi.nprobe
    for nprobe in sorted({max(1, chosen // 4), max(1, chosen // 2), chosen, chosen * 2, chosen * 4}):
        if nprobe > vi.nlist:
            continue
        vi.set_nprobe(nprobe)
        _, f = vi.search(queries, K)
        lat = single_query_ms(lambda q: vi.search(q, K), queries, args.latency_queries // 2, 1)
        curve.append({"nprobe": nprobe, "recall_at_10": recall(f, truth), "p50_ms_1t": lat["p50"]})
    vi.set_nprobe(chosen)

    latency = {f"{t}t": single_query_ms(lambda q: vi.search(q, K), queries, args.latency_queries, t) for t in (1, 2)}

    # filtered search: random allowed sets of several sizes, against exact search within them
    filtered = []
    rng = np.random.default_rng(3)
    faiss.omp_set_num_threads(args.threads)
    for frac in (0.0001, 0.001, 0.01, 0.1):
        allowed = np.sort(rng.choice(n, size=max(K + 5, int(n * frac)), replace=False)).astype(np.int64)
        keep: list[Any] = []
        sel, _ = _allowed_selector(allowed, keep)  # the selector retriever uses (a bitmap here)
        nq = min(200, len(queries))
        _, exact_in = flat.search(queries[:nq], K, params=faiss.SearchParameters(sel=sel))
        _, approx_in = vi.search(queries[:nq], K, allowed=allowed)
        lat = single_query_ms(lambda q: vi.search(q, K, allowed=allowed), queries, args.latency_queries // 2, 1)
        exact_lat = single_query_ms(lambda q: flat.search(q, K, params=faiss.SearchParameters(sel=sel)),
                                    queries, 10, 1)
        filtered.append({"allowed": len(allowed), "fraction": frac,
                         "rows_with_k": float(np.mean((approx_in != -1).sum(1) == K)),
                         "recall_at_10": recall(approx_in, exact_in), "p50_ms_1t": lat["p50"],
                         "exact_p50_ms_1t": exact_lat["p50"]})
        log(f"{kind}: filter {len(allowed):,} allowed: recall {filtered[-1]['recall_at_10']}, p50 {lat['p50']} ms")

    path = work / f"{kind}.faiss"
    vi.save(path, generation=1)
    file_bytes = path.stat().st_size
    rss_growth = load_rss_growth(path)
    path.unlink()
    path.with_name(path.name + ".json").unlink()
    result = {
        "kind": kind,
        "factory": report.factory,
        "nlist": vi.nlist,
        "nprobe": vi.nprobe,
        "tuner_recall_at_10": report.recall_at_10,
        "tuner_curve": report.curve,
        "reached": report.reached,
        "recall_at_10": rec,
        "latency_ms": latency,
        "nprobe_curve": curve,
        "filtered": filtered,
        "file_bytes": file_bytes,
        "bytes_per_vector_file": round(file_bytes / n, 1),
        "bytes_per_vector_memory": round(rss_growth / n, 1),
        "build_s": {"train": round(report.train_s, 1), "add": round(report.add_s, 1), "tune": round(report.tune_s, 1),
                    "total": round(report.build_s, 1)},
    }
    return result


def catalog_read_rate(dim: int, rows: int, work: Path) -> dict[str, Any]:
    """Vectors/s of Catalog.iter_vectors over a real SQLite catalog."""
    from retriever.store.catalog import STATUS_INDEXED, Catalog

    log(f"catalog: writing {rows:,} rows of dim {dim} ...")
    catalog = Catalog(work / "catalog.db", create=True)
    data = EmbeddingLike(dim, seed=9)
    written = 0
    for i, chunk in enumerate(data.chunks(rows)):
        catalog.write_batch([{"path": f"/p/{i}/{j}.jpg", "size": 1, "mtime_ns": 1, "status": STATUS_INDEXED,
                              "vector": v} for j, v in enumerate(chunk)])
        written += len(chunk)
    started = time.perf_counter()
    read = sum(len(ids) for ids, _ in catalog.iter_vectors(dim))
    seconds = time.perf_counter() - started
    catalog.close()
    return {"rows": read, "seconds": round(seconds, 2), "vectors_per_s": round(read / seconds)}


def sweep(sizes: Sequence[int], dims: Sequence[int], n_queries: int) -> list[dict[str, Any]]:
    """Exact single-query latency by size: IDMap2,Flat as retriever builds it."""
    from retriever.vectors import VectorIndex

    out = []
    for dim in dims:
        rng = np.random.default_rng(dim)
        queries = unit(rng.standard_normal((50, dim)))
        for n in sizes:
            vi = VectorIndex(dim)
            for start in range(0, n, CHUNK):
                size = min(CHUNK, n - start)
                vi.add(np.arange(start, start + size), unit(rng.standard_normal((size, dim))))
            row = {"dim": dim, "n": n}
            for t in (1, 2):
                row[f"p50_ms_{t}t"] = single_query_ms(lambda q: vi.search(q, K), queries, n_queries, t)["p50"]
            out.append(row)
            log(f"sweep: dim {dim} n {n:,}: {row['p50_ms_1t']} ms (1 thread), {row['p50_ms_2t']} ms (2 threads)")
    return out


def threshold(rows: list[dict[str, Any]], dim: int) -> int | None:
    """The largest swept N whose best single-query p50 is within the target."""
    ok = [r["n"] for r in rows if r["dim"] == dim and min(r["p50_ms_1t"], r["p50_ms_2t"]) <= TARGET_P50_MS]
    return max(ok) if ok else None


# -- the run ------------------------------------------------------------------------------------------


def run(args) -> dict[str, Any]:
    import faiss

    from retriever.vectors import EXACT_MAX_FLOATS

    env = {"processor": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "faiss": faiss.__version__, "loadavg_1m_start": loadavg(),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    result: dict[str, Any] = {"benchmark": "ann", "env": env, "targets": {
        "recall_at_10": TARGET_RECALL, "p50_ms": TARGET_P50_MS, "bytes_per_vector": TARGET_BYTES_PER_VECTOR,
        "build_s": TARGET_BUILD_S}}
    with tempfile.TemporaryDirectory(prefix="retriever-ann-") as tmp:
        work = Path(tmp)
        if not args.no_sweep:
            rows = sweep(args.sweep, (512, 704), args.sweep_queries)
            result["sweep"] = {"rows": rows, "exact_max_at_2ms": {str(d): threshold(rows, d) for d in (512, 704)},
                               "retriever_exact_max": {str(d): EXACT_MAX_FLOATS // d for d in (512, 704)}}
        if not args.sweep_only:
            n, dim = args.n, args.dim
            data = EmbeddingLike(dim, seed=args.seed)
            faiss.omp_set_num_threads(args.threads)
            log(f"exact: generating and adding {n:,} x {dim} ...")
            started = time.perf_counter()
            flat = exact_index(data, n)
            gen_s = time.perf_counter() - started
            vectors = flat_view(flat, n, dim)
            queries = data.queries(args.queries)
            log("exact: ground truth ...")
            started = time.perf_counter()
            truth_scores, truth = flat.search(queries, K)
            truth_s = time.perf_counter() - started
            nn_scores, _ = flat.search(vectors[:: max(1, n // 1000)][:1000], 2)  # an image's nearest other image
            exact_latency = {f"{t}t": single_query_ms(lambda q: flat.search(q, K), queries, args.exact_latency_queries, t)
                             for t in (1, 2)}
            result["data"] = {"n": n, "dim": dim, "queries": len(queries), "seed": args.seed,
                              "generate_and_add_s": round(gen_s, 1),
                              "query_top1_cosine_mean": round(float(truth_scores[:, 0].mean()), 3),
                              "query_top10_cosine_mean": round(float(truth_scores[:, -1].mean()), 3),
                              "image_nn_cosine_mean": round(float(nn_scores[:, 1].mean()), 3)}
            result["exact"] = {"latency_ms": exact_latency, "bytes_per_vector": 4 * dim + 8,
                               "batch_ground_truth_s": round(truth_s, 1)}
            result["kinds"] = [run_kind(kind, data, n, flat, vectors, queries, truth, args, work)
                               for kind in args.kinds.split(",")]
            del vectors, flat
            if args.catalog_rows:
                result["catalog_read"] = catalog_read_rate(dim, args.catalog_rows, work)
                rate = result["catalog_read"]["vectors_per_s"]
                for k in result["kinds"]:
                    k["optimize_estimate_s"] = round(k["build_s"]["total"] + 2 * n / rate, 1)
    env["loadavg_1m_end"] = loadavg()
    return result


# -- output -------------------------------------------------------------------------------------------


def table(r: dict[str, Any]) -> str:
    lines = []
    e = r["env"]
    lines.append(f"{e['processor']}, {e['cpus']} CPUs, faiss {e['faiss']}, load average "
                 f"{e['loadavg_1m_start']} -> {e['loadavg_1m_end']}")
    if "data" in r:
        d = r["data"]
        lines.append(f"\n{d['n']:,} vectors x {d['dim']}, {d['queries']} shifted queries: query->best image cosine "
                     f"{d['query_top1_cosine_mean']} (10th {d['query_top10_cosine_mean']}), image->nearest image "
                     f"{d['image_nn_cosine_mean']}")
        ex = r["exact"]["latency_ms"]
        lines.append(f"\n{'index':<16}{'recall@10':>10}{'p50 1t':>9}{'p95 1t':>9}{'p50 2t':>9}{'B/vector':>10}"
                     f"{'build s':>9}  params")
        lines.append(f"{'exact (flat)':<16}{1.0:>10}{ex['1t']['p50']:>9}{ex['1t']['p95']:>9}{ex['2t']['p50']:>9}"
                     f"{r['exact']['bytes_per_vector']:>10}{'':>9}  ground truth")
        for k in r["kinds"]:
            lat = k["latency_ms"]
            lines.append(f"{k['kind']:<16}{k['recall_at_10']:>10}{lat['1t']['p50']:>9}{lat['1t']['p95']:>9}"
                         f"{lat['2t']['p50']:>9}{k['bytes_per_vector_file']:>10}{k['build_s']['total']:>9}  "
                         f"{k['factory']}, nprobe {k['nprobe']} (tuner's own recall {k['tuner_recall_at_10']})")
        for k in r["kinds"]:
            lines.append(f"\n{k['kind']}: build {k['build_s']} s; memory {k['bytes_per_vector_memory']} B/vector "
                         f"(RSS growth on load), file {k['bytes_per_vector_file']} B/vector"
                         + (f"; `retriever optimize` estimate with catalog reads {k['optimize_estimate_s']} s"
                            if "optimize_estimate_s" in k else ""))
            lines.append(f"  {'nprobe':>8}{'recall@10':>11}{'p50 ms 1t':>11}")
            for c in k["nprobe_curve"]:
                lines.append(f"  {c['nprobe']:>8}{c['recall_at_10']:>11}{c['p50_ms_1t']:>11}")
            lines.append(f"  {'allowed':>10}{'rows with k':>13}{'recall@10':>11}{'p50 ms 1t':>11}{'exact p50':>11}")
            for f in k["filtered"]:
                lines.append(f"  {f['allowed']:>10,}{f['rows_with_k']:>13}{f['recall_at_10']:>11}{f['p50_ms_1t']:>11}"
                             f"{f['exact_p50_ms_1t']:>11}")
        if "catalog_read" in r:
            c = r["catalog_read"]
            lines.append(f"\ncatalog read: {c['vectors_per_s']:,} vectors/s ({c['rows']:,} rows in {c['seconds']} s)")
    if "sweep" in r:
        s = r["sweep"]
        lines.append(f"\nexact single-query p50 (ms) by size; at most {TARGET_P50_MS} ms up to "
                     f"{s['exact_max_at_2ms']} (retriever's threshold {s['retriever_exact_max']})")
        lines.append(f"  {'dim':>5}{'N':>10}{'1 thread':>10}{'2 threads':>11}")
        for row in s["rows"]:
            lines.append(f"  {row['dim']:>5}{row['n']:>10,}{row['p50_ms_1t']:>10}{row['p50_ms_2t']:>11}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="vectors in the collection")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000, help="shifted queries for recall")
    p.add_argument("--latency-queries", type=int, default=300, help="single queries timed per figure")
    p.add_argument("--exact-latency-queries", type=int, default=30, help="single exact queries timed")
    p.add_argument("--kinds", default="ivf-sq8", help="comma-separated: ivf-sq8, ivf-pq")
    p.add_argument("--threads", type=int, default=2, help="FAISS threads for building and batch search")
    p.add_argument("--catalog-rows", type=int, default=50_000, help="rows for the catalog read rate (0: skip)")
    p.add_argument("--sweep", type=lambda s: [int(x) for x in s.split(",")],
                   default=[5_000, 10_000, 15_000, 20_000, 25_000, 30_000, 50_000, 100_000])
    p.add_argument("--sweep-queries", type=int, default=200)
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--sweep-only", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result), flush=True)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
