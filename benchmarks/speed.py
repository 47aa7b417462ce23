"""Speed benchmark: CLI start-up, indexing throughput, search latency at N images, CLI search.

    python benchmarks/speed.py                       # ViT-B-32, seeded random weights (nothing downloaded)
    python benchmarks/speed.py --model offline       # the offline encoder
    python benchmarks/speed.py --model ViT-B-32 --pretrained ~/weights/vit-b-32.safetensors

Prints FIRST one JSON line holding every figure, THEN a readable table. Progress goes to stderr.
Everything is written under a temporary folder that is deleted at the end (a --home you pass
yourself is kept).

What is measured, in one run:
  1. `python -m retriever --help` wall time (a real subprocess, median of 5), beside `python -c pass`.
  2. Indexing: images/s of `run_index` over a collection of `--repeat-photos` copies of `--photos`
     (copy i re-encoded after an i-pixel crop, so every file differs); model load time apart,
     and the share of it spent in forward passes.
  3. In-process search latency at `--n-vectors` images: the catalog is padded with synthetic rows
     (perturbed copies of the real embeddings), the FAISS index rebuilt, then one long-lived
     Searcher answers `--queries` text queries: p50/p95 of the whole call, and p50 of text
     encoding, FAISS search and catalog lookup measured alone; plus image->image search.
  4. `python -m retriever search "a cat"` end to end (process start + model load + search), median of 3.

Random weights time exactly like real ones (same architecture, same FLOPs); their search
*results* are meaningless, which does not matter here (see benchmarks/quality.py for quality).
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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

DEFAULT_ARCH = "ViT-B-32"
INDEX_NAME = "speed-bench"
TARGET_HELP_S = 0.5
TARGET_SEARCH_P50_MS = 100.0
K = 10
TARGET_INDEXED = 100  # default --repeat-photos gives about this many images

SUBJECTS = (
    "cat", "dog", "astronaut", "rocket launch", "cup of coffee", "old coins", "red flower",
    "brick wall", "man with a camera", "wall clock", "palace by a lake", "starry night sky",
    "microscope slide", "eye fundus", "green grass", "gravel path", "child on a bicycle",
    "snowy mountain", "sunset over the sea", "birthday cake", "city street at night",
    "bowl of fruit", "sailing boat", "portrait of a woman", "receipt on a table",
)
TEMPLATES = (
    "a photo of a {}", "{}", "a close-up picture of a {}", "a blurry photo of the {}",
    "a black and white photo of a {}", "my {} last summer", "a {} in the middle of the frame",
    "a low resolution image of a {}", "a bright photo of a {}", "an old photograph of a {}",
)


# -- small helpers ----------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[speed] {msg}", file=sys.stderr, flush=True)


def pct(values: Sequence[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default), without numpy."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def rnd(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def make_queries(n: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    i = 0
    while len(out) < n:
        s = SUBJECTS[i % len(SUBJECTS)]
        t = TEMPLATES[(i // len(SUBJECTS) + i) % len(TEMPLATES)]
        q = t.format(s)
        if q in seen:  # only after every combination was used
            q = f"{q} #{i}"
        seen.add(q)
        out.append(q)
        i += 1
    return out


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def time_subprocess(cmd: list[str], runs: int, what: str) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"{what} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-800:]}")
    return times


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """While measuring, anything written to stdout (by us, a library, or C code) goes to stderr,
    so stdout carries only the JSON line and the table."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# -- setup -----------------------------------------------------------------------------------------


def make_random_weights(arch: str, folder: Path) -> Path:
    """An open_clip model's state_dict under torch.manual_seed(0): times like real weights."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(arch)
    path = folder / f"{arch}-random-seed0.pt"
    torch.save(model.state_dict(), path)
    del model
    return path


def build_collection(photos: Path, dest: Path, copies: int) -> int:
    """`copies` copies of the image files of `photos`: copy 0 as-is, copy i re-encoded after cropping
    i pixels off the right edge, so that every file differs (different bytes, fingerprints, vectors)."""
    from PIL import Image

    from retriever.files import walk

    sources = [Path(e.path) for e in walk([str(photos)])]
    if not sources:
        raise SystemExit(f"no images under {photos}")
    n = 0
    for i in range(copies):
        folder = dest / f"copy{i:03d}"
        folder.mkdir(parents=True)
        for src in sources:
            target = folder / src.name
            if i == 0:
                shutil.copyfile(src, target)
            else:
                with Image.open(src) as im:
                    im.load()
                    fmt = im.format
                    w, h = im.size
                    cropped = im.crop((0, 0, max(1, w - i), h))
                    if fmt == "JPEG" and cropped.mode not in ("RGB", "L", "CMYK"):
                        cropped = cropped.convert("RGB")
                    try:
                        cropped.save(target, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
                    except (OSError, ValueError, KeyError):
                        target = target.with_suffix(".png")
                        cropped.save(target, format="PNG")
            n += 1
    return n


def synthetic_rows(home: Path, real_vectors, count: int, start: int, seed: int = 0):
    """`count` made-up catalog rows (paths under `home`) and their vectors: perturbed copies of the
    real embeddings, renormalised."""
    import numpy as np

    from retriever.encoders.base import l2_normalize

    rng = np.random.default_rng(seed + start)
    n_real, dim = real_vectors.shape
    base = real_vectors[rng.integers(0, n_real, size=count)]
    noise = rng.standard_normal((count, dim)).astype(np.float32) * (0.5 / math.sqrt(dim))
    vecs = l2_normalize(base + noise)
    now_ns = time.time_ns()
    rows = []
    for j in range(count):
        i = start + j
        rows.append(
            {
                "path": str(home / "synthetic" / f"{i // 1000:04d}" / f"IMG_{i:07d}.jpg"),
                "size": int(rng.integers(200_000, 6_000_000)),
                "mtime_ns": now_ns - i * 1_000_000_000,
                "fingerprint": hashlib.blake2b(f"synthetic-{i}".encode(), digest_size=16).hexdigest(),
                "status": "indexed",
                "error": None,
                "width": 4032,
                "height": 3024,
                "format": "JPEG",
            }
        )
    return rows, vecs


class TimedForward:
    """The encoder as run_index sees it, timing its forward passes (embed_preprocessed) on the way."""

    def __init__(self, encoder):
        self._encoder = encoder
        self.seconds = 0.0
        self.images = 0

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def embed_preprocessed(self, items):
        t0 = time.perf_counter()
        out = self._encoder.embed_preprocessed(items)
        self.seconds += time.perf_counter() - t0
        self.images += len(items)
        return out


# -- the benchmark ---------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path, home: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "speed", "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    load_start = loadavg()

    # 1. CLI start-up -------------------------------------------------------------------------
    log("1/4 `retriever --help` start-up (5 runs each) ...")
    help_runs = time_subprocess([sys.executable, "-m", "retriever", "--help"], 5, "retriever --help")
    base_runs = time_subprocess([sys.executable, "-c", "pass"], 5, "python -c pass")
    help_median = statistics.median(help_runs)
    result["cli_help"] = {
        "median_s": rnd(help_median),
        "runs_s": [rnd(t) for t in help_runs],
        "python_baseline_median_s": rnd(statistics.median(base_runs)),
        "python_baseline_runs_s": [rnd(t) for t in base_runs],
        "over_baseline_s": rnd(help_median - statistics.median(base_runs)),
        "target_s": TARGET_HELP_S,
        "meets_target": help_median < TARGET_HELP_S,
    }

    import numpy as np
    import torch

    from retriever.files import walk
    from retriever.index import open_for_writing
    from retriever.indexer import IndexOptions, default_workers, run_index
    from retriever.search import Searcher

    if args.threads:
        torch.set_num_threads(args.threads)

    # weights ----------------------------------------------------------------------------------
    model, pretrained, weights_note = args.model, args.pretrained, None
    weights_prep_s = None
    if model is None:
        model = DEFAULT_ARCH
    if model != "offline" and not pretrained:
        log(f"creating seeded random weights for {model} (torch.manual_seed(0)) ...")
        t0 = time.perf_counter()
        pretrained = str(make_random_weights(model, work))
        weights_prep_s = time.perf_counter() - t0
        weights_note = "random (open_clip.create_model under torch.manual_seed(0))"

    # 2. indexing ------------------------------------------------------------------------------
    collection = work / "collection"
    n_sources = sum(1 for _ in walk([str(args.photos)]))
    copies = args.repeat_photos or max(1, math.ceil(TARGET_INDEXED / max(1, n_sources)))
    log(f"building the collection: {copies} copies of {n_sources} photos ...")
    n_files = build_collection(args.photos, collection, copies)

    log(f"2/4 loading {model} {'(' + weights_note + ')' if weights_note else pretrained or ''} ...")
    t0 = time.perf_counter()
    idx, encoder, note = open_for_writing(
        home, INDEX_NAME, model=model, pretrained=pretrained, device=args.device, batch_size=args.batch_size
    )
    load_s = time.perf_counter() - t0
    if note:
        log(note)
    workers = args.workers or default_workers()
    try:
        log(f"indexing {n_files} files (batch {encoder.batch_size}, {workers} decode workers) ...")
        t0 = time.perf_counter()
        timed = TimedForward(encoder)
        summary = run_index(idx, timed, [str(collection)], IndexOptions(workers=args.workers))
        index_wall = time.perf_counter() - t0
        if summary.failed:
            log(f"{summary.failed} files failed: {summary.failures[:3]}")

        result["model"] = {
            "name": model,
            "pretrained": weights_note or pretrained,
            "model_id": encoder.model_id,
            "dim": encoder.dim,
            "device": encoder.device,
            "load_s": rnd(load_s),
            "weights_prep_s": rnd(weights_prep_s) if weights_prep_s is not None else None,
        }
        result["index"] = {
            "photos": str(args.photos),
            "source_photos": n_sources,
            "repeat_photos": copies,
            "files": n_files,
            "indexed": summary.indexed,
            "failed": summary.failed,
            "seconds": rnd(summary.seconds),
            "wall_s": rnd(index_wall),
            "images_per_s": rnd(summary.indexed / summary.seconds, 2) if summary.seconds > 0 else None,
            "forward_s": rnd(timed.seconds),
            "forward_images_per_s": rnd(timed.images / timed.seconds, 2) if timed.seconds > 0 else None,
            "batch_size": encoder.batch_size,
            "workers": workers,
        }

        # 3. pad to N vectors, rebuild FAISS ------------------------------------------------------
        catalog = idx.catalog
        real = np.concatenate([v for _, v in catalog.iter_vectors(idx.dim)], axis=0)
        n_real = len(real)
        n_pad = max(0, args.n_vectors - n_real)
        log(f"3/4 padding the catalog with {n_pad} synthetic rows to {max(args.n_vectors, n_real)} vectors ...")
        t0 = time.perf_counter()
        for start in range(0, n_pad, args.pad_chunk):
            count = min(args.pad_chunk, n_pad - start)
            rows, vecs = synthetic_rows(home, real, count, start)
            catalog.write_batch([{**row, "vector": vec} for row, vec in zip(rows, vecs)])
        pad_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        vi = idx.vector_index()  # holds the writer lock: rebuilt from the catalog and saved
        rebuild_s = time.perf_counter() - t0
        n_vectors = len(vi)
        del vi
        result["pad"] = {
            "real_vectors": n_real,
            "synthetic_rows": n_pad,
            "write_s": rnd(pad_s),
            "faiss_rebuild_s": rnd(rebuild_s),
            "faiss_file_mb": rnd(idx.vectors_path.stat().st_size / 1e6, 1),
        }

        # in-process search -----------------------------------------------------------------------
        searcher = Searcher(idx, encoder=encoder)
        t0 = time.perf_counter()
        vectors = searcher.vectors  # the saved FAISS file, loaded once
        faiss_load_s = time.perf_counter() - t0
        queries = make_queries(args.queries)
        in_collection = [str(p) for p in sorted(collection.rglob("*")) if p.is_file()]
        outside = [e.path for e in walk([str(args.photos)])]  # the originals: not in the collection
        for q in ("warm up", "a photo of a dog", "another warm-up query"):
            searcher.text(q, K)
        searcher.image(in_collection[0], K)

        total, text_enc, faiss_t, lookup = [], [], [], []
        for q in queries:
            t0 = time.perf_counter()
            hits = searcher.text(q, K)
            total.append(time.perf_counter() - t0)
            if len(hits) != min(K, n_vectors):
                raise RuntimeError(f"expected {min(K, n_vectors)} hits for {q!r}, got {len(hits)}")
            t0 = time.perf_counter()
            vec = encoder.embed_texts([q])[0]
            text_enc.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, ids = vectors.search(vec[None], K)
            faiss_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            catalog.image_rows([int(i) for i in ids[0] if i != -1])
            lookup.append(time.perf_counter() - t0)

        img_in = []
        for j in range(args.image_queries):
            t0 = time.perf_counter()
            searcher.image(in_collection[(j * 7) % len(in_collection)], K)
            img_in.append(time.perf_counter() - t0)
        img_out = []
        for j in range(min(args.image_queries, 5)):
            if not outside:
                break
            t0 = time.perf_counter()
            searcher.image(outside[j % len(outside)], K)
            img_out.append(time.perf_counter() - t0)

        p50 = pct(total, 50)
        parts = pct(text_enc, 50) + pct(faiss_t, 50) + pct(lookup, 50)
        result["search"] = {
            "n_vectors": n_vectors,
            "queries": len(queries),
            "k": K,
            "faiss_load_s": rnd(faiss_load_s),
            "text_total_ms_p50": ms(p50),
            "text_total_ms_p95": ms(pct(total, 95)),
            "text_total_ms_max": ms(max(total)),
            "text_encode_ms_p50": ms(pct(text_enc, 50)),
            "faiss_search_ms_p50": ms(pct(faiss_t, 50)),
            "catalog_lookup_ms_p50": ms(pct(lookup, 50)),
            "other_ms_p50": ms(p50 - parts),
            "image_in_collection_ms_p50": ms(pct(img_in, 50)),
            "image_in_collection_runs": len(img_in),
            "image_external_ms_p50": ms(pct(img_out, 50)) if img_out else None,
            "image_external_runs": len(img_out),
            "target_ms_p50": TARGET_SEARCH_P50_MS,
            "meets_target": p50 * 1000.0 < TARGET_SEARCH_P50_MS,
        }
    finally:
        idx.close()
    del encoder, searcher, vectors

    # 4. CLI search end to end ----------------------------------------------------------------
    log("4/4 `retriever search \"a cat\"` end to end (3 runs) ...")
    cmd = [sys.executable, "-m", "retriever", "search", "a cat", "--home", str(home), "--index", INDEX_NAME,
           "--device", args.device]
    cli_runs = time_subprocess(cmd, 3, "retriever search")
    result["cli_search"] = {"median_s": rnd(statistics.median(cli_runs)), "runs_s": [rnd(t) for t in cli_runs]}

    import faiss
    import open_clip

    result["env"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "open_clip": open_clip.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": cpu_name(),
        # 1-minute load average before and after: figures taken on a busy machine are not comparable
        "loadavg_1m_start": load_start,
        "loadavg_1m_end": loadavg(),
    }
    return result


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# -- output ----------------------------------------------------------------------------------------


def table(r: dict[str, Any]) -> str:
    h, ix, m, p, s, c, e = r["cli_help"], r["index"], r["model"], r["pad"], r["search"], r["cli_search"], r["env"]

    def ok(flag: bool) -> str:
        return "ok" if flag else "MISSED"

    rows: list[tuple[str, str, str]] = [
        ("retriever --help (median of 5)", f"{h['median_s']:.3f} s", f"target < {h['target_s']} s: {ok(h['meets_target'])}"),
        ("python -c pass (median of 5)", f"{h['python_baseline_median_s']:.3f} s", "baseline, same run"),
        ("model load", f"{m['load_s']:.2f} s", f"{m['name']} on {m['device']}, dim {m['dim']}"),
        ("indexing", f"{ix['images_per_s']} img/s",
         f"{ix['indexed']} images in {ix['seconds']:.1f} s, batch {ix['batch_size']}, {ix['workers']} workers"),
        ("  forward passes alone", f"{ix['forward_images_per_s']} img/s",
         f"{ix['forward_s']:.1f} s of the {ix['seconds']:.1f} s in encoder.embed_preprocessed"),
        ("pad catalog", f"{p['write_s']:.2f} s", f"{p['synthetic_rows']} synthetic rows"),
        ("FAISS rebuild + save", f"{p['faiss_rebuild_s']:.2f} s", f"{s['n_vectors']} vectors, {p['faiss_file_mb']} MB"),
        ("FAISS load (Searcher)", f"{s['faiss_load_s'] * 1000:.1f} ms", "first query of a process pays it"),
        ("text search p50", f"{s['text_total_ms_p50']:.1f} ms",
         f"{s['queries']} queries, k={s['k']}, {s['n_vectors']} vectors; target < {s['target_ms_p50']:.0f} ms: "
         f"{ok(s['meets_target'])}"),
        ("text search p95", f"{s['text_total_ms_p95']:.1f} ms", f"max {s['text_total_ms_max']:.1f} ms"),
        ("  text encoding p50", f"{s['text_encode_ms_p50']:.1f} ms", "encoder.embed_texts([q])"),
        ("  FAISS search p50", f"{s['faiss_search_ms_p50']:.2f} ms", "exact inner product, IDMap2,Flat"),
        ("  catalog lookup p50", f"{s['catalog_lookup_ms_p50']:.2f} ms", "catalog.image_rows(top-k ids)"),
        ("  other p50", f"{s['other_ms_p50']:.2f} ms", "p50 total - the three parts (hits, noise)"),
        ("image search p50 (in collection)", f"{s['image_in_collection_ms_p50']:.1f} ms", "stored vector, no encoding"),
    ]
    if s["image_external_ms_p50"] is not None:
        rows.append(("image search p50 (outside file)", f"{s['image_external_ms_p50']:.1f} ms", "decode + encode + search"))
    rows.append(("CLI search end to end (median 3)", f"{c['median_s']:.2f} s", "process start + imports + model load + search"))
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    lines = [f"{'figure':<{w0}}  {'value':>{w1}}  notes", f"{'-' * w0}  {'-' * w1}  {'-' * 5}"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {n}" for a, b, n in rows]
    lines.append("")
    lines.append(
        f"python {e['python']}, torch {e['torch']} ({e['torch_threads']} threads), faiss {e['faiss']}, "
        f"open_clip {e['open_clip']}, {e['cpu_count']} CPUs ({e['processor']}), "
        f"load average {e['loadavg_1m_start']} -> {e['loadavg_1m_end']}"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="retriever speed benchmark: one JSON line with every figure, then a table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--photos", type=Path, default=REPO / "examples" / "photos", help="folder of photos to index")
    ap.add_argument("--model", default=None,
                    help=f"encoder: an open_clip architecture or 'offline' [default: {DEFAULT_ARCH}]")
    ap.add_argument("--pretrained", default=None,
                    help="open_clip weights (tag or file); without it an open_clip --model gets seeded random "
                         "weights written to a temporary .pt file (timing is the same, nothing is downloaded)")
    ap.add_argument("--n-vectors", type=int, default=10_000, help="pad the index to this many images for search")
    ap.add_argument("--queries", type=int, default=50, help="text queries timed")
    ap.add_argument("--image-queries", type=int, default=20, help="image->image queries timed (in the collection)")
    ap.add_argument("--repeat-photos", type=int, default=0,
                    help=f"copies of --photos to index (0: enough for about {TARGET_INDEXED} images)")
    ap.add_argument("--batch-size", type=int, default=32, help="images per forward pass while indexing")
    ap.add_argument("--workers", type=int, default=0, help="decode threads while indexing (0: retriever's default)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where the model runs")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--pad-chunk", type=int, default=2000, help="synthetic rows per catalog transaction")
    ap.add_argument("--home", type=Path, default=None, help="index home [default: a temporary folder, deleted]")
    args = ap.parse_args(argv)
    args.photos = args.photos.expanduser().resolve()
    if not args.photos.is_dir():
        ap.error(f"--photos: no such folder: {args.photos}")
    if args.model == "offline" and args.pretrained:
        ap.error("--model offline takes no --pretrained")
    if args.pretrained and not args.model:
        args.model = DEFAULT_ARCH
    if args.queries < 1 or args.n_vectors < 1 or args.image_queries < 1:
        ap.error("--queries, --n-vectors and --image-queries must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="retriever-speed-"))
    home = (args.home.expanduser().resolve() if args.home else work / "home")
    if args.home and (home / INDEX_NAME).exists():
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f"{home / INDEX_NAME} already exists: remove it or choose another --home")
    try:
        with stdout_to_stderr():
            result = run(args, work, home)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # also the default home, which lives inside it
    print(json.dumps(result), flush=True)
    print(table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
