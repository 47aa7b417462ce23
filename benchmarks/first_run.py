"""A new user's first two commands on a machine whose model cache is empty: does the ONNX export
pay off on a small collection, or should the first run encode with PyTorch and export later?

    python benchmarks/first_run.py                       # offline encoder and ViT-B-32 (random weights)
    python benchmarks/first_run.py --models offline --copies 1,7 --runs 3

For each model and collection size (copies of examples/photos, each copy re-encoded so every file
differs), in alternation, each run with a new RETRIEVER_HOME, a new model cache
(RETRIEVER_CACHE_DIR) and a new XDG_CACHE_HOME (a machine that has never run retriever):

  export   `retriever index PHOTOS`, the default: a child process prepares the model's export
           while photos are read; photos ready before it are encoded by PyTorch, ONNX Runtime
           takes over once it is ready, and a run that ends first leaves the child to finish in
           the background. Then `retriever search "a cat"` (ONNX Runtime if the export is in the
           cache by then, else PyTorch).
  pytorch  `retriever index PHOTOS --no-onnx` (PyTorch encodes, nothing is exported) then the same
           search (PyTorch again): no export at all, the floor for a first run.

Until 2026-12-04 (tree 954adba) the default waited for the export before encoding; this script
measured that against `--no-onnx` and the wait lost (ViT-B-32: 41-68 s against 22-32 s for index
and search together), which is why the default now encodes with PyTorch meanwhile.

The daemon is off (RETRIEVER_NO_DAEMON=1) so that each search is one process. Prints one JSON
line, then a table: median walls of the index command, the search, and both.
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from speed import build_collection, cpu_name, loadavg, make_random_weights, stdout_to_stderr  # noqa: E402

RETRIEVER = [sys.executable, "-m", "retriever"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-600:]}")
    return seconds


def one_run(mode: str, photos: Path, model_args: list[str], work: Path) -> dict[str, float]:
    fresh = Path(tempfile.mkdtemp(dir=work))
    env = {**os.environ, "RETRIEVER_HOME": str(fresh / "home"), "RETRIEVER_CACHE_DIR": str(fresh / "cache"),
           "XDG_CACHE_HOME": str(fresh / "xdg"), "RETRIEVER_NO_DAEMON": "1"}
    extra = ["--no-onnx"] if mode == "pytorch" else []
    index_s = timed([*RETRIEVER, "index", str(photos), *model_args, *extra, "-q"], env)
    search_s = timed([*RETRIEVER, "search", "a cat", "-k", "5"], env)
    return {"index_s": index_s, "search_s": search_s, "both_s": index_s + search_s}


def median(runs: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="offline,ViT-B-32", help="comma-separated: 'offline' and/or open_clip architectures")
    ap.add_argument("--copies", default="1,7", help="collection sizes, in copies of examples/photos (15 photos each)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each mode, alternating")
    ap.add_argument("--photos", type=Path, default=REPO / "examples" / "photos")
    args = ap.parse_args()

    load_start = loadavg()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        work = Path(tmp)
        for model in args.models.split(","):
            model_args = ["--model", "offline"]
            if model != "offline":
                with stdout_to_stderr():
                    weights = make_random_weights(model, work)
                model_args = ["--model", model, "--pretrained", str(weights)]
            for copies in (int(c) for c in args.copies.split(",")):
                photos = work / f"photos-{copies}"
                if not photos.exists():  # (the same collection for every model)
                    build_collection(args.photos, photos, copies)
                n = sum(1 for f in photos.rglob("*") if f.is_file())
                runs: dict[str, list[dict[str, float]]] = {"export": [], "pytorch": []}
                for i in range(args.runs):
                    for mode in (("export", "pytorch") if i % 2 == 0 else ("pytorch", "export")):
                        print(f"[first_run] {model} {n} photos, run {i + 1}: {mode}", file=sys.stderr)
                        runs[mode].append(one_run(mode, photos, model_args, work))
                results[f"{model}/{n}"] = {
                    "model": model, "photos": n,
                    **{mode: {k: median(r, k) for k in ("index_s", "search_s", "both_s")} | {"runs": r}
                       for mode, r in runs.items()}}
    report = {"benchmark": "first_run", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": args.runs,
              "results": results, "cpu": cpu_name(), "cores": os.cpu_count(),
              "loadavg_start": load_start, "loadavg_end": loadavg()}
    print(json.dumps(report))
    print(f"\nfirst run on a new machine, median of {args.runs} (load {load_start} -> {report['loadavg_end']})")
    print("| model | photos | export: index | search | both | PyTorch, no export: index | search | both |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results.values():
        e, p = r["export"], r["pytorch"]
        print(f"| {r['model']} | {r['photos']} | {e['index_s']} s | {e['search_s']} s | **{e['both_s']} s** "
              f"| {p['index_s']} s | {p['search_s']} s | **{p['both_s']} s** |")


if __name__ == "__main__":
    main()
