"""HTTP benchmark of `retriever serve`: warm text-search latency through HTTP at N images,
throughput with several concurrent clients, and CLI search wall time with and without a server.

    python benchmarks/serve.py                      # ViT-B-32, seeded random weights (nothing downloaded)
    python benchmarks/serve.py --model offline      # the offline encoder
    python benchmarks/serve.py --n-vectors 2000 --queries 20 --clients 4   # a quick run

Prints FIRST one JSON line holding every figure, THEN a readable table; progress goes to stderr.

What is measured:
  1. The index: examples/photos indexed with the model, padded with synthetic rows to --n-vectors
     (benchmarks/speed.py's helpers), the FAISS file rebuilt.
  2. `retriever serve --port 0` started as its own process (found through its serve.json), warmed up.
  3. Latency: --queries varied text queries, one at a time, GET /api/search?q=...&k=10 over one
     kept-alive connection (as the page's fetches): p50/p95 of the whole round trip; the same
     queries again (the server remembers text embeddings: no forward pass); and other new queries
     through `retriever.serve.client.remote_query` (what the CLI uses: urllib, a new connection each).
  4. Throughput: --clients threads, each with its own connection, --per-client queries each, all
     queries distinct and new to the server (each one a forward pass).
  5. CLI search wall time (median of --cli-runs): `python -m retriever search` with no server, and
     with the server running -- when the CLI uses a running server (retriever/cli/search.py imports
     retriever.serve.client); otherwise the with-server figure is a fresh `python -c` process that
     imports retriever.serve.client and calls find_server + remote_query, i.e. what the wired CLI
     adds to its own start-up (`cli_uses_server` in the JSON says which).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO), str(REPO / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

from speed import (  # noqa: E402  (benchmarks/speed.py: the same padding and weights as the speed benchmark)
    DEFAULT_ARCH, cpu_name, loadavg, make_queries, make_random_weights, ms, pct, rnd, stdout_to_stderr,
    subprocess_env, synthetic_rows, time_subprocess,
)

INDEX_NAME = "serve-bench"
TARGET_P50_MS = 60.0
K = 10


def log(msg: str) -> None:
    print(f"[serve] {msg}", file=sys.stderr, flush=True)


def build_index(args, work: Path, home: Path) -> dict[str, Any]:
    import numpy as np

    from retriever.index import open_for_writing
    from retriever.indexer import run_index

    model, pretrained, note = args.model, args.pretrained, None
    if model != "offline" and not pretrained:
        log(f"seeded random weights for {model} ...")
        pretrained = str(make_random_weights(model, work))
        note = "random (open_clip.create_model under torch.manual_seed(0))"
    idx, encoder, _ = open_for_writing(home, INDEX_NAME, model=model, pretrained=pretrained, device="cpu")
    with idx:
        log(f"indexing {args.photos} ...")
        run_index(idx, encoder, [str(args.photos)])
        real = np.concatenate([v for _, v in idx.catalog.iter_vectors(idx.dim)], axis=0)
        n_pad = max(0, args.n_vectors - len(real))
        log(f"padding with {n_pad} synthetic rows ...")
        for start in range(0, n_pad, 5000):
            count = min(5000, n_pad - start)
            rows, vecs = synthetic_rows(home, real, count, start)
            idx.catalog.write_batch([{**row, "vector": vec} for row, vec in zip(rows, vecs)])
        n_vectors = len(idx.vector_index())  # rebuilt and saved (this process holds the writer lock)
        return {"name": model, "pretrained": note or pretrained, "model_id": encoder.model_id, "dim": encoder.dim,
                "vectors": n_vectors}


def start_server(home: Path, threads: int | None) -> tuple[subprocess.Popen, Any]:
    from retriever.serve.client import find_server

    env = subprocess_env()
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-m", "retriever", "serve", "--home", str(home), "--index", INDEX_NAME,
                             "--port", "0", "--device", "cpu"], cwd=REPO, env=env, stderr=sys.stderr)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"retriever serve exited {proc.returncode}")
        info = find_server(home / INDEX_NAME)
        if info is not None:
            return proc, info
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("retriever serve did not start in 300 s")


def get(conn: http.client.HTTPConnection, q: str) -> float:
    t0 = time.perf_counter()
    conn.request("GET", "/api/search?" + urllib.parse.urlencode({"q": q, "k": K}))
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - t0
    if response.status != 200 or len(json.loads(body)["results"]) != K:
        raise RuntimeError(f"{q!r}: HTTP {response.status} {body[:200]!r}")
    return elapsed


def latency(info, queries: Sequence[str]) -> dict[str, Any]:
    from retriever.serve.client import server_query as remote_query

    conn = http.client.HTTPConnection(info.host, info.port, timeout=60)
    for q in ("warm up", "a photo of a dog", "another warm-up"):
        get(conn, q)
    kept = [get(conn, q) for q in queries]
    repeated = [get(conn, q) for q in queries]  # asked again: the server remembers text embeddings
    conn.close()
    fresh = []
    for q in make_queries(2 * len(queries))[len(queries):]:  # not asked before
        t0 = time.perf_counter()
        remote_query(info, [q], K)
        fresh.append(time.perf_counter() - t0)
    return {"queries": len(queries), "p50_ms": ms(pct(kept, 50)), "p95_ms": ms(pct(kept, 95)),
            "mean_ms": ms(statistics.mean(kept)), "repeated_query_p50_ms": ms(pct(repeated, 50)),
            "remote_query_p50_ms": ms(pct(fresh, 50)),
            "remote_query_p95_ms": ms(pct(fresh, 95)), "target_p50_ms": TARGET_P50_MS,
            "meets_target": pct(kept, 50) * 1000 < TARGET_P50_MS}


def throughput(info, queries: Sequence[str], clients: int, per_client: int) -> dict[str, Any]:
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(info.host, info.port, timeout=120)
        get(conn, "warm up")
        barrier.wait()
        for j in range(per_client):
            try:
                t = get(conn, queries[(c * per_client + j) % len(queries)])
            except Exception as exc:  # noqa: BLE001
                errors.append(str(exc))
                continue
            with lock:
                times.append(t)
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(times), "errors": len(errors), "wall_s": rnd(wall),
            "requests_per_s": rnd(len(times) / wall, 2), "p50_ms": ms(pct(times, 50)), "p95_ms": ms(pct(times, 95))}


def cli_uses_server() -> bool:
    return "serve.client" in (REPO / "retriever" / "cli" / "search.py").read_text()


def cli_search_cmd(home: Path) -> list[str]:
    return [sys.executable, "-m", "retriever", "search", "a cat", "--home", str(home), "--index", INDEX_NAME,
            "-k", str(K), "--device", "cpu"]


def client_cmd(home: Path) -> list[str]:
    code = ("import sys; from retriever.serve.client import find_server, server_query as remote_query; "
            f"info = find_server({str(home / INDEX_NAME)!r}); assert info, 'no server'; "
            f"hits = remote_query(info, ['a cat'], {K}); print(len(hits))")
    return [sys.executable, "-c", code]


def run(args) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="retriever-serve-bench-"))
    home = work / "home"
    result: dict[str, Any] = {"benchmark": "serve", "cpu": cpu_name(), "cores": os.cpu_count(),
                              "loadavg_before": loadavg()}
    try:
        with stdout_to_stderr():
            result["model"] = build_index(args, work, home)
            log(f"CLI search without a server ({args.cli_runs} runs) ...")
            no_server = time_subprocess(cli_search_cmd(home), args.cli_runs, "retriever search")
            log("starting retriever serve ...")
            t0 = time.perf_counter()
            proc, info = start_server(home, args.threads)
            result["server_start_s"] = rnd(time.perf_counter() - t0)
            try:
                queries = make_queries(args.queries)
                log(f"latency: {len(queries)} queries ...")
                result["latency"] = latency(info, queries)
                log(f"throughput: {args.clients} clients x {args.per_client} queries ...")
                n_new = args.clients * args.per_client  # queries not asked before: every one is a forward pass
                unseen = make_queries(2 * len(queries) + n_new)[2 * len(queries):]
                result["throughput"] = throughput(info, unseen, args.clients, args.per_client)
                wired = cli_uses_server()
                log(f"CLI search with the server ({'the CLI' if wired else 'a python -c client process'}) ...")
                with_server = time_subprocess(cli_search_cmd(home) if wired else client_cmd(home), args.cli_runs,
                                              "search with the server")
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        result["cli"] = {"cli_uses_server": wired, "runs": args.cli_runs,
                         "without_server_median_s": rnd(statistics.median(no_server)),
                         "with_server_median_s": rnd(statistics.median(with_server)),
                         "without_server_runs_s": [rnd(t) for t in no_server],
                         "with_server_runs_s": [rnd(t) for t in with_server]}
        result["loadavg_after"] = loadavg()
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(r: dict[str, Any]) -> str:
    lat, thr, cli = r["latency"], r["throughput"], r["cli"]
    m = r["model"]
    with_what = "retriever search (uses the server)" if cli["cli_uses_server"] else "python -c find_server+remote_query"
    rows = [
        ("model", m["name"] + (f" ({m['pretrained']})" if m["pretrained"] else "")
         + f", {m['vectors']} vectors, {r['cpu']}, {r['cores']} cores"),
        ("HTTP text search p50 / p95", f"{lat['p50_ms']:.1f} / {lat['p95_ms']:.1f} ms (target p50 < {TARGET_P50_MS:.0f} ms: "
                                       f"{'met' if lat['meets_target'] else 'NOT met'})"),
        ("same queries again, p50", f"{lat['repeated_query_p50_ms']:.1f} ms (text embedding remembered)"),
        ("remote_query p50 / p95", f"{lat['remote_query_p50_ms']:.1f} / {lat['remote_query_p95_ms']:.1f} ms"),
        (f"{thr['clients']} concurrent clients", f"{thr['requests_per_s']:.1f} req/s, p50 {thr['p50_ms']:.1f} ms, "
                                                 f"p95 {thr['p95_ms']:.1f} ms, {thr['errors']} errors"),
        ("CLI search, no server", f"{cli['without_server_median_s']:.2f} s (median of {cli['runs']})"),
        ("with the server", f"{cli['with_server_median_s']:.2f} s ({with_what})"),
        ("server start (to warm)", f"{r['server_start_s']:.1f} s"),
        ("load average", f"{r['loadavg_before']} before, {r['loadavg_after']} after"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=REPO / "examples" / "photos")
    ap.add_argument("--model", default=DEFAULT_ARCH, help="an open_clip architecture, or offline")
    ap.add_argument("--pretrained", help="weights file or tag (default: seeded random weights)")
    ap.add_argument("--n-vectors", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=25)
    ap.add_argument("--cli-runs", type=int, default=3)
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the server process")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
