"""ONNX Runtime vs PyTorch eager: text-query latency, process start to first result, image tower.

    python benchmarks/onnx_speed.py                      # ViT-B-32 (seeded random weights) and offline
    python benchmarks/onnx_speed.py --model offline
    python benchmarks/onnx_speed.py --model ViT-B-32 --pretrained ~/weights/vit-b-32.safetensors

Prints FIRST one JSON line holding every figure, THEN a readable table. Progress goes to stderr.
Everything is written under a temporary folder, deleted at the end.

For each model, in one run:
  1. Export: an index of examples/photos is created, its encoder exported with
     Index.export_onnx (seconds, file sizes, max abs difference per tower vs PyTorch).
  2. Text-query latency in process, one query at a time as `retriever search` embeds it
     (tokenizer included): p50/p95 over --queries distinct queries, after a warm-up, for the
     PyTorch encoder and for the ONNX text encoder.
  3. Process start to first result: a fresh `python -c` that opens the index and answers one text
     query through retriever.search.Searcher, timed from outside (median of --runs): with the
     ONNX export (no torch import) and with the PyTorch encoder forced.
  4. Image tower throughput at --batch images per call (preprocessed pixels in, embeddings out):
     images/s for PyTorch eager and ONNX Runtime, median of --image-runs calls after a warm-up.

Random weights time exactly like real ones (same architecture, same FLOPs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

PHOTOS = REPO / "examples" / "photos"
SUBJECTS = ("cat", "dog", "astronaut", "rocket launch", "cup of coffee", "old coins", "red flower", "brick wall",
            "man with a camera", "wall clock", "palace by a lake", "starry night sky", "green grass",
            "snowy mountain", "sunset over the sea", "birthday cake", "city street at night", "sailing boat")
TEMPLATES = ("a photo of a {}", "{}", "a blurry photo of the {}", "my {} last summer")

FIRST_RESULT = """
import sys, time
from retriever.index import Index
from retriever.search import Searcher
index = Index.open(sys.argv[1], "default")
if sys.argv[2] == "torch":
    searcher = Searcher(index, encoder=index.load_encoder("cpu"))
else:
    searcher = Searcher(index, device="cpu")
hits = searcher.text("a cat on a sofa", k=10)
assert hits
print(type(searcher.query_encoder).__name__, "torch" in sys.modules)
"""


def log(msg: str) -> None:
    print(f"[onnx_speed] {msg}", file=sys.stderr, flush=True)


def pct(values, q: float) -> float:
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def queries(n: int) -> list[str]:
    out = [t.format(s) for t in TEMPLATES for s in SUBJECTS]
    return out[:n]


def text_latency_ms(encoder, texts: list[str]) -> dict[str, float]:
    for q in texts[:3]:
        encoder.embed_texts([q])  # warm-up (allocations, caches, thread pools)
    times = []
    for q in texts:
        start = time.perf_counter()
        encoder.embed_texts([q])
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": round(pct(times, 0.5), 2), "p95": round(pct(times, 0.95), 2)}


def first_result_s(home: Path, mode: str, runs: int) -> tuple[float, str]:
    times, said = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", FIRST_RESULT, str(home), mode], capture_output=True, text=True,
                              cwd=REPO, check=True)
        times.append(time.perf_counter() - start)
        said = done.stdout.strip()
    return round(statistics.median(times), 3), said


def images_per_s(fn, pixels, runs: int) -> float:
    fn(pixels)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(pixels)
        times.append(time.perf_counter() - start)
    return round(len(pixels) / statistics.median(times), 1)


def bench_model(name: str, pretrained: str | None, work: Path, args) -> dict:
    import numpy as np
    from PIL import Image

    from retriever.encoders import ModelSpec, create_encoder
    from retriever.index import Index
    from retriever.indexer import run_index
    from retriever.onnx import OnnxEncoder, export_folder, make_session, valid_record

    home = work / f"home-{name.replace('/', '_')}"
    spec = ModelSpec(name=name, pretrained=pretrained, device="cpu")
    start = time.perf_counter()
    encoder = create_encoder(spec)
    load_s = time.perf_counter() - start
    index = Index.create(home, "default", spec, encoder.model_id, encoder.dim)
    index.acquire_lock()
    run_index(index, encoder, [str(PHOTOS)])
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))[:4]]
    log(f"{name}: exporting")
    start = time.perf_counter()
    # a model cache of its own: the export is made (and timed) here, not found from an earlier run
    report = index.export_onnx(encoder, images=photos, cache_dir=work / "model-cache")
    export_s = time.perf_counter() - start
    index.release_lock()
    if not report.ok:
        raise SystemExit(f"{name}: export refused: {report.reason}")
    folder = export_folder(index, valid_record(index))  # the index's entry of the model cache
    sizes = {t: round(sum((folder / f).stat().st_size for f in (r.file, r.data) if f) / 1e6, 1)
             for t, r in report.towers.items()}

    log(f"{name}: text latency")
    texts = queries(args.queries)
    onnx_text = OnnxEncoder(folder, valid_record(index))
    text = {"torch": text_latency_ms(encoder, texts), "onnx": text_latency_ms(onnx_text, texts)}

    log(f"{name}: process start to first result")
    first = {}
    for mode in ("onnx", "torch"):
        seconds, said = first_result_s(home, mode, args.runs)
        first[mode] = {"s": seconds, "encoder_and_torch_imported": said}

    log(f"{name}: image tower at batch {args.batch}")
    preprocessed = [encoder.preprocess(im) for im in photos]
    pixels = np.stack([preprocessed[i % len(preprocessed)] for i in range(args.batch)]).astype(np.float32)
    session = make_session(folder / report.towers["image"].file)
    image = {
        "torch": images_per_s(lambda x: encoder.embed_preprocessed(list(x)), pixels, args.image_runs),
        "onnx": images_per_s(lambda x: session.run(["embedding"], {"pixels": x}), pixels, args.image_runs),
    }
    index.close()
    return {
        "model_id": encoder.model_id, "dim": encoder.dim, "model_load_s": round(load_s, 2),
        "export_s": round(export_s, 2), "onnx_mb": sizes,
        "max_abs_diff": {t: r.max_abs_diff for t, r in report.towers.items()},
        "opset": report.opset, "text_query_ms": text, "first_result_s": first, "image_per_s": image,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["both", "ViT-B-32", "offline"], default="both")
    parser.add_argument("--pretrained", help="ViT-B-32 weights file (default: seeded random weights)")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3, help="subprocess runs for start to first result")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-runs", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import onnxruntime
    import torch

    work = Path(tempfile.mkdtemp(prefix="onnx-speed-"))
    os.environ["XDG_CACHE_HOME"] = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    results = {}
    try:
        if args.model in ("both", "ViT-B-32"):
            weights = args.pretrained
            if weights is None:
                from speed import make_random_weights

                weights = str(make_random_weights("ViT-B-32", work))
            results["ViT-B-32"] = bench_model("ViT-B-32", weights, work, args)
        if args.model in ("both", "offline"):
            results["offline"] = bench_model("offline", None, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    record = {
        "bench": "onnx_speed", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "batch": args.batch, "models": results,
    }
    print(json.dumps(record), flush=True)
    rows = [("", *results)]

    def row(label, get):
        rows.append((label, *[get(r) for r in results.values()]))

    row("export (s)", lambda r: f"{r['export_s']}")
    row("ONNX size text / image (MB)", lambda r: f"{r['onnx_mb']['text']} / {r['onnx_mb']['image']}")
    row("max |diff| text / image", lambda r: f"{r['max_abs_diff']['text']:.1e} / {r['max_abs_diff']['image']:.1e}")
    row("text query p50 torch (ms)", lambda r: f"{r['text_query_ms']['torch']['p50']}")
    row("text query p50 ONNX (ms)", lambda r: f"{r['text_query_ms']['onnx']['p50']}")
    row("text query p95 torch / ONNX (ms)",
        lambda r: f"{r['text_query_ms']['torch']['p95']} / {r['text_query_ms']['onnx']['p95']}")
    row("start -> first result, torch (s)", lambda r: f"{r['first_result_s']['torch']['s']}")
    row("start -> first result, ONNX (s)", lambda r: f"{r['first_result_s']['onnx']['s']}")
    row(f"image tower, batch {args.batch}, torch (img/s)", lambda r: f"{r['image_per_s']['torch']}")
    row(f"image tower, batch {args.batch}, ONNX (img/s)", lambda r: f"{r['image_per_s']['onnx']}")
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
