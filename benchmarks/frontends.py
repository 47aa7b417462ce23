"""The front ends before and after a change, in the same run: `retriever --help`, a cold `search`
without the daemon, a search answered by the warm daemon, and an HTTP search through
`retriever serve`'s app, for this working tree and a baseline commit (default: the last commit
before the façade, retriever.api).

    python benchmarks/frontends.py                      # baseline 786c940, 20 runs a measure
    python benchmarks/frontends.py --baseline HEAD~3 --runs 30

Prints FIRST one JSON line holding every figure, THEN a readable table; progress goes to stderr.

How: the baseline is checked out with `git worktree` into a temporary folder and run from there
(PYTHONPATH, from a folder outside the repository), the current tree likewise; both use this interpreter and packages. Each
side builds its own index of examples/photos with the offline encoder and its ONNX export (where
its code keeps the export: the index folder, or the model cache). Each measure alternates the two sides in blocks (A B B A
...), every command a fresh process timed from spawn to exit, so drift in the machine's load
falls on both; the figures are medians (p50) with p95. Warm daemon: both sides' daemons run at
once, each on its own index, are warmed by three queries, then answer --runs new queries each,
alternating one by one. HTTP: each side's server app in one process, --runs requests
with new queries over one keep-alive connection.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO), str(REPO / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

from speed import cpu_name, loadavg, make_queries, pct  # noqa: E402

DEFAULT_BASELINE = "786c940"  # main before issue 13 (the façade)
BLOCKS = 4  # each measure: the runs split in this many blocks per side, alternating
TOLERANCE = 0.05  # "no slower": within 5 %


def log(msg: str) -> None:
    print(f"[frontends] {msg}", file=sys.stderr, flush=True)


def entry_code(tree: Path) -> str:
    """python -c code running the `retriever` console script of `tree` (its module moved)."""
    module = "retriever.daemon.entry" if (tree / "retriever" / "daemon" / "entry.py").exists() else "retriever._entry"
    return f"import sys; sys.argv[0] = 'retriever'; from {module} import main; main()"


def env_for(tree: Path, home: Path, **extra: str) -> dict[str, str]:
    """Commands run in the home's parent folder, not the repository: `python -c` and `-m` (the
    daemon) put the working directory first on sys.path, before PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVER_")}
    env.update(PYTHONPATH=str(tree), RETRIEVER_HOME=str(home), RETRIEVER_CACHE_DIR=str(home.parent / "model-cache"),
               **extra)
    return env


def timed(cmd: list[str], env: dict[str, str], check_lines: int | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, cwd=str(Path(env["RETRIEVER_HOME"]).parent))
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or (check_lines is not None and len(proc.stdout.splitlines()) != check_lines):
        raise RuntimeError(f"{cmd[3:]} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed


def summary(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": round(1000 * statistics.median(seconds), 1), "p95_ms": round(1000 * pct(seconds, 95), 1),
            "runs": len(seconds)}


def alternate(sides: dict[str, Any], runs: int, measure) -> dict[str, list[float]]:
    """measure(side, n) -> n timings; blocks in the order A B B A A B ..."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    per_block = max(1, runs // BLOCKS)
    for block in range(BLOCKS):
        order = names if block % 2 == 0 else names[::-1]
        for name in order:
            out[name] += measure(name, per_block)
    return out


def http_code(tree: Path, runs: int) -> str:
    """A process that starts the side's server app over the index and times `runs` searches."""
    new = (tree / "retriever" / "serve" / "service.py").exists()
    make = ("from retriever.serve.service import Service as S" if new else "from retriever.serve.engine import Engine as S")
    return f"""
import http.client, json, sys, time, os
{make}
from retriever.index import Index
from retriever.serve.server import Server
queries = json.loads(sys.argv[1])
idx = Index.open(os.environ["RETRIEVER_HOME"], "default")
s = S(idx); s.warm()
server = Server(s, host="127.0.0.1", port=0); server.start()
conn = http.client.HTTPConnection("127.0.0.1", server.info.port)
def get(q):
    conn.request("GET", "/api/search?" + __import__("urllib.parse").parse.urlencode({{"q": q, "k": 10}}))
    r = conn.getresponse(); body = r.read()
    assert r.status == 200 and len(json.loads(body)["results"]) == 10, body[:200]
get("warm up")
out = []
for q in queries:
    t = time.perf_counter(); get(q); out.append(time.perf_counter() - t)
server.stop(); idx.close()
print(json.dumps(out))
"""


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    baseline = work / "baseline"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(baseline), args.baseline],
                   check=True)
    commit = subprocess.run(["git", "-C", str(baseline), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    sides = {"baseline": baseline, "current": REPO}
    homes = {}
    for name, tree in sides.items():  # each side's own index: the export lives where its code looks
        log(f"building the {name} side's index (offline encoder, ONNX export); baseline {commit}")
        homes[name] = work / f"home-{name}"
        subprocess.run([sys.executable, "-c", entry_code(tree), "index", str(REPO / "examples" / "photos"), "--model",
                        "offline", "-q"], cwd=str(work), check=True, capture_output=True,
                       env=env_for(tree, homes[name], RETRIEVER_NO_DAEMON="1"))
    queries = make_queries(args.runs * 8 + 10)  # cold, warm and HTTP, both sides
    taken = iter(queries)
    py = sys.executable

    log("retriever --help")
    help_runs = alternate(sides, args.runs, lambda s, n: [
        timed([py, "-c", entry_code(sides[s]), "--help"], env_for(sides[s], homes[s])) for _ in range(n)])

    log("cold search, no daemon")
    cold_runs = alternate(sides, args.runs, lambda s, n: [
        timed([py, "-c", entry_code(sides[s]), "search", next(taken), "--no-daemon"],
              env_for(sides[s], homes[s]), check_lines=10) for _ in range(n)])

    log("warm daemon search")

    # Both sides' daemons run at once (each on its own index), warmed by a few queries, then the
    # timed queries alternate A B B A ... one by one: a daemon's first answers after its start and
    # a drift of the machine fall on both sides alike.
    def daemon(side: str, action: str) -> None:
        subprocess.run([py, "-c", entry_code(sides[side]), "daemon", action], env=env_for(sides[side], homes[side]),
                       cwd=str(work), check=action == "start", capture_output=True)

    warm_runs: dict[str, list[float]] = {name: [] for name in sides}
    try:
        for side in sides:
            daemon(side, "start")
        for side in sides:
            for _ in range(3):
                timed([py, "-c", entry_code(sides[side]), "search", "warm up"], env_for(sides[side], homes[side]),
                      check_lines=10)
        for i in range(args.runs):
            for side in (list(sides) if i % 2 == 0 else list(sides)[::-1]):
                warm_runs[side].append(timed([py, "-c", entry_code(sides[side]), "search", next(taken)],
                                             env_for(sides[side], homes[side]), check_lines=10))
    finally:
        for side in sides:
            daemon(side, "stop")

    log("HTTP search")

    def http(side: str, n: int) -> list[float]:
        batch = [next(taken) for _ in range(n)]
        proc = subprocess.run([py, "-c", http_code(sides[side], n), json.dumps(batch)], env=env_for(sides[side], homes[side]),
                              capture_output=True, text=True, cwd=str(work))
        if proc.returncode != 0:
            raise RuntimeError(f"HTTP {side}: {proc.stderr[-800:]}")
        return json.loads(proc.stdout.splitlines()[-1])

    http_runs = alternate(sides, args.runs, http)
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=False)

    measures: dict[str, Any] = {}
    for what, runs in (("help", help_runs), ("cold_search", cold_runs), ("warm_daemon_search", warm_runs),
                       ("http_search", http_runs)):
        before, after = summary(runs["baseline"]), summary(runs["current"])
        ratio = after["p50_ms"] / before["p50_ms"]
        measures[what] = {"baseline": before, "current": after, "ratio_p50": round(ratio, 3),
                          "within_5_percent": ratio <= 1 + TOLERANCE}
    return {"baseline_commit": commit, "measures": measures}


def table(r: dict[str, Any]) -> str:
    names = {"help": "retriever --help", "cold_search": "search, cold (--no-daemon)",
             "warm_daemon_search": "search, warm daemon", "http_search": "HTTP /api/search (serve's app)"}
    lines = [f"front ends: baseline {r['baseline_commit']} against this tree ({r['cpu']}, {r['cores']} cores, "
             f"load {r['loadavg_before']} -> {r['loadavg_after']})", "",
             f"{'measure':<32} {'baseline p50 / p95':>20} {'current p50 / p95':>20} {'current/baseline':>17}"]
    for key, m in r["measures"].items():
        b, c = m["baseline"], m["current"]
        verdict = "" if m["within_5_percent"] else "  (slower)"
        lines.append(f"{names[key]:<32} {b['p50_ms']:>9.1f} / {b['p95_ms']:>6.1f} ms {c['p50_ms']:>9.1f} / "
                     f"{c['p95_ms']:>6.1f} ms {m['ratio_p50']:>16.3f}{verdict}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="The commit to compare with.")
    parser.add_argument("--runs", type=int, default=20, help="Runs a measure and side (split in blocks).")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    before = loadavg()
    with tempfile.TemporaryDirectory(prefix="retriever-frontends-") as tmp:
        result = {"benchmark": "frontends", "cpu": cpu_name(), "cores": os.cpu_count(), "loadavg_before": before,
                  **run(args, Path(tmp)), "loadavg_after": loadavg()}
    print(json.dumps(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
