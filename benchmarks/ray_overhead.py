"""The Ray engine's overhead on one machine: images/s of `--engine ray` against the local engine,
same 12-MP JPEGs, same model, same catalog code.

    python benchmarks/ray_overhead.py                                  # 200 photos, offline encoder, 2 CPUs
    python benchmarks/ray_overhead.py --cache ~/.cache/retriever-bench # keep/reuse the 12-MP files
    python benchmarks/ray_overhead.py --model ViT-B-32 --n 120         # seeded random ViT-B-32 weights

  local   `run_index(index, encoder, [folder])` into a fresh index: decode threads and the model
          in this process (retriever's default), model loaded before the clock starts.
  ray     `run_index_ray(...)` into another fresh index on a local Ray cluster started here with
          `ray.init(num_cpus=--cpus)`: decode in Ray tasks, encoding in an actor pool, results
          streamed back and committed by the same checkpoint code. The cluster start is timed
          apart (`ray_init_s`); the run's own time includes what every Ray run pays: starting the
          encoder actor(s) and loading the model in them (`first_result_s`, time to the first
          committed batch), then the stream (`steady_images_per_s`, from the first committed
          batch to the last; flattered by the photos the decode tasks got ready while the actor
          was loading its model).

Both runs index the same files into the same kind of catalog; the script checks that they agree
(same paths, vectors within 1e-5). The 12-MP photos come from benchmarks/draft_agreement.py's
generator (real photos from ../shared/datasets/caltech101-test, read only).

Prints FIRST one JSON line holding every figure, THEN a readable table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from draft_agreement import DEFAULT_SOURCE, cache_folder, env_info, photo_set, random_weights_file  # noqa: E402
from speed import loadavg, rnd, stdout_to_stderr  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed_run(run, index, encoder, files: list[Path], **kwargs) -> dict[str, Any]:
    marks: list[tuple[float, int]] = []  # (seconds since start, files done) at each checkpoint
    start = time.perf_counter()
    summary = run(index, encoder, [str(f) for f in files], on_progress=lambda p: marks.append((time.perf_counter() - start,
                                                                                     p.done)), **kwargs)
    wall = time.perf_counter() - start
    first_t, first_done = marks[0] if marks else (wall, 0)
    last_t, last_done = marks[-1] if marks else (wall, 0)
    steady = (last_done - first_done) / (last_t - first_t) if last_t > first_t else None
    return {
        "indexed": summary.indexed,
        "failed": summary.failed,
        "seconds": rnd(wall),
        "images_per_s": rnd(summary.indexed / wall, 2) if wall > 0 else None,
        "first_result_s": rnd(first_t),
        "steady_images_per_s": rnd(steady, 2) if steady else None,
        "checkpoints": len(marks),
        "engine": summary.engine,
    }


def max_vector_difference(a, b) -> float:
    import numpy as np

    def by_path(index):
        files = index.catalog.known_files()
        vecs = index.catalog.vectors_for([f.id for f in files.values()], index.dim)
        return {p: vecs[f.id] for p, f in files.items() if f.id in vecs}

    va, vb = by_path(a), by_path(b)
    if sorted(va) != sorted(vb):
        raise SystemExit("the two runs indexed different files")
    return max((float(np.abs(va[p] - vb[p]).max()) for p in va), default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="12-MP JPEGs to index (default 200)")
    ap.add_argument("--model", default="offline", help="offline (default) or an open_clip architecture")
    ap.add_argument("--pretrained", default=None, help="open_clip weights; default: seeded random weights")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray cluster")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="photos the 12-MP set is made from")
    ap.add_argument("--cache", type=Path, default=None, help="keep the generated 12-MP photos here")
    args = ap.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    load_start = loadavg()
    import ray

    from retriever.distributed import run_index_ray
    from retriever.encoders import ModelSpec, create_encoder
    from retriever.index import Index
    from retriever.indexer import run_index

    result: dict[str, Any] = {"benchmark": "ray_overhead", "model": args.model, "n": args.n, "cpus": args.cpus,
                              "batch_size": args.batch_size}
    with stdout_to_stderr(), cache_folder(args.cache, "retriever-ray-bench-") as cache, \
            tempfile.TemporaryDirectory(prefix="retriever-ray-home-") as home:
        photos = photo_set(args.source, args.n, cache)
        result["photos"] = {"count": len(photos.paths), "generated": photos.generated, "reused": photos.reused,
                            **photos.params}
        weights = args.pretrained
        if args.model != "offline" and weights is None:
            weights = random_weights_file(args.model, Path(home))[0]
        spec = ModelSpec(name=args.model, pretrained=weights, device="cpu", batch_size=args.batch_size)
        t = time.perf_counter()
        encoder = create_encoder(spec)
        result["model_load_s"] = rnd(time.perf_counter() - t)

        def fresh(name: str) -> Index:
            index = Index.create(Path(home), name, spec, encoder.model_id, encoder.dim)
            index.acquire_lock()
            return index

        log(f"local engine: {len(photos.paths)} photos ...")
        local = fresh("local")
        result["local"] = timed_run(run_index, local, encoder, photos.paths)
        log(f"  {result['local']}")

        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=512 << 20, log_to_driver=False)
        result["ray_init_s"] = rnd(time.perf_counter() - t)
        log(f"ray engine ({args.cpus} CPUs, cluster started in {result['ray_init_s']} s) ...")
        distributed = fresh("ray")
        try:
            result["ray"] = timed_run(run_index_ray, distributed, encoder, photos.paths, device="cpu",
                                      batch_size=args.batch_size)
        finally:
            ray.shutdown()
        log(f"  {result['ray']}")
        result["max_vector_difference"] = max_vector_difference(local, distributed)
        local.close()
        distributed.close()
    lr, rr = result["local"]["images_per_s"], result["ray"]["images_per_s"]
    result["ray_over_local"] = rnd(rr / lr, 3) if lr and rr else None
    steady = result["ray"]["steady_images_per_s"]
    result["ray_steady_over_local"] = rnd(steady / lr, 3) if lr and steady else None
    result["env"] = env_info(load_start)
    result["env"]["ray"] = ray.__version__
    result["env"]["loadavg_1m_end"] = loadavg()

    print(json.dumps(result))
    rows = [("local", result["local"]), ("ray", result["ray"])]
    print()
    print(f"{len(photos.paths)} 12-MP JPEGs, {args.model}, batch {args.batch_size}, {args.cpus} CPUs "
          f"(load average {load_start} -> {result['env']['loadavg_1m_end']})")
    print(f"{'engine':<8}{'images/s':>10}{'seconds':>10}{'first batch s':>15}{'steady images/s':>17}")
    for name, r in rows:
        print(f"{name:<8}{r['images_per_s']:>10}{r['seconds']:>10}{r['first_result_s']:>15}"
              f"{str(r['steady_images_per_s']):>17}")
    print(f"ray cluster start {result['ray_init_s']} s (not in the ray row); ray/local {result['ray_over_local']}, "
          f"steady ray/local {result['ray_steady_over_local']}; max |vector difference| "
          f"{result['max_vector_difference']:.2e}")


if __name__ == "__main__":
    main()
