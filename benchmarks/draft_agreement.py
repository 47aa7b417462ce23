"""Draft decoding: how far do embeddings move when a 12-MP JPEG is decoded at reduced scale?

    python benchmarks/draft_agreement.py                          # 300 photos, offline + ViT-B-32
    python benchmarks/draft_agreement.py --cache ~/.cache/retriever-bench   # keep the 12-MP files
    python benchmarks/draft_agreement.py --n 50 --mosaics 0 --models offline   # quick look

`retriever.images.decode(data, draft_min_side=S)` lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8
scale (its DCT scaling) as long as both sides stay >= S. The indexer uses
S = DRAFT_FACTOR * encoder.input_size. This script measures, for S = f * input_size and each f of
--factors, the cosine similarity between a photo's embedding from a full decode and from the
draft decode (mean, 1st percentile, minimum), with each encoder's real preprocessing, and the
time each decode and preprocessing takes; then it recommends the smallest factor whose agreement
clears the thresholds (--min-mean, --min-p1) for every encoder on every image set, and whose worst
case (a draft decoded to about factor x input size) was measured for every encoder.

The photos, three sets, made from real photos (default ../shared/datasets/caltech101-test, only
read), each saved at quality 90 after mild Gaussian noise (sigma 3) so it is not blurry-smooth:

  upscaled    (--n, 300) one photo each, cropped to 4:3 (3:4 when portrait) and upscaled to
              4000x3000 (3000x4000): 12-megapixel files. The sources are small (~300x200), so these
              hold no detail between ~1/10 and full scale: a kind set for draft decoding.
  mosaic      (--mosaics, 100) a stress test: each 12-MP image is an 8x8 grid of 500x375 tiles, 64
              photos at about their own resolution, so there is detail (and hard edges) at every
              scale down to the pixel.
  mosaic_5mp  (--edge-mosaics, 100) the same at 2728x2048. libjpeg scales by 1/2, 1/4 or 1/8
              only, so the decoded short side lies between f and 2f times the input size depending
              on the photo's size; 3000 px gives factor 1 a 1.46-1.67x margin, 2048 px gives it none
              (1/8 -> 256 px, the offline encoder's input size) and gives factor 2 exactly 2x: each
              factor's worst case.

Prints FIRST one JSON line holding every figure, THEN a readable table; progress goes to stderr.
Nothing is downloaded: ViT-B-32 gets seeded random weights (saved to a temporary .pt file)
unless --pretrained is given.

The shared helpers (the 12-MP photo generator, the environment record) are imported by
benchmarks/indexing.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):  # run from a checkout without `pip install -e .`; speed.py's helpers
    if _p not in sys.path:
        sys.path.insert(0, _p)

from speed import cpu_name, loadavg, make_random_weights, pct, rnd, stdout_to_stderr  # noqa: E402

DEFAULT_SOURCE = REPO.parent / "shared" / "datasets" / "caltech101-test"
DEFAULT_FACTORS = (1.0, 1.5, 2.0, 3.0)
DEFAULT_MODELS = ("offline", "ViT-B-32")
LANDSCAPE = (4000, 3000)  # 12 MP, 4:3
MOSAIC_GRID = (8, 8)  # tiles of 500x375: about the sources' own resolution
# 5.6 MP: short side 2048 = 8 x 256 = 9.1 x 224, so a factor-1 draft decodes (1/8) to 256 px,
# about the models' input size, the least margin any size gives it (and factor 2 gets exactly 2x).
EDGE_SIZE = (2728, 2048)
GENERATOR_VERSION = 1  # bump when the generator changes: cached files get a new folder

RANDOM_WEIGHTS_NOTE = (
    "ViT-B-32 runs with seeded random weights (torch.manual_seed(0)), not trained ones: a random "
    "network may react to the small pixel differences of a draft decode more or less than a trained "
    "one, so its figures are indicative; the offline encoder's weights are trained (ImageNet)."
)
PREPROCESSING_NOTE = (
    "Each encoder's real preprocessing (encoder.preprocess: open_clip's validation transform at "
    "ViT-B-32's real 224-px input, the offline encoder's 256-then-crop-224 resize), unlike the test "
    "suite's tiny 64-px model that is there for speed only: the draft sizes and the resampling "
    "here are the ones a user's index gets."
)


def log(msg: str) -> None:
    print(f"[draft] {msg}", file=sys.stderr, flush=True)


# -- 12-MP photo sets (shared with indexing.py) -------------------------------------------------------


@dataclass
class PhotoSet:
    kind: str  # "upscale" or "mosaic"
    paths: list[Path]
    folder: Path
    generated: int = 0
    reused: int = 0
    generate_s: float = 0.0
    sources: int = 0  # source photos available
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        sizes = [p.stat().st_size for p in self.paths]
        return {
            "kind": self.kind,
            "n": len(self.paths),
            **self.params,
            "mean_file_mb": rnd(sum(sizes) / len(sizes) / 1e6, 2) if sizes else None,
            "total_mb": rnd(sum(sizes) / 1e6, 1),
            "generated": self.generated,
            "reused": self.reused,
            "generate_s": rnd(self.generate_s, 1),
            "folder": str(self.folder),
        }


def source_photos(folder: Path, seed: int = 0) -> list[Path]:
    """Every image under `folder`, in a seeded shuffle: the first n are a sample spread over classes,
    and the first 200 of 300 are the same photos (cached files are shared across --n)."""
    from retriever.files import walk

    paths = sorted(Path(e.path) for e in walk([str(folder)]))
    random.Random(seed).shuffle(paths)
    return paths


def _crop_to(image, aspect: float):
    """Centre crop to width / height = aspect."""
    w, h = image.size
    if w / h > aspect:
        new_w = max(1, round(h * aspect))
        left = (w - new_w) // 2
        return image.crop((left, 0, left + new_w, h))
    new_h = max(1, round(w / aspect))
    top = (h - new_h) // 2
    return image.crop((0, top, w, top + new_h))


def _open_rgb(path: Path):
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        return (ImageOps.exif_transpose(im) or im).convert("RGB")


def _add_noise_and_save(image, dest: Path, sigma: float, quality: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float32)
    if sigma > 0:
        rng = np.random.default_rng(seed)
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * sigma
    np.clip(pixels, 0, 255, out=pixels)
    out = Image.fromarray(np.rint(pixels).astype(np.uint8))
    tmp = dest.with_name(f".tmp-{os.getpid()}-{dest.name}")
    out.save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, dest)  # a half-written file never looks cached


def make_upscaled(src: Path, dest: Path, sigma: float, quality: int, seed: int,
                  landscape: tuple[int, int] = LANDSCAPE) -> None:
    """One photo cropped to 4:3 (3:4 if portrait), upscaled to 12 MP, noise added, saved."""
    from PIL import Image

    im = _open_rgb(src)
    portrait = im.height > im.width
    size = landscape[::-1] if portrait else landscape
    im = _crop_to(im, size[0] / size[1]).resize(size, Image.BICUBIC)
    _add_noise_and_save(im, dest, sigma, quality, seed)


def make_mosaic(srcs: Sequence[Path], dest: Path, sigma: float, quality: int, seed: int,
                size: tuple[int, int] = LANDSCAPE) -> None:
    """An 8x8 grid of tiles (500x375 at 12 MP), one photo each at about its own resolution: detail
    at every scale."""
    from PIL import Image

    cols, rows = MOSAIC_GRID
    tw, th = size[0] // cols, size[1] // rows
    canvas = Image.new("RGB", size)
    for k, src in enumerate(srcs[: cols * rows]):
        tile = _crop_to(_open_rgb(src), tw / th).resize((tw, th), Image.BICUBIC)
        canvas.paste(tile, ((k % cols) * tw, (k // cols) * th))
    _add_noise_and_save(canvas, dest, sigma, quality, seed)


def photo_set(
    source: Path,
    n: int,
    cache: Path,
    *,
    kind: str = "upscale",
    seed: int = 0,
    sigma: float = 3.0,
    quality: int = 90,
    size: tuple[int, int] = LANDSCAPE,
) -> PhotoSet:
    """n JPEGs of `size` (12 MP by default) made from the photos under `source`, generated into (or
    reused from) a folder of `cache` named after the generator's parameters. `source` is only read."""
    source = source.expanduser().resolve()
    srcs = source_photos(source, seed)
    if not srcs:
        raise SystemExit(f"no images under {source}")
    params = {"source": str(source), "seed": seed, "noise_sigma": sigma, "jpeg_quality": quality,
              "size": f"{size[0]}x{size[1]} (portrait {size[1]}x{size[0]})"}
    if kind == "mosaic":
        size = (size[0] // MOSAIC_GRID[0] * MOSAIC_GRID[0], size[1] // MOSAIC_GRID[1] * MOSAIC_GRID[1])
        params["size"] = f"{size[0]}x{size[1]}"
        params["grid"] = f"{MOSAIC_GRID[0]}x{MOSAIC_GRID[1]} tiles of {size[0] // MOSAIC_GRID[0]}x{size[1] // MOSAIC_GRID[1]}"
    key = hashlib.blake2b(
        json.dumps({"v": GENERATOR_VERSION, "kind": kind, **params}, sort_keys=True).encode(), digest_size=6
    ).hexdigest()
    folder = cache / f"{kind}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps({"generator_version": GENERATOR_VERSION, "kind": kind, **params}, indent=1))
    if kind == "upscale" and n > len(srcs):
        log(f"only {len(srcs)} source photos: --n {n} lowered to {len(srcs)}")
        n = len(srcs)
    out = PhotoSet(kind, [], folder, sources=len(srcs), params=params)
    t0 = time.perf_counter()
    for i in range(n):
        if kind == "upscale":
            src = srcs[i]
            dest = folder / f"{i:04d}-{src.parent.name}-{src.stem}.jpg"
        else:
            dest = folder / f"mosaic-{i:04d}.jpg"
        if dest.is_file() and dest.stat().st_size > 0:
            out.reused += 1
        else:
            if kind == "upscale":
                make_upscaled(src, dest, sigma, quality, seed * 1_000_003 + i, size)
            else:
                cells = MOSAIC_GRID[0] * MOSAIC_GRID[1]
                pick = [srcs[(i * cells + k) % len(srcs)] for k in range(cells)]
                make_mosaic(pick, dest, sigma, quality, seed * 1_000_003 + 500_000 + i, size)
            out.generated += 1
            if out.generated % 25 == 0:
                log(f"  {kind}: generated {out.generated} of {n - out.reused} 12-MP JPEGs ...")
        out.paths.append(dest)
    out.generate_s = time.perf_counter() - t0
    return out


@contextlib.contextmanager
def cache_folder(cache: Path | None, prefix: str) -> Iterator[Path]:
    """--cache DIR (kept), or a temporary folder deleted at the end."""
    if cache is not None:
        cache = cache.expanduser().resolve()
        cache.mkdir(parents=True, exist_ok=True)
        yield cache
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def random_weights_file(arch: str, folder: Path) -> tuple[str, str, float]:
    """-> (weights file, note, seconds to make it)."""
    t0 = time.perf_counter()
    path = make_random_weights(arch, folder)
    return str(path), "random (open_clip.create_model under torch.manual_seed(0))", time.perf_counter() - t0


def env_info(load_start: float | None) -> dict[str, Any]:
    import numpy as np
    import PIL
    import torch
    from PIL import features

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else None,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": cpu_name(),
        "loadavg_1m_start": load_start,
        "loadavg_1m_end": loadavg(),
    }
    try:
        import open_clip

        info["open_clip"] = open_clip.__version__
    except ImportError:
        pass
    return info


def load_encoder(model: str, weights: str | None, batch_size: int = 32):
    from retriever.encoders import ModelSpec, create_encoder

    return create_encoder(ModelSpec(name=model, pretrained=weights, device="cpu", batch_size=batch_size))


def scale_label(full: tuple[int, int], decoded: tuple[int, int]) -> str:
    ratio = full[0] / decoded[0]
    return "1/1" if ratio < 1.01 else f"1/{round(ratio)}"


# -- measurement --------------------------------------------------------------------------------------


def cosine_stats(full, other) -> dict[str, Any]:
    """Row-wise cosine of two (n, d) unit-norm matrices, and whether each row of `other` finds its own
    row of `full` first among all of `full` (self-retrieval recall@1)."""
    import numpy as np

    cos = np.sum(full * other, axis=1)
    sims = other @ full.T
    r1 = float(np.mean(np.argmax(sims, axis=1) == np.arange(len(full))))
    return {
        "cos_mean": rnd(float(cos.mean()), 5),
        "cos_p1": rnd(float(np.percentile(cos, 1)), 5),
        "cos_min": rnd(float(cos.min()), 5),
        "self_r1": rnd(r1, 4),
    }


def between_photos(full) -> dict[str, Any]:
    """How alike different photos look to the encoder: the scale on which 1 - cos is to be read."""
    import numpy as np

    sims = full @ full.T
    off = sims[~np.eye(len(full), dtype=bool)]
    # each photo's nearest other photo: a draft must stay closer to its original than that
    nearest = np.max(np.where(np.eye(len(full), dtype=bool), -np.inf, sims), axis=1)
    return {
        "cos_mean": rnd(float(off.mean()), 4),
        "cos_p99": rnd(float(np.percentile(off, 99)), 4),
        "nearest_other_cos_median": rnd(float(np.median(nearest)), 4),
    }


def measure(encoders: dict[str, Any], paths: Sequence[Path], factors: Sequence[float], chunk: int = 16) -> dict[str, Any]:
    """For every photo: full decode, a draft decode per (encoder, factor), a 1 %-per-side crop of the
    full decode as a reference perturbation; preprocess + embed each distinct decoded image."""
    import numpy as np

    from retriever.images import decode

    full_decode_ms: list[float] = []
    per: dict[str, dict[str, Any]] = {}
    for name, enc in encoders.items():
        per[name] = {
            "full": [], "crop": [], "draft": {f: [] for f in factors},
            "full_pre_ms": [], "draft_dec_ms": {f: [] for f in factors}, "draft_pre_ms": {f: [] for f in factors},
            "sizes": {f: Counter() for f in factors}, "scales": {f: Counter() for f in factors},
        }
    full_sizes: Counter = Counter()

    import torch

    model_threads = torch.get_num_threads()

    def flush(pending: dict[str, list[tuple[str, Any, Any]]]) -> None:
        for name, items in pending.items():
            if not items:
                continue
            torch.set_num_threads(model_threads)
            try:
                vecs = encoders[name].embed_preprocessed([x for _, _, x in items])
            finally:
                # decoding and preprocessing are timed with one torch thread, as in a decode worker
                # (open_clip's transform ends in torch ops, which stall on a busy CPU with more threads)
                torch.set_num_threads(1)
            for (slot, key, _), v in zip(items, vecs):
                if slot == "full":
                    per[name]["full"].append(v)
                elif slot == "crop":
                    per[name]["crop"].append(v)
                else:
                    for f in key:  # factors that decoded to the same pixels share one embedding
                        per[name]["draft"][f].append(v)
            items.clear()

    pending: dict[str, list[tuple[str, Any, Any]]] = {name: [] for name in encoders}
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    for i, path in enumerate(paths):
        data = path.read_bytes()
        t0 = time.perf_counter()
        full = decode(data, path.name).image
        full_decode_ms.append((time.perf_counter() - t0) * 1000)
        full_sizes[f"{full.width}x{full.height}"] += 1
        w, h = full.size
        dx, dy = round(w * 0.01), round(h * 0.01)
        cropped = full.crop((dx, dy, w - dx, h - dy))
        for name, enc in encoders.items():
            rec = per[name]
            t0 = time.perf_counter()
            x_full = enc.preprocess(full)
            rec["full_pre_ms"].append((time.perf_counter() - t0) * 1000)
            pending[name].append(("full", None, x_full))
            pending[name].append(("crop", None, enc.preprocess(cropped)))
            by_size: dict[tuple[int, int], tuple[list[float], Any]] = {}
            for f in factors:
                side = max(1, round(f * enc.input_size))
                t0 = time.perf_counter()
                img = decode(data, path.name, draft_min_side=side).image
                rec["draft_dec_ms"][f].append((time.perf_counter() - t0) * 1000)
                rec["sizes"][f][f"{img.width}x{img.height}"] += 1
                rec["scales"][f][scale_label(full.size, img.size)] += 1
                t0 = time.perf_counter()
                x = enc.preprocess(img)
                rec["draft_pre_ms"][f].append((time.perf_counter() - t0) * 1000)
                if img.size in by_size:
                    by_size[img.size][0].append(f)
                else:
                    by_size[img.size] = ([f], x)
            for fs, x in by_size.values():
                pending[name].append(("draft", fs, x))
        del full, cropped
        if (i + 1) % chunk == 0 or i + 1 == len(paths):
            flush(pending)
            done = i + 1
            rate = done / (time.perf_counter() - t_start)
            log(f"  {done}/{len(paths)} photos ({rate:.2f}/s, ~{(len(paths) - done) / rate:.0f} s left)")
    torch.set_num_threads(model_threads)

    result: dict[str, Any] = {
        "full_decode_ms_p50": rnd(pct(full_decode_ms, 50), 1),
        "full_decode_ms_mean": rnd(sum(full_decode_ms) / len(full_decode_ms), 1),
        "full_decode_images_per_s": rnd(1000 * len(full_decode_ms) / sum(full_decode_ms), 2),
        "full_sizes": dict(full_sizes),
        "encoders": {},
    }
    full_dec_p50 = pct(full_decode_ms, 50)
    for name, enc in encoders.items():
        rec = per[name]
        full = np.stack(rec["full"])
        out: dict[str, Any] = {
            "model_id": enc.model_id,
            "input_size": enc.input_size,
            "full": {
                "decode_ms_p50": rnd(full_dec_p50, 1),
                "preprocess_ms_p50": rnd(pct(rec["full_pre_ms"], 50), 1),
            },
            "between_photos": between_photos(full),
            "reference_crop_1pct": cosine_stats(full, np.stack(rec["crop"])),
            "draft": {},
        }
        for f in factors:
            dec, pre = rec["draft_dec_ms"][f], rec["draft_pre_ms"][f]
            stats = cosine_stats(full, np.stack(rec["draft"][f]))
            shift = 1 - stats["cos_mean"]
            spread = 1 - out["between_photos"]["cos_mean"]
            short = min(min(int(v) for v in size.split("x")) for size in rec["sizes"][f])
            out["draft"][fkey(f)] = {
                "draft_min_side": max(1, round(f * enc.input_size)),
                "scales": dict(rec["scales"][f]),
                "decoded_sizes": dict(rec["sizes"][f]),
                # the decoded short side over the input size: between f and 2f, by the photo's size
                "min_ratio": rnd(short / enc.input_size, 2),
                **stats,
                # 1 - cos of a draft relative to 1 - cos between two different photos
                "shift_vs_between_photos": rnd(shift / spread, 4) if spread > 0 else None,
                "decode_ms_p50": rnd(pct(dec, 50), 1),
                "preprocess_ms_p50": rnd(pct(pre, 50), 1),
                "decode_speedup": rnd(full_dec_p50 / pct(dec, 50), 1),
                "decode_preprocess_speedup": rnd(
                    (full_dec_p50 + pct(rec["full_pre_ms"], 50)) / (pct(dec, 50) + pct(pre, 50)), 1
                ),
            }
        result["encoders"][name] = out
    return result


def fkey(f: float) -> str:
    return f"{f:g}"


COVERAGE = 1.25  # a factor's worst case counts as measured when some draft decoded to <= 1.25 x its minimum


def recommend(sets: dict[str, dict[str, Any]], factors: Sequence[float], min_mean: float, min_p1: float) -> dict[str, Any]:
    """The smallest factor whose drafts clear both thresholds for every encoder on every set, and whose
    worst case was measured for every encoder.

    libjpeg scales by 1/2, 1/4 or 1/8 only, so a factor f decodes a photo's short side to between
    f and 2f times the input size depending on the photo's size, and agreement is worst near f. A
    factor whose drafts all came out well above f x input size (for 12-MP photos, f = 1.5 at the
    offline encoder's 256 px decodes at 1/4, like f = 2) has not been tested where it is weakest."""
    table: dict[str, dict[str, Any]] = {}
    for f in factors:
        means, p1s, ok, covered = [], [], True, True
        min_ratio: dict[str, float] = {}
        for res in sets.values():
            for enc_name, enc in res["encoders"].items():
                d = enc["draft"][fkey(f)]
                means.append(d["cos_mean"])
                p1s.append(d["cos_p1"])
                ok = ok and d["cos_mean"] >= min_mean and d["cos_p1"] >= min_p1
                min_ratio[enc_name] = min(min_ratio.get(enc_name, math.inf), d["min_ratio"])
        covered = all(r <= COVERAGE * f for r in min_ratio.values())
        table[fkey(f)] = {"passes": ok, "worst_case_measured": covered, "worst_cos_mean": min(means),
                          "worst_cos_p1": min(p1s), "min_ratio": min_ratio}
    chosen = next((f for f in sorted(factors) if table[fkey(f)]["passes"] and table[fkey(f)]["worst_case_measured"]),
                  None)
    return {
        "draft_factor": chosen,
        "threshold": {"cos_mean_min": min_mean, "cos_p1_min": min_p1},
        "rule": f"draft_min_side = factor x input_size, the smallest factor with cos_mean >= {min_mean} and "
                f"cos_p1 >= {min_p1} for every encoder on every set, measured near its worst case "
                f"(a draft decoded to <= {COVERAGE} x factor x input_size) for every encoder",
        "factors": table,
    }


def run(args: argparse.Namespace, work: Path, cache: Path) -> dict[str, Any]:
    load_start = loadavg()
    result: dict[str, Any] = {
        "benchmark": "draft_agreement",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "factors": [float(f) for f in args.factors],
        "notes": [PREPROCESSING_NOTE],
    }
    log(f"1/3 photo sets from {args.source} (cache {cache}) ...")
    sets = {"upscaled": photo_set(args.source, args.n, cache, seed=args.seed)}
    if args.mosaics:
        sets["mosaic"] = photo_set(args.source, args.mosaics, cache, kind="mosaic", seed=args.seed)
    if args.edge_mosaics:
        sets["mosaic_5mp"] = photo_set(args.source, args.edge_mosaics, cache, kind="mosaic", seed=args.seed,
                                       size=EDGE_SIZE)
    result["photos"] = {name: s.describe() for name, s in sets.items()}

    log("2/3 loading encoders ...")
    encoders: dict[str, Any] = {}
    result["models"] = {}
    for model in args.models:
        weights, note, prep_s = args.pretrained, None, None
        if model != "offline" and not weights:
            log(f"creating seeded random weights for {model} ...")
            weights, note, prep_s = random_weights_file(model, work)
            result["notes"].append(RANDOM_WEIGHTS_NOTE)
        t0 = time.perf_counter()
        encoders[model] = load_encoder(model, weights, args.batch_size)
        result["models"][model] = {
            "pretrained": note or weights,
            "input_size": encoders[model].input_size,
            "load_s": rnd(time.perf_counter() - t0),
        }

    measured: dict[str, Any] = {}
    for name, s in sets.items():
        log(f"3/3 {name}: {len(s.paths)} photos x {len(encoders)} encoders x factors {args.factors} ...")
        measured[name] = measure(encoders, s.paths, args.factors)
    result["sets"] = measured
    result["recommendation"] = recommend(measured, args.factors, args.min_mean, args.min_p1)
    # the same rule at the looser thresholds first suggested for this decision, for comparison
    result["recommendation_at_0.995_0.99"] = recommend(measured, args.factors, 0.995, 0.99)
    result["env"] = env_info(load_start)
    return result


# -- output -------------------------------------------------------------------------------------------


def table(r: dict[str, Any]) -> str:
    lines = []
    for set_name, res in r["sets"].items():
        ph = r["photos"][set_name]
        lines.append(f"{set_name}: {ph['n']} JPEGs of {ph['size']}, q{ph['jpeg_quality']}, noise sigma "
                     f"{ph['noise_sigma']}, {ph['mean_file_mb']} MB each; full decode p50 "
                     f"{res['full_decode_ms_p50']} ms ({res['full_decode_images_per_s']} img/s)")
        head = ("encoder", "factor", "min side", "scale", "decoded/input", "cos mean", "cos p1", "cos min", "self R@1",
                "decode ms", "speed-up", "+preproc speed-up")
        rows = []
        for enc_name, enc in res["encoders"].items():
            rows.append((enc_name, "full", "-", "1/1", "-", "1", "1", "1", "1",
                         f"{enc['full']['decode_ms_p50']:.1f}", "1.0", "1.0"))
            for f, d in enc["draft"].items():
                scales = "+".join(sorted(d["scales"]))
                rows.append((enc_name, f, str(d["draft_min_side"]), scales, f"{d['min_ratio']:.2f}", f"{d['cos_mean']:.5f}",
                             f"{d['cos_p1']:.5f}", f"{d['cos_min']:.5f}", f"{d['self_r1']:.3f}",
                             f"{d['decode_ms_p50']:.1f}", f"{d['decode_speedup']:.1f}",
                             f"{d['decode_preprocess_speedup']:.1f}"))
            c = enc["reference_crop_1pct"]
            rows.append((enc_name, "crop 1%", "-", "ref", "", f"{c['cos_mean']:.5f}", f"{c['cos_p1']:.5f}",
                         f"{c['cos_min']:.5f}", f"{c['self_r1']:.3f}", "", "", ""))
            b = enc["between_photos"]
            rows.append((enc_name, "2 photos", "-", "ref", "", f"{b['cos_mean']:.5f}", "", "", "", "", "", ""))
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
        lines.append("")
    for key in ("recommendation", "recommendation_at_0.995_0.99"):
        rec = r[key]
        th = rec["threshold"]
        lines.append(f"{key.replace('_', ' ')}: draft factor {rec['draft_factor']} "
                     f"(cos mean >= {th['cos_mean_min']}, p1 >= {th['cos_p1_min']}, worst case measured)")
        lines.append("  " + "; ".join(
            f"{f}: {'passes' if t['passes'] else 'fails'} (worst mean {t['worst_cos_mean']:.5f}, p1 {t['worst_cos_p1']:.5f})"
            f"{'' if t['worst_case_measured'] else ', worst case not measured'}" for f, t in rec["factors"].items()))
    lines.append(f"rule: {r['recommendation']['rule']}")
    for note in r["notes"]:
        lines.append(f"note: {note}")
    e = r["env"]
    lines.append(f"python {e['python']}, torch {e['torch']} ({e['torch_threads']} threads), Pillow {e['pillow']} "
                 f"(libjpeg-turbo {e['libjpeg_turbo']}), {e['cpu_count']} CPUs ({e['processor']}), "
                 f"load average {e['loadavg_1m_start']} -> {e['loadavg_1m_end']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Draft-decoding agreement: one JSON line with every figure, then a table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of real photos (only read)")
    ap.add_argument("--n", type=int, default=300, help="12-MP photos made from --source")
    ap.add_argument("--mosaics", type=int, default=100,
                    help="stress set: 12-MP mosaics of 64 photos at about their own resolution (0: none)")
    ap.add_argument("--edge-mosaics", type=int, default=100,
                    help=f"mosaics of {EDGE_SIZE[0]}x{EDGE_SIZE[1]}, where a factor-1 draft decodes to about the "
                         "input size: the worst case of each factor (0: none)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep the generated 12-MP files here and reuse them [default: a temporary folder, deleted]")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated: 'offline' and/or open_clip architectures")
    ap.add_argument("--model", dest="models", help="one model (same as --models NAME), e.g. --model offline")
    ap.add_argument("--pretrained", default=None,
                    help="weights for the open_clip model; without it, seeded random weights in a temporary .pt file")
    ap.add_argument("--factors", default=",".join(fkey(f) for f in DEFAULT_FACTORS),
                    help="draft_min_side = factor * encoder.input_size, comma-separated")
    ap.add_argument("--min-mean", type=float, default=0.999,
                    help="threshold on the mean cosine (1 - 0.999: about a tenth of what a 1%% crop does)")
    ap.add_argument("--min-p1", type=float, default=0.998, help="threshold on the 1st-percentile cosine")
    ap.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    ap.add_argument("--seed", type=int, default=0, help="which photos, and the noise")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in str(args.models).split(",") if m.strip()]
    try:
        args.factors = sorted({float(f) for f in str(args.factors).split(",") if f.strip()})
    except ValueError:
        ap.error("--factors: comma-separated numbers, e.g. 1,1.5,2,3")
    if not args.factors or min(args.factors) <= 0:
        ap.error("--factors must be positive")
    if args.n < 1 or args.mosaics < 0 or args.edge_mosaics < 0:
        ap.error("--n must be at least 1, --mosaics and --edge-mosaics at least 0")
    if not args.source.is_dir():
        ap.error(f"--source: no such folder: {args.source}")
    if args.pretrained and all(m == "offline" for m in args.models):
        ap.error("--pretrained is for an open_clip model")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="retriever-draft-"))
    try:
        with cache_folder(args.cache, "retriever-draft-photos-") as cache, stdout_to_stderr():
            result = run(args, work, cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)
    print(table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
