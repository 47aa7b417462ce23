"""Indexing on a CUDA GPU: images/s of the bare encoder and of the whole pipeline, and how many
decode workers it takes to keep the GPU busy. For a machine with a GPU; without one it says so in
one line and exits (status 1).

    python benchmarks/gpu.py                                   # ViT-B-32 (seeded random weights), 512 12-MP JPEGs
    python benchmarks/gpu.py --model offline --n 256           # the offline encoder
    python benchmarks/gpu.py --workers 1,2,4,8,16 --cache ~/.cache/retriever-bench   # keep the 12-MP files
    python benchmarks/gpu.py --device cuda:1 --pretrained ~/models/vit-b-32.safetensors

  encoder    `encoder.embed_preprocessed` on preprocessed arrays already in memory, --batch-size a
             pass (default 256, retriever's CUDA default), after one warm-up pass: what the GPU
             does when nothing waits on decoding (host -> GPU copies and the vectors' copy back
             included). `forward` is the model alone on a batch already on the GPU, synchronised:
             the ceiling.
  decode     retriever's decode step (indexer.prepare: read, fingerprint, draft decode,
             preprocess) over the photos in W worker processes, no model: photos/s per W.
  pipeline   `run_index` into a fresh index per W (--pool, default process: retriever's default
             on CUDA), the model on the GPU: photos/s end to end, and that rate over the encoder's
             (the share of the GPU's speed the decode workers deliver).

The 12-MP JPEGs come from benchmarks/draft_agreement.py's generator (real photos from
../shared/datasets/caltech101-test, only read). Nothing is downloaded: open_clip models get seeded
random weights unless --pretrained is given (they time the same as trained ones).

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
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def require_gpu(device: str) -> None:
    """One line and exit status 1 where torch sees no CUDA GPU (or not the one named)."""
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a build without CUDA"
        raise SystemExit(f"benchmarks/gpu.py: no CUDA GPU here (torch {torch.__version__}, {build}: "
                         "torch.cuda.is_available() is False); run it on a machine with one")
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise SystemExit(f"benchmarks/gpu.py: --device {device}, but this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s)")


def parse_workers(text: str) -> list[int]:
    cpus = os.cpu_count() or 1
    counts = sorted({int(w) for w in text.split(",") if w.strip()})
    return [w for w in counts if 1 <= w <= cpus] or [1]


def measure_encoder(encoder, inputs: Sequence[Any], batch: int) -> dict[str, Any]:
    import torch

    encoder.embed_preprocessed(list(inputs[:batch]))  # warm-up: kernels chosen, memory pooled
    torch.cuda.synchronize()
    t = time.perf_counter()
    encoder.embed_preprocessed(list(inputs))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    out: dict[str, Any] = {"images": len(inputs), "seconds": round(seconds, 3),
                           "images_per_s": round(len(inputs) / seconds, 1)}
    forward = getattr(getattr(encoder, "model", None), "encode_image", None)
    if forward is not None:  # open_clip: the model alone, the batch already on the GPU
        from retriever.encoders.base import to_device

        pixels = to_device(list(inputs[:batch]), encoder.device)
        with torch.inference_mode(), encoder._autocast():
            forward(pixels)
            torch.cuda.synchronize()
            t, passes = time.perf_counter(), 5
            for _ in range(passes):
                forward(pixels)
            torch.cuda.synchronize()
        out["forward_images_per_s"] = round(passes * len(pixels) / (time.perf_counter() - t), 1)
    return out


def measure_decode(paths: Sequence[Path], preprocessor, draft: int, workers: int) -> dict[str, Any]:
    """indexer.prepare over `paths` in retriever's own worker processes (decode_pool), no model."""
    from retriever.decode_pool import _make_pool
    from retriever.indexer import _Task, prepare
    from retriever.video import DEFAULT_EVERY_S

    def task(path: Path) -> _Task:
        st = path.stat()
        return _Task(str(path), st.st_size, st.st_mtime_ns, None)

    pool, submit = _make_pool("process", workers, prepare, preprocessor, draft, frozenset(), DEFAULT_EVERY_S)
    try:
        for f in [submit(task(paths[0])) for _ in range(workers)]:  # the workers started and warm
            f.result()
        t = time.perf_counter()
        ok = sum(f.result().error is None for f in [submit(task(p)) for p in paths])
        seconds = time.perf_counter() - t
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return {"workers": workers, "decoded": ok, "seconds": round(seconds, 3),
            "images_per_s": round(len(paths) / seconds, 1)}


def measure_pipeline(encoder, spec, paths: Sequence[Path], workers: int, pool: str, home: Path) -> dict[str, Any]:
    import torch

    from retriever.index import Index
    from retriever.indexer import IndexOptions, run_index

    with Index.create(home, f"w{workers}", spec, encoder.model_id, encoder.dim) as index:
        index.acquire_lock()
        torch.cuda.synchronize()
        t = time.perf_counter()
        summary = run_index(index, encoder, [str(p) for p in paths], IndexOptions(workers=workers, pool=pool))
        seconds = time.perf_counter() - t
    return {"workers": workers, "pool": pool, "indexed": summary.indexed, "failed": summary.failed,
            "seconds": round(seconds, 3), "images_per_s": round(summary.indexed / seconds, 1),
            "backend": summary.backend, "notices": summary.notices}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda or cuda:N (default cuda)")
    ap.add_argument("--model", default="ViT-B-32", help="an open_clip architecture (default ViT-B-32) or offline")
    ap.add_argument("--pretrained", default=None, help="open_clip weights; default: seeded random weights")
    ap.add_argument("--n", type=int, default=512, help="12-MP JPEGs for the pipeline (default 512)")
    ap.add_argument("--batch-size", type=int, default=256, help="images a forward pass (default 256)")
    ap.add_argument("--encoder-images", type=int, default=2048, help="preprocessed images the bare encoder is timed on")
    ap.add_argument("--workers", default="1,2,4,8,16", help="decode worker counts, up to the CPU count (default 1,2,4,8,16)")
    ap.add_argument("--pool", choices=["process", "thread"], default="process")
    ap.add_argument("--source", type=Path, default=None, help="photos the 12-MP set is made from")
    ap.add_argument("--cache", type=Path, default=None, help="keep the generated 12-MP photos here")
    args = ap.parse_args(argv)
    require_gpu(args.device)  # before anything slow: without a GPU there is nothing to measure

    import torch

    from draft_agreement import DEFAULT_SOURCE, cache_folder, env_info, photo_set, random_weights_file
    from speed import loadavg, stdout_to_stderr

    from retriever.encoders import ModelSpec, create_encoder
    from retriever.indexer import DRAFT_FACTOR

    load_start = loadavg()
    workers = parse_workers(args.workers)
    result: dict[str, Any] = {"benchmark": "gpu", "device": args.device, "model": args.model, "n": args.n,
                              "batch_size": args.batch_size, "pool": args.pool,
                              "gpu": torch.cuda.get_device_name(torch.device(args.device).index or 0)}
    with stdout_to_stderr(), cache_folder(args.cache, "retriever-gpu-bench-") as cache, \
            tempfile.TemporaryDirectory(prefix="retriever-gpu-home-") as home:
        photos = photo_set(args.source or DEFAULT_SOURCE, args.n, cache)
        result["photos"] = {"count": len(photos.paths), **photos.params}
        weights = args.pretrained
        if args.model != "offline" and weights is None:
            weights = random_weights_file(args.model, Path(home))[0]
        spec = ModelSpec(name=args.model, pretrained=weights, device=args.device, batch_size=args.batch_size)
        t = time.perf_counter()
        encoder = create_encoder(spec)
        result["model_load_s"] = round(time.perf_counter() - t, 3)
        result["half_dtype"] = str(getattr(encoder, "_half", None)).removeprefix("torch.")
        preprocessor = encoder.preprocessor()
        draft = DRAFT_FACTOR * encoder.input_size

        log(f"encoder: {args.encoder_images} preprocessed images, batch {args.batch_size} ...")
        from retriever.images import decode

        few = [preprocessor(decode(p.read_bytes(), str(p), draft_min_side=draft).image) for p in photos.paths[:32]]
        inputs = [few[i % len(few)] for i in range(args.encoder_images)]
        result["encoder"] = measure_encoder(encoder, inputs, args.batch_size)
        log(f"  {result['encoder']}")

        result["decode"], result["pipeline"] = [], []
        for w in workers:
            log(f"decode, {w} worker processes ...")
            result["decode"].append(measure_decode(photos.paths, preprocessor, draft, w))
            log(f"pipeline, {w} {args.pool} workers ...")
            row = measure_pipeline(encoder, spec, photos.paths, w, args.pool, Path(home))
            row["share_of_encoder"] = round(row["images_per_s"] / result["encoder"]["images_per_s"], 3)
            result["pipeline"].append(row)
            log(f"  decode {result['decode'][-1]['images_per_s']}/s, pipeline {row['images_per_s']}/s")
        one = result["decode"][0]["images_per_s"] / result["decode"][0]["workers"]
        result["decode_workers_to_feed_encoder"] = round(result["encoder"]["images_per_s"] / one, 1) if one else None
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["encoder_batch_note"] = encoder.batch_note
    result["env"] = env_info(load_start)
    result["env"]["cuda"] = torch.version.cuda

    print(json.dumps(result))
    print()
    enc = result["encoder"]
    print(f"{result['gpu']} ({args.device}), {args.model} in {result['half_dtype']}, batch {args.batch_size}; "
          f"{len(photos.paths)} 12-MP JPEGs")
    print(f"bare encoder {enc['images_per_s']} images/s"
          + (f" (model alone {enc['forward_images_per_s']} images/s)" if "forward_images_per_s" in enc else ""))
    print(f"{'workers':>8}{'decode/s':>10}{'pipeline/s':>12}{'of encoder':>12}")
    for d, p in zip(result["decode"], result["pipeline"]):
        print(f"{d['workers']:>8}{d['images_per_s']:>10}{p['images_per_s']:>12}{p['share_of_encoder']:>12}")
    print(f"decode workers one encoder needs: ~{result['decode_workers_to_feed_encoder']}; "
          f"peak GPU memory {result['peak_gpu_memory_mb']} MB")


if __name__ == "__main__":
    main()
