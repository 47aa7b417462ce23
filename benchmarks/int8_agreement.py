"""`--precision int8` against fp32 on real photos: how far the vectors move, how far the results
move, what it does to retrieval quality, and the speed-up.

    python benchmarks/int8_agreement.py                                    # offline encoder
    python benchmarks/int8_agreement.py --model ViT-B-32-256 --random-weights
    python benchmarks/int8_agreement.py --data ../shared/datasets/caltech101-test --n 1000

Both towers are the ones `retriever index --precision fp32|int8` uses: two throwaway indexes of
the model are created through the library (retriever.open) in a temporary home and model cache,
which exports the model and derives its int8 image tower; their ONNX encoders (text tower fp32 on
both sides, image tower fp32 or int8) then embed the same --n photos of --data (every k-th file,
all classes). Figures:
  mean_cosine / p01_cosine   cosine between each photo's fp32 and int8 vector (mean, 1st percentile)
  text_top10_overlap         50 text queries ("a photo of a {class}" for 50 classes): |top-10 of
                             fp32 ∩ top-10 of int8| / 10, averaged
  image_top10_overlap        50 image queries (photos of the set, each side with its own tower's
                             vector, the query itself left out): the same overlap
  quality                    benchmarks/quality.py's t2i_map, t2i_p10, i2i_p10 on the photos,
                             fp32 and int8, and the drop (nothing here is fitted: the photos are
                             only a report split)
  images_per_s               each image tower on the photos (decode and preprocessing excluded)
The rule of issue 14: int8 may become the CPU default only if both overlaps are at least 0.95
and the offline encoder's quality figures drop by at most 0.01.

Prints FIRST one JSON line holding every figure, THEN a readable table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from quality import (  # noqa: E402
    IMAGE_EXTENSIONS,
    QUERY_TEMPLATE,
    class_query_name,
    image_to_image,
    load_rgb,
    text_to_image,
)
from speed import cpu_name, loadavg, make_random_weights, stdout_to_stderr  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "caltech101-test"
QUERIES = 50
K = 10


def log(msg: str) -> None:
    print(f"[int8_agreement] {msg}", file=sys.stderr, flush=True)


def pick_photos(root: Path, n: int) -> tuple[list[Path], list[str]]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SystemExit(f"no images under {root}")
    step = max(1, len(files) // n)
    chosen = files[::step][:n]
    return chosen, [p.parent.name for p in chosen]


def encoders(model: str, pretrained: str | None, work: Path) -> dict[str, Any]:
    """{"fp32": OnnxEncoder, "int8": OnnxEncoder} of two throwaway indexes of the model."""
    import retriever
    from retriever.onnx import onnx_encoder_for

    out = {}
    for precision in ("fp32", "int8"):
        new = retriever.NewIndex(model=model, pretrained=pretrained, precision=precision,
                                 cache_dir=str(work / "cache"))
        with retriever.open(home=work / "home", index=precision, writable=True, new=new, device="cpu"):
            pass  # created: the export is attached when it closes
        c = retriever.open(home=work / "home", index=precision)
        encoder = onnx_encoder_for(c.idx)
        if encoder is None or not encoder.embeds_images:
            raise SystemExit(f"no ONNX image tower for {model} at {precision}")
        out[precision] = (encoder, c.idx.catalog.get_setting("onnx"))
    return out


def embed(encoder, images: list[Any]) -> tuple[np.ndarray, float]:
    pixels = [encoder.preprocess(im) for im in images]
    encoder.embed_preprocessed(pixels[:8])  # warm-up
    start = time.perf_counter()
    vectors = np.concatenate([encoder.embed_preprocessed(pixels[i:i + 32]) for i in range(0, len(pixels), 32)])
    return vectors, len(pixels) / (time.perf_counter() - start)


def top(scores: np.ndarray, k: int, leave_out: int | None = None) -> set[int]:
    order = np.argsort(-scores, kind="stable")
    return {int(i) for i in [j for j in order[: k + 1] if j != leave_out][:k]}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    load_start = loadavg()
    pretrained = args.pretrained
    if args.random_weights:
        with stdout_to_stderr():
            pretrained = str(make_random_weights(args.model, work))
    log(f"{args.model}: exporting and quantizing (throwaway indexes in {work}) ...")
    towers = encoders(args.model, pretrained, work)
    paths, labels = pick_photos(args.data, args.n)
    log(f"{len(paths)} photos of {len(set(labels))} classes from {args.data}")
    images = [load_rgb(p) for p in paths]
    vectors, rates = {}, {}
    for precision, (encoder, _) in towers.items():
        vectors[precision], rates[precision] = embed(encoder, images)
        log(f"  {precision}: {rates[precision]:.1f} images/s")
    a, b = vectors["fp32"], vectors["int8"]
    cosines = np.sum(a * b, axis=1)
    classes = sorted(set(labels))
    label_ids = np.array([classes.index(x) for x in labels])

    rng = np.random.default_rng(0)
    query_classes = [classes[i] for i in sorted(rng.choice(len(classes), min(QUERIES, len(classes)), replace=False))]
    text = towers["fp32"][0].embed_texts([QUERY_TEMPLATE.format(class_query_name(c)) for c in query_classes])
    text_overlap = [len(top(text[i] @ a.T, K) & top(text[i] @ b.T, K)) / K for i in range(len(query_classes))]
    image_queries = sorted(rng.choice(len(paths), min(QUERIES, len(paths)), replace=False))
    image_overlap = [len(top(a @ a[q], K, q) & top(b @ b[q], K, q)) / K for q in image_queries]

    quality = {}
    for precision, v in vectors.items():
        t2i = text_to_image(towers["fp32"][0], v, label_ids, classes)
        quality[precision] = {"t2i_map": round(t2i["t2i_map"], 4), "t2i_p10": round(t2i["t2i_p10"], 4),
                              "i2i_p10": round(image_to_image(v, label_ids), 4)}
    drop = {k: round(quality["fp32"][k] - quality["int8"][k], 4) for k in quality["fp32"]}
    result = {
        "benchmark": "int8_agreement", "model": args.model,
        "weights": "random, torch.manual_seed(0)" if args.random_weights else (pretrained or "shipped"),
        "photos": len(paths), "classes": len(classes), "data": str(args.data),
        "int8_record": towers["int8"][1].get("int8"),
        "mean_cosine": round(float(cosines.mean()), 5), "p01_cosine": round(float(np.percentile(cosines, 1)), 5),
        "min_cosine": round(float(cosines.min()), 5),
        "text_top10_overlap": round(float(np.mean(text_overlap)), 4), "text_queries": len(text_overlap),
        "image_top10_overlap": round(float(np.mean(image_overlap)), 4), "image_queries": len(image_overlap),
        "quality": quality, "quality_drop": drop,
        "images_per_s": {k: round(v, 2) for k, v in rates.items()},
        "speedup": round(rates["int8"] / rates["fp32"], 3),
        "default_rule": {"overlap_at_least": 0.95, "quality_drop_at_most": 0.01,
                         "met": bool(np.mean(text_overlap) >= 0.95 and np.mean(image_overlap) >= 0.95
                                     and max(drop.values()) <= 0.01)},
        "cpu": cpu_name(), "cores": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": loadavg(),
    }
    return result


def table(r: dict[str, Any]) -> str:
    q = r["quality"]
    lines = [f"int8 against fp32: {r['model']} ({r['weights']}), {r['photos']} photos of {r['classes']} classes, "
             f"{r['cores']} cores ({r['cpu']}), load {r['loadavg_start']} -> {r['loadavg_end']}", "",
             "| figure | value |", "|---|---|",
             f"| cosine fp32 vs int8: mean / 1st percentile / least | {r['mean_cosine']} / {r['p01_cosine']} / "
             f"{r['min_cosine']} |",
             f"| top-10 overlap, {r['text_queries']} text queries | {r['text_top10_overlap']} |",
             f"| top-10 overlap, {r['image_queries']} image queries | {r['image_top10_overlap']} |",
             f"| image tower images/s fp32 / int8 | {r['images_per_s']['fp32']} / {r['images_per_s']['int8']} "
             f"({r['speedup']}x) |", "",
             "| quality | fp32 | int8 | drop |", "|---|---|---|---|"]
    for k in q["fp32"]:
        lines.append(f"| {k} | {q['fp32'][k]} | {q['int8'][k]} | {r['quality_drop'][k]} |")
    rule = r["default_rule"]
    lines += ["", f"default rule (overlaps ≥ {rule['overlap_at_least']}, quality drop ≤ {rule['quality_drop_at_most']}):"
                  f" {'met' if rule['met'] else 'NOT met'}"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="offline", help="offline (default) or an open_clip architecture")
    ap.add_argument("--pretrained", default=None, help="open_clip tag or weights file")
    ap.add_argument("--random-weights", action="store_true", help="seeded random weights for --model (no download)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of class folders (only read)")
    ap.add_argument("--n", type=int, default=1000, help="photos taken from --data, every k-th")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="int8-agreement-"))
    try:
        result = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
