"""On-disk IVF (retriever.ondisk) against the in-memory IVF of the same training, same run.

    python benchmarks/ondisk.py                      # 1,000,000 vectors x 512 (about 15 minutes on 2 cores)
    python benchmarks/ondisk.py --n 5000000          # streamed in chunks (about 45 minutes; 10 GB of scratch)
    python benchmarks/ondisk.py --n 5000000 --kinds ivf-sq8,ivf-pq

Data: benchmarks/ann.py's EmbeddingLike (clustered unit vectors in a cone, queries shifted by a
modality gap), generated once chunk by chunk into a raw float32 scratch file (--work) and read
back a chunk at a time (plain reads, no mmap: resident memory is what the code under test holds).

Measured, each part in a process of its own (its peak RSS is its own):
  truth      exact top 10 of 1000 shifted queries, chunk by chunk (faiss.knn + merge).
  ondisk     retriever.ondisk.build_ondisk: trained on a sample (as `retriever optimize`), shards
             filled by --workers threads, merged in a subprocess, nprobe tuned on its own
             held-out queries. Build time by stage, file sizes (bytes/vector), peak RSS.
  search     the saved index opened as `retriever search` opens it (OnDiskVectorIndex.load,
             lists memory-mapped read-only): recall@10 against the truth at the tuned nprobe,
             single-query p50/p95 (k=10, warm page cache) at 1 and 2 threads, RSS on open and
             after the queries, and an nprobe curve.
  memory     the in-memory IVF of the same trained quantizer (the same codes, so the same results)
             and the same nprobe: add time, recall, latency, peak RSS. The baseline.

Prints FIRST one JSON line per --n, THEN a readable table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.ann import CHUNK, K, EmbeddingLike, single_query_ms  # noqa: E402
from benchmarks.speed import cpu_name, loadavg  # noqa: E402

TARGET_RECALL = 0.95


def log(msg: str) -> None:
    print(f"[ondisk] {msg}", file=sys.stderr, flush=True)


def peak_rss() -> int:
    """VmHWM: this process's own peak (ru_maxrss carries the parent's over fork + exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_split() -> dict[str, int]:
    """Resident bytes: anonymous (the process's own) and file-backed (mapped files: the .ivfdata
    pages a search touched, which the kernel can drop and read again)."""
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("RssAnon:", "RssFile:")):
            out[line.split(":")[0][3:].lower()] = int(line.split()[1]) * 1024
    return out


# -- data: a raw float32 scratch file, read a chunk at a time ----------------------------------------


def data_file(work: Path, n: int, dim: int, seed: int) -> Path:
    path = work / f"data-{n}x{dim}-s{seed}.f32"
    if path.is_file() and path.stat().st_size == n * dim * 4:
        log(f"data: reusing {path}")
        return path
    log(f"data: generating {n:,} x {dim} into {path} ...")
    gen = EmbeddingLike(dim, seed=seed)
    tmp = path.with_suffix(".part")
    started = time.perf_counter()
    with open(tmp, "wb") as f:
        for i, chunk in enumerate(gen.chunks(n)):
            f.write(chunk.tobytes())
            if i % 20 == 0:
                log(f"data: {min((i + 1) * CHUNK, n):,} in {time.perf_counter() - started:.0f}s")
    os.replace(tmp, path)
    return path


def chunks(path: Path, n: int, dim: int, size: int = CHUNK):
    """A re-iterable (ids, vectors) source over the scratch file, as Catalog.iter_vectors yields."""

    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with open(path, "rb") as f:
            for start in range(0, n, size):
                count = min(size, n - start)
                vecs = np.fromfile(f, dtype=np.float32, count=count * dim).reshape(count, dim)
                yield np.arange(start, start + count, dtype=np.int64), vecs

    return gen


def queries_for(dim: int, seed: int, n: int) -> np.ndarray:
    return EmbeddingLike(dim, seed=seed).queries(n)


# -- the parts, each run in a process of its own --------------------------------------------------------


def part_truth(a: dict[str, Any]) -> dict[str, Any]:
    import faiss

    from retriever.vectors import _ExactTopK

    faiss.omp_set_num_threads(a["threads"])
    queries = np.load(a["queries"])
    started = time.perf_counter()
    truth = _ExactTopK(queries, K)
    for ids, vecs in chunks(Path(a["data"]), a["n"], a["dim"])():
        truth.update(ids, vecs)
    np.save(a["out"], truth.ids())
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss": peak_rss()}


def part_ondisk(a: dict[str, Any]) -> dict[str, Any]:
    import faiss

    from retriever.ondisk import build_ondisk, build_size
    from retriever.vectors import sample_and_train

    faiss.omp_set_num_threads(a["threads"])
    n, dim = a["n"], a["dim"]
    source = chunks(Path(a["data"]), n, dim)
    folder = Path(a["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    # Trained here, as build_ondisk would (vectors.sample_and_train), and saved for the in-memory
    # baseline: both then hold the same codes.
    started = time.perf_counter()
    trained, factory, nlist, pq_m, _ = sample_and_train(dim, source, n, a["kind"], a.get("nlist"), None, 500,
                                                        np.random.default_rng(0))
    train_s = time.perf_counter() - started
    faiss.write_index(trained, str(folder / "trained.faiss"))
    stages: dict[str, float] = {}
    last = [time.perf_counter(), None]

    def progress(stage: str, done: int, total: int) -> None:
        if stage != last[1]:
            now = time.perf_counter()
            if last[1] is not None:
                stages[last[1]] = round(now - last[0], 1)
            last[:] = [now, stage]
            log(f"ondisk {a['kind']}: {stage} ...")

    started = time.perf_counter()
    vi, report = build_ondisk(dim, source, n, folder / "vectors.faiss", a["kind"], target_recall=TARGET_RECALL,
                              workers=a["workers"], shard_size=a["shard_size"], trained=trained, progress=progress)
    wall = time.perf_counter() - started
    stages[last[1]] = round(time.perf_counter() - last[0], 1)
    vi.save(folder / "vectors.faiss", generation=1)
    files = {p.name.split(".", 2)[-1] if p.name.count(".") > 1 else p.name: p.stat().st_size
             for p in folder.iterdir() if p.is_file() and p.name != "trained.faiss"}
    return {"factory": factory, "nlist": nlist, "nprobe": vi.nprobe, "tuner_recall_at_10": report.recall_at_10,
            "tuner_curve": report.curve, "shards": vi.params.get("shards"), "workers": a["workers"],
            "build_s": {"train": round(train_s, 1), "sample_queries": stages.get("sample"),
                        "fill": stages.get("fill"), "merge": stages.get("merge"), "tune": stages.get("tune"),
                        "total": round(train_s + wall, 1)},
            "files": files, "bytes": build_size(vi), "bytes_per_vector": round(build_size(vi) / n, 1),
            "ivfdata_bytes_per_vector": round(vi.ivfdata_bytes() / n, 1), "peak_rss": peak_rss()}


def _latency(search, queries: np.ndarray, n: int) -> dict[str, Any]:
    return {f"{t}t": single_query_ms(search, queries, n, t) for t in (1, 2)}


def part_search(a: dict[str, Any]) -> dict[str, Any]:
    import faiss

    from retriever.ondisk import OnDiskVectorIndex
    from retriever.vectors import recall_at

    queries, truth = np.load(a["queries"]), np.load(a["truth"])
    before = rss()
    started = time.perf_counter()
    vi, _ = OnDiskVectorIndex.load(Path(a["folder"]) / "vectors.faiss")
    open_s = time.perf_counter() - started
    rss_open = rss() - before
    faiss.omp_set_num_threads(a["threads"])
    started = time.perf_counter()
    _, found = vi.search(queries, K)
    batch_s = time.perf_counter() - started
    out = {"open_s": round(open_s, 3), "rss_on_open": rss_open, "nprobe": vi.nprobe,
           "recall_at_10": round(recall_at(found, truth), 4), "batch_1000_s": round(batch_s, 2),
           "latency_ms": _latency(lambda q: vi.search(q, K), queries, a["latency_queries"])}
    chosen, curve = vi.nprobe, []
    for nprobe in sorted({max(1, chosen // 2), chosen, min(vi.nlist, chosen * 2)}):
        vi.set_nprobe(nprobe)
        _, f = vi.search(queries, K)
        lat = single_query_ms(lambda q: vi.search(q, K), queries, a["latency_queries"] // 2, 1)
        curve.append({"nprobe": nprobe, "recall_at_10": round(recall_at(f, truth), 4), "p50_ms_1t": lat["p50"]})
    out["nprobe_curve"] = curve
    out["rss_after_queries"] = rss() - before
    out["rss_after_queries_split"] = rss_split()
    out["peak_rss"] = peak_rss()
    return out


def part_memory(a: dict[str, Any]) -> dict[str, Any]:
    import faiss

    from retriever.vectors import VectorIndex, recall_at

    faiss.omp_set_num_threads(a["threads"])
    queries, truth = np.load(a["queries"]), np.load(a["truth"])
    index = faiss.read_index(str(Path(a["folder"]) / "trained.faiss"))
    started = time.perf_counter()
    for ids, vecs in chunks(Path(a["data"]), a["n"], a["dim"])():
        index.add_with_ids(vecs, ids)
    add_s = time.perf_counter() - started
    kind = "ivf-pq" if "PQ" in a["factory"] else "ivf-sq8"
    vi = VectorIndex(a["dim"], index, index_type=kind, params={"factory": a["factory"], "nlist": a["nlist"],
                                                                 "nprobe": a["nprobe"]})
    _, found = vi.search(queries, K)
    path = Path(a["folder"]) / "memory.faiss"
    faiss.write_index(index, str(path))
    out = {"add_s": round(add_s, 1), "nprobe": vi.nprobe, "recall_at_10": round(recall_at(found, truth), 4),
           "latency_ms": _latency(lambda q: vi.search(q, K), queries, a["latency_queries"]),
           "file_bytes_per_vector": round(path.stat().st_size / a["n"], 1), "peak_rss": peak_rss()}
    path.unlink()
    return out


PARTS = {"truth": part_truth, "ondisk": part_ondisk, "search": part_search, "memory": part_memory}


def in_process(part: str, args: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "_part", part, json.dumps(args)], stdout=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"part {part} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the run --------------------------------------------------------------------------------------------


def run_n(n: int, args) -> dict[str, Any]:
    import faiss

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {"processor": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "faiss": faiss.__version__, "loadavg_1m_start": loadavg(),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    dim = args.dim
    data = data_file(work, n, dim, args.seed)
    if args.generate_only:
        return {}
    qpath = work / f"queries-{dim}-s{args.seed}-{args.queries}.npy"
    np.save(qpath, queries_for(dim, args.seed, args.queries))
    tpath = work / f"truth-{n}x{dim}-s{args.seed}-{args.queries}.npy"
    common = {"n": n, "dim": dim, "data": str(data), "queries": str(qpath), "truth": str(tpath),
              "threads": args.threads, "latency_queries": args.latency_queries}
    if tpath.is_file():
        truth = {"reused": True}
    else:
        log("truth: exact top 10, chunk by chunk ...")
        truth = in_process("truth", {**common, "out": str(tpath)})
        log(f"truth: {truth['seconds']} s")
    result: dict[str, Any] = {"benchmark": "ondisk", "env": env,
                              "data": {"n": n, "dim": dim, "queries": args.queries, "seed": args.seed,
                                       "data_file_bytes": data.stat().st_size},
                              "truth": truth, "kinds": []}
    for kind in args.kinds.split(","):
        folder = work / f"index-{n}-{kind}"
        for p in folder.glob("*") if folder.exists() else ():
            p.unlink()
        from retriever.ondisk import DEFAULT_SHARD_SIZE

        args.shard_size = args.shard_size or DEFAULT_SHARD_SIZE
        log(f"{kind}: on-disk build ({args.workers} workers, shards of {args.shard_size:,}) ...")
        built = in_process("ondisk", {**common, "kind": kind, "folder": str(folder), "workers": args.workers,
                                      "shard_size": args.shard_size, "nlist": args.nlist})
        log(f"{kind}: built in {built['build_s']['total']} s, nprobe {built['nprobe']}; searching on disk ...")
        searched = in_process("search", {**common, "folder": str(folder)})
        log(f"{kind}: on disk recall {searched['recall_at_10']}, p50 {searched['latency_ms']['1t']['p50']} ms; "
            "in-memory baseline ...")
        memory = in_process("memory", {**common, "folder": str(folder), "factory": built["factory"],
                                       "nlist": built["nlist"], "nprobe": built["nprobe"]})
        log(f"{kind}: in memory recall {memory['recall_at_10']}, p50 {memory['latency_ms']['1t']['p50']} ms")
        result["kinds"].append({"kind": kind, "ondisk_build": built, "ondisk_search": searched, "memory": memory})
        if not args.keep:
            for p in folder.glob("*"):
                p.unlink()
            folder.rmdir()
    env["loadavg_1m_end"] = loadavg()
    return result


# -- output ---------------------------------------------------------------------------------------------


def table(r: dict[str, Any]) -> str:
    e, d = r["env"], r["data"]
    mb = 1 / 2**20
    lines = [f"{e['processor']}, {e['cpus']} CPUs, faiss {e['faiss']}, load average {e['loadavg_1m_start']} -> "
             f"{e['loadavg_1m_end']}",
             f"\n{d['n']:,} vectors x {d['dim']}, {d['queries']} shifted queries, k={K}, warm page cache",
             f"\n{'index':<22}{'nprobe':>7}{'recall@10':>10}{'p50 1t':>8}{'p95 1t':>8}{'p50 2t':>8}{'B/vec':>8}"
             f"{'build s':>9}{'peak RSS MiB':>14}"]
    for k in r["kinds"]:
        b, s, m = k["ondisk_build"], k["ondisk_search"], k["memory"]
        lines.append(f"{k['kind'] + ' on disk':<22}{s['nprobe']:>7}{s['recall_at_10']:>10}"
                     f"{s['latency_ms']['1t']['p50']:>8}{s['latency_ms']['1t']['p95']:>8}{s['latency_ms']['2t']['p50']:>8}"
                     f"{b['bytes_per_vector']:>8}{b['build_s']['total']:>9}{round(b['peak_rss'] * mb):>14}")
        lines.append(f"{k['kind'] + ' in memory':<22}{m['nprobe']:>7}{m['recall_at_10']:>10}"
                     f"{m['latency_ms']['1t']['p50']:>8}{m['latency_ms']['1t']['p95']:>8}{m['latency_ms']['2t']['p50']:>8}"
                     f"{m['file_bytes_per_vector']:>8}{b['build_s']['train'] + m['add_s']:>9.1f}"
                     f"{round(m['peak_rss'] * mb):>14}")
    for k in r["kinds"]:
        b, s = k["ondisk_build"], k["ondisk_search"]
        lines.append(f"\n{k['kind']} on disk: {b['factory']}, {b['shards']} shards from {b['workers']} workers; build "
                     f"{b['build_s']} s; .ivfdata {b['ivfdata_bytes_per_vector']} B/vector, all files "
                     f"{b['bytes_per_vector']} B/vector; open {s['open_s']} s, RSS {round(s['rss_on_open'] * mb)} MiB "
                     f"on open, {round(s['rss_after_queries'] * mb)} MiB after the queries ("
                     + (f"anonymous {round(s['rss_after_queries_split']['anon'] * mb)} MiB, mapped files "
                        f"{round(s['rss_after_queries_split']['file'] * mb)} MiB" if "rss_after_queries_split" in s
                        else "mapped lists included")
                     + f"); tuner's own recall {b['tuner_recall_at_10']}")
        lines.append(f"  {'nprobe':>8}{'recall@10':>11}{'p50 ms 1t':>11}")
        for c in s["nprobe_curve"]:
            lines.append(f"  {c['nprobe']:>8}{c['recall_at_10']:>11}{c['p50_ms_1t']:>11}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=[1_000_000],
                   help="vectors (comma-separated for several runs)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--latency-queries", type=int, default=300)
    p.add_argument("--kinds", default="ivf-sq8", help="comma-separated: ivf-sq8, ivf-pq")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="shards filled in parallel")
    p.add_argument("--shard-size", type=int, default=None, help="default: retriever's (DEFAULT_SHARD_SIZE)")
    p.add_argument("--threads", type=int, default=2, help="FAISS threads for training and batch search")
    p.add_argument("--work", default="/tmp/retriever-ondisk-bench", help="scratch folder (data, indexes)")
    p.add_argument("--keep", action="store_true", help="keep the built indexes in --work")
    p.add_argument("--nlist", type=int, default=None,
                   help="IVF lists (default: retriever's choice, about 4 sqrt(N) as a power of two)")
    p.add_argument("--generate-only", action="store_true", help="write the scratch data file and stop")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_part"]:
        print(json.dumps(PARTS[argv[1]](json.loads(argv[2]))), flush=True)
        return 0
    args = parse_args(argv)
    results = [r for r in (run_n(n, args) for n in args.n) if r]
    for r in results:
        print(json.dumps(r), flush=True)
    for r in results:
        print(table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
