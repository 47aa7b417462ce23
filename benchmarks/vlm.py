"""Vision-language model costs: reranking, `ask`, captions; image tokens per photo; peak memory.

    python benchmarks/vlm.py                                   # tiny random SmolVLM (Idefics3) + LLaVA
    python benchmarks/vlm.py --vlm ~/models/SmolVLM-256M-Instruct
    python benchmarks/vlm.py --vlm HuggingFaceTB/SmolVLM-Instruct --device cuda --batch-sizes 1,8,16,32

Without --vlm, the models are the tiny randomly initialised ones the tests build offline
(tests/tiny_vlm.py): their times are retriever's own overhead and the structure of the work
(decoding, processor, batching, generate loop), not what a real model costs. With --vlm, any
folder or cached hub id `retriever --vlm` accepts.

For each model, in a fresh subprocess (so that peak memory is that model's):
  load_s                  load_vlm (processor + weights), imports excluded
  image_tokens_per_photo  image tokens one 4:3 photo becomes, with retriever's bounds
  rerank_s_per_candidate  score_photos over --candidates photos at each --batch-sizes value:
                          median of --repeat runs after one warm-up run, divided by the count
  ask_k4_s                one `ask` with 4 photos, the answer forced to --answer-tokens tokens
                          (generation_config.min_new_tokens), median of --repeat
  caption_s_per_photo     caption_photos at the default batch size, --caption-tokens tokens each
  peak_rss_mb             the subprocess's peak resident memory (ru_maxrss), imports included
  peak_cuda_mb            torch.cuda.max_memory_allocated, on CUDA
Photos are examples/photos, decoded once beforehand (decode_ms_per_photo, reported apart).

Then the published figures of the models retriever knows by name (retriever/vlm/models.py): not
measured here. Prints FIRST one JSON line holding every figure, THEN a readable table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PHOTOS = REPO / "examples" / "photos"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vlm", action="append", metavar="MODEL",
                   help="a model folder or hub id (repeatable); default: the tiny random test models")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto  [default: cpu]")
    p.add_argument("--candidates", type=int, default=16, help="photos scored per rerank run  [16]")
    p.add_argument("--batch-sizes", default="1,4,8", help="rerank batch sizes  [1,4,8]")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per figure (median)  [3]")
    p.add_argument("--answer-tokens", type=int, default=32, help="tokens generated per ask  [32]")
    p.add_argument("--caption-tokens", type=int, default=20, help="tokens generated per caption  [20]")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads(N); 0 = torch's default")
    p.add_argument("--one", metavar="MODEL", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return 0
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="retriever-vlm-bench-") as tmp:
        models = args.vlm or build_tiny(Path(tmp))
        results = [run_one(model, args) for model in models]
    out = {
        "benchmark": "vlm",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_before": load_before},
        "settings": {k: getattr(args, k) for k in ("device", "candidates", "batch_sizes", "repeat",
                                                    "answer_tokens", "caption_tokens", "threads")},
        "tiny_models": not args.vlm,
        "models": results,
        "published": published(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out["machine"]["load_after"] = os.getloadavg()[0]
    print(json.dumps(out), flush=True)
    print(table(out))
    return 0


def build_tiny(folder: Path) -> list[str]:
    from tests.tiny_vlm import BUILDERS

    return [str(build(folder / name)) for name, build in BUILDERS.items()]


def run_one(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one model in a fresh interpreter: its peak memory is then its own."""
    print(f"measuring {model} ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, __file__, "--one", model, "--device", args.device, "--candidates", str(args.candidates),
           "--batch-sizes", args.batch_sizes, "--repeat", str(args.repeat), "--answer-tokens", str(args.answer_tokens),
           "--caption-tokens", str(args.caption_tokens), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"model": model, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(model: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from retriever.vlm.ask import ask
    from retriever.vlm.captions import caption_photos
    from retriever.vlm.model import load_vlm
    from retriever.vlm.photos import load_photo
    from retriever.vlm.rerank import score_photos

    import transformers

    transformers.AutoProcessor, transformers.AutoModelForImageTextToText  # lazy imports resolved: not in load_s

    if args.threads:
        torch.set_num_threads(args.threads)
    names = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".png", ".webp"))
    t = time.perf_counter()
    photos = [load_photo(str(p)) for p in names]
    decode_ms = 1000 * (time.perf_counter() - t) / len(photos)
    candidates = [photos[i % len(photos)] for i in range(args.candidates)]

    t = time.perf_counter()
    vlm = load_vlm(model, args.device)
    load_s = time.perf_counter() - t
    cuda = vlm.device.startswith("cuda")

    def timed(fn) -> float:
        fn()  # warm-up: first-call kernel selection, allocator growth
        runs = []
        for _ in range(args.repeat):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    rerank = {}
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        seconds = timed(lambda: score_photos(vlm, "a cat sleeping on a sofa", candidates, batch_size=size))
        rerank[str(size)] = round(seconds / len(candidates), 4)

    vlm.model.generation_config.min_new_tokens = args.answer_tokens  # a fixed-length answer
    answer = {}

    def ask_once():
        answer["a"] = ask(vlm, "Which photo shows a cat, and what is it doing?", photos[:4], args.answer_tokens)

    ask_s = timed(ask_once)
    vlm.model.generation_config.min_new_tokens = args.caption_tokens
    batch = photos[: vlm.default_batch_size]
    caption_s = timed(lambda: caption_photos(vlm, batch, args.caption_tokens)) / len(batch)
    return {
        "model": vlm.model_id if not Path(model).is_dir() else Path(model).name,
        "family": vlm.family,
        "device": vlm.device,
        "dtype": vlm.dtype,
        "parameters": sum(p.numel() for p in vlm.model.parameters()),
        "image_tokens_per_photo": vlm.image_tokens_per_photo,
        "image_policy": vlm.image_policy,
        "load_s": round(load_s, 3),
        "decode_ms_per_photo": round(decode_ms, 2),
        "rerank_s_per_candidate": rerank,
        "ask_k4_s": round(ask_s, 4),
        "ask_k4_prompt_tokens": answer["a"].prompt_tokens,
        "ask_answer_tokens": args.answer_tokens,
        "caption_s_per_photo": round(caption_s, 4),
        "caption_batch": len(batch),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }


def published() -> list[dict[str, Any]]:
    from retriever.vlm.models import DEFAULT_CPU, DEFAULT_CUDA, KNOWN_VLMS

    rows = []
    for m in KNOWN_VLMS:
        default = "CPU default" if m.id == DEFAULT_CPU else "CUDA default" if m.id == DEFAULT_CUDA else ""
        rows.append({"model": m.id, "family": m.family, "params": m.params, "image_tokens": m.image_tokens,
                     "default_image_tokens": m.default_image_tokens, "input": m.input, "source": m.source,
                     "default": default})
    return rows


def table(out: dict[str, Any]) -> str:
    lines = []
    kind = "tiny random models (overhead and structure, not real-model cost)" if out["tiny_models"] else "models"
    lines.append(f"Measured: {kind}, device {out['settings']['device']}, {out['machine']['cpus']} CPUs, "
                 f"load {out['machine']['load_before']:.1f} -> {out['machine']['load_after']:.1f}")
    sizes = out["settings"]["batch_sizes"].split(",")
    header = ["model", "params", "img tok", "load s"] + [f"rerank b{s} s/cand" for s in sizes] + [
        "ask k=4 s", "caption s/photo", "peak RSS MB"]
    rows = []
    for m in out["models"]:
        if "error" in m:
            rows.append([m["model"], "error: " + m["error"]] + [""] * (len(header) - 2))
            continue
        rows.append([m["model"], _count(m["parameters"]), str(m["image_tokens_per_photo"]), f"{m['load_s']:.2f}"]
                    + [f"{m['rerank_s_per_candidate'][s]:.4f}" for s in sizes]
                    + [f"{m['ask_k4_s']:.3f}", f"{m['caption_s_per_photo']:.4f}", f"{m['peak_rss_mb']:.0f}"])
    lines += _grid(header, rows)
    lines.append("")
    lines.append("Published (not measured): sizes and image tokens per photo")
    lines += _grid(["model", "params", "image tokens (retriever)", "image tokens (model default)", "input", "note"],
                   [[p["model"], p["params"], p["image_tokens"], p["default_image_tokens"], p["input"], p["default"]]
                    for p in out["published"]])
    lines.append("")
    lines += [f"  {p['model']}: {p['source']}" for p in out["published"]]
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]


if __name__ == "__main__":
    sys.exit(main())
