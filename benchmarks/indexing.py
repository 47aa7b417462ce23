"""Indexing throughput on 12-MP JPEGs: retriever's pipeline against a naive loop, same files, same model.

    python benchmarks/indexing.py                                   # 200 photos, ViT-B-32 + offline
    python benchmarks/indexing.py --cache ~/.cache/retriever-bench  # keep/reuse the 12-MP files
    python benchmarks/indexing.py --model offline --n 64 --workers 2
    python benchmarks/indexing.py --modes retriever,onnx --cache /tmp/rb-cache   # ONNX Runtime vs PyTorch

For each model (ViT-B-32 with seeded random weights from a local .pt file unless --pretrained,
and the offline encoder), in the same run and on the same files:

  naive      one process: `Image.open(path).convert("RGB")`, `encoder.preprocess(image)`, and
             `encoder.embed_preprocessed` on batches of 32. Decoding waits for the model and the
             model waits for decoding; files are decoded at full size.
  retriever  `run_index(index, encoder, files, IndexOptions(workers=--workers))` into a fresh
             temporary index: walk, read, fingerprint, decode (draft) and preprocess in workers,
             forward passes, catalog commits, the FAISS file.
  onnx       the same as retriever, with ONNX Runtime running the image tower (the index's ONNX
             export, checked against PyTorch at creation; `--backend onnx`): images/s against
             retriever's PyTorch run, same files (issue 8's target: at least 1.25x).
  decode     one worker process like retriever's (forkserver, one torch thread, the pickled
             preprocessor, no model): images/s of a full decode and of a draft decode
             (`decode(data, draft_min_side=DRAFT_FACTOR * encoder.input_size)`), with and without
             preprocessing, and of a worker's whole chain (read + fingerprint + draft decode +
             preprocess): the rate of ONE decode worker, so ceil(2000 / rate) workers reach
             2,000 images/s of decoding.

Each measurement runs in its own subprocess of this script, so that its peak memory is its own:
the `resource.getrusage` high-water mark (ru_maxrss) of the measuring process, and the sums of
RSS and of PSS over the process and all its descendants (forkserver, decode workers), sampled
from /proc every 0.1 s (getrusage's RUSAGE_CHILDREN would miss the workers: they are children of
the forkserver). Model load is excluded from every timing (it is done, plus one warm-up forward
pass, before the clock starts) but is part of the memory figures, as it is of a user's process.

The 12-MP photos come from benchmarks/draft_agreement.py's generator (real photos from
../shared/datasets/caltech101-test, read only; upscaled to 4000x3000, noise sigma 3, quality 90):
--cache DIR keeps them between runs (and shares them with draft_agreement.py).

Prints FIRST one JSON line holding every figure, THEN a readable table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from draft_agreement import (  # noqa: E402
    DEFAULT_SOURCE,
    RANDOM_WEIGHTS_NOTE,
    cache_folder,
    env_info,
    load_encoder,
    loadavg,
    photo_set,
    random_weights_file,
    scale_label,
)
from speed import rnd, stdout_to_stderr, subprocess_env  # noqa: E402

DEFAULT_MODELS = ("ViT-B-32", "offline")
PLANNED_DRAFT_FACTOR = 2  # used when retriever.indexer has no DRAFT_FACTOR yet
TARGET_SPEEDUP = 2.0
TARGET_ONNX_SPEEDUP = 1.25  # issue 8: ONNX Runtime indexing images/s against PyTorch eager, same files
TARGET_DECODE_RATE = 2000  # images/s of decoding: how many workers would that take?
NAIVE_BATCH = 32


def log(msg: str) -> None:
    print(f"[indexing] {msg}", file=sys.stderr, flush=True)


def mb(kib: float) -> float:
    return round(kib / 1024.0, 1)


# -- memory ------------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """pid's children, grandchildren ... (Linux: /proc/PID/task/TID/children)."""
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            out.extend(kids)
            stack.extend(kids)
    return out


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return None


def _system_busy_seconds() -> float | None:
    """CPU time all processes of the machine have used (the first line of /proc/stat, less idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / _TICK
    except (OSError, ValueError, IndexError):
        return None


def _rss_pss_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss


class MemorySampler:
    """Peak of the summed RSS and PSS of this process and all its descendants (decode workers,
    the forkserver), sampled every `interval` s; the peak RSS of any one descendant; and the CPU
    time of the descendants (last value seen of each, so up to `interval` of CPU per process may be
    missed). RSS counts a page that a worker shares with another process in full in each; PSS
    shares it out, so the PSS sum is what the processes hold together."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak_rss_kib = 0
        self.peak_pss_kib = 0
        self.peak_child_rss_kib = 0
        self.peak_processes = 1
        self.samples = 0
        self.child_cpu: dict[int, float] = {}
        self.system_busy_s: float | None = None  # CPU time used by every process of the machine meanwhile
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def sample(self) -> None:
        me = os.getpid()
        pids = [me, *_descendants(me)]
        rss = pss = 0
        for pid in pids:
            r, p = _rss_pss_kib(pid)
            rss += r
            pss += p
            if pid != me:
                self.peak_child_rss_kib = max(self.peak_child_rss_kib, r)
                cpu = _cpu_seconds(pid)
                if cpu is not None:
                    self.child_cpu[pid] = max(cpu, self.child_cpu.get(pid, 0.0))
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self._busy0 = _system_busy_seconds()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        busy1 = _system_busy_seconds()
        if busy1 is not None and self._busy0 is not None:
            self.system_busy_s = busy1 - self._busy0


def _cpu_self() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def memory_figures(sampler: MemorySampler, rss_after_load_kib: int, cpu_self_s: float) -> dict[str, Any]:
    return {
        "rss_after_load_mb": mb(rss_after_load_kib),
        # high-water mark of the measuring process itself (model load included): exact
        "maxrss_self_mb": mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "sampled_peak_rss_sum_mb": mb(sampler.peak_rss_kib),
        "sampled_peak_pss_sum_mb": mb(sampler.peak_pss_kib),
        "sampled_peak_child_rss_mb": mb(sampler.peak_child_rss_kib),
        "sampled_peak_processes": sampler.peak_processes,
        "cpu_self_s": rnd(cpu_self_s, 2),  # during the timed part only
        "cpu_children_s": rnd(sum(sampler.child_cpu.values()), 2),
        # CPU time that OTHER processes of the machine used meanwhile: a busy machine shows here
        "cpu_other_processes_s": rnd(max(0.0, sampler.system_busy_s - cpu_self_s - sum(sampler.child_cpu.values())), 1)
        if sampler.system_busy_s is not None else None,
    }


def _current_rss_kib() -> int:
    return _rss_pss_kib(os.getpid())[0]


# -- the three measurements, each run in a child process ---------------------------------------------


def _warm_up(encoder) -> None:
    """One forward pass before the clock starts (first calls pay for lazy initialisation)."""
    from PIL import Image

    size = encoder.input_size
    blank = Image.new("RGB", (size + size // 3, size), (120, 130, 140))
    encoder.embed_preprocessed([encoder.preprocess(blank)] * 2)


def child_naive(args: argparse.Namespace, files: list[str]) -> dict[str, Any]:
    from PIL import Image

    encoder = load_encoder(args.model, args.weights, NAIVE_BATCH)
    _warm_up(encoder)
    rss_loaded = _current_rss_kib()
    decode_s = forward_s = 0.0
    n = 0
    cpu0 = _cpu_self()
    with MemorySampler() as sampler:
        t_start = time.perf_counter()
        for start in range(0, len(files), NAIVE_BATCH):
            t0 = time.perf_counter()
            pixels = []
            for path in files[start : start + NAIVE_BATCH]:
                with Image.open(path) as im:
                    pixels.append(encoder.preprocess(im.convert("RGB")))
            t1 = time.perf_counter()
            vecs = encoder.embed_preprocessed(pixels)
            t2 = time.perf_counter()
            decode_s += t1 - t0
            forward_s += t2 - t1
            n += len(vecs)
            log(f"  naive {n}/{len(files)} ({n / (t2 - t_start):.2f} img/s)")
        seconds = time.perf_counter() - t_start
    cpu = _cpu_self() - cpu0
    return {
        "images": n,
        "seconds": rnd(seconds),
        "images_per_s": rnd(n / seconds, 2),
        "decode_preprocess_s": rnd(decode_s),
        "forward_s": rnd(forward_s),
        "forward_share": rnd(forward_s / seconds, 3),
        **memory_figures(sampler, rss_loaded, cpu),
    }


def child_retriever(args: argparse.Namespace, files: list[str]) -> dict[str, Any]:
    import retriever.indexer as indexer_module
    from retriever.index import open_for_writing
    from retriever.indexer import IndexOptions, default_workers, run_index

    if args.pipeline_draft_factor is not None:  # benchmark-only: what another DRAFT_FACTOR would give
        indexer_module.DRAFT_FACTOR = args.pipeline_draft_factor

    home = Path(args.home)
    # "retriever": PyTorch eager; "onnx": the same pipeline with ONNX Runtime running the image
    # tower (the index's export, checked against PyTorch when the index is created)
    backend = "onnx" if args.child == "onnx" else "pytorch"
    idx, encoder, _ = open_for_writing(home, "indexing-bench", model=args.model, pretrained=args.weights,
                                       device="cpu", batch_size=NAIVE_BATCH, onnx_export=backend == "onnx",
                                       backend=backend)
    try:
        _warm_up(encoder)
        rss_loaded = _current_rss_kib()
        forward = {"seconds": 0.0, "images": 0, "first_call": None}
        real_embed = encoder.embed_preprocessed

        def timed_embed(items):  # an instance attribute: run_index still sees an Encoder
            t0 = time.perf_counter()
            if forward["first_call"] is None:
                forward["first_call"] = t0
            out = real_embed(items)
            forward["seconds"] += time.perf_counter() - t0
            forward["images"] += len(items)
            return out

        encoder.embed_preprocessed = timed_embed
        last = [0.0]

        def progress(p) -> None:
            if p.elapsed - last[0] >= 5 or p.done == p.total:
                last[0] = p.elapsed
                log(f"  retriever {p.done}/{p.total} ({p.rate:.2f} img/s)")

        cpu0 = _cpu_self()
        with MemorySampler() as sampler:
            t0 = time.perf_counter()
            options = IndexOptions(workers=args.workers, **({"pool": args.pool} if args.pool else {}))
            summary = run_index(idx, encoder, files, options, on_progress=progress)
            seconds = time.perf_counter() - t0
        cpu = _cpu_self() - cpu0
        fwd = forward["seconds"]
        out = {
            "images": summary.indexed,
            "failed": summary.failed,
            "failures": [f"{os.path.basename(p)}: {r}" for p, r in summary.failures[:3]],
            "tuning": summary.tuning,
            "seconds": rnd(seconds),
            "run_seconds": rnd(summary.seconds),
            "images_per_s": rnd(summary.indexed / seconds, 2) if seconds > 0 else None,
            "forward_s": rnd(fwd),
            "forward_share": rnd(fwd / seconds, 3) if seconds > 0 else None,
            "forward_images_per_s": rnd(forward["images"] / fwd, 2) if fwd > 0 else None,
            # until the first batch of preprocessed images reached the model: pool start-up + first decodes
            "first_batch_ready_s": rnd(forward["first_call"] - t0) if forward["first_call"] else None,
            # the rate once the pool is up and the first batch decoded: what start-up costs
            "images_per_s_after_first_batch": rnd(summary.indexed / (t0 + seconds - forward["first_call"]), 2)
            if forward["first_call"] else None,
            "workers": args.workers or default_workers(),
            "pool": getattr(options, "pool", None),
            "draft_factor": getattr(indexer_module, "DRAFT_FACTOR", None),
            "backend": summary.backend,
            "onnx_measured_at_export": (idx.catalog.get_setting("onnx") or {}).get("indexing"),
            **memory_figures(sampler, rss_loaded, cpu),
        }
    finally:
        idx.close()
    return out


def child_decode(args: argparse.Namespace, files: list[str]) -> dict[str, Any]:
    """What ONE decode worker can do: measured in a worker process like retriever's (forkserver, one
    torch thread, the preprocessor unpickled, no model). Decoding in a process that holds a model is
    slower (a 12-MP full decode took ~50 ms instead of ~34 ms after loading one: the allocator
    behaves differently), so it is not measured here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    encoder = load_encoder(args.model, args.weights, NAIVE_BATCH)
    preprocessor, input_size = encoder.preprocessor(), encoder.input_size
    del encoder
    files = files[: args.decode_sample] if args.decode_sample else files
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method), initializer=_one_thread) as pool:
        return pool.submit(_measure_decode, preprocessor, input_size, files, args.draft_factor).result()


def _one_thread() -> None:
    try:  # as retriever's decode workers do
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _measure_decode(preprocess, input_size: int, files: list[str], draft_factor: float) -> dict[str, Any]:
    from collections import Counter

    from retriever.files import fingerprint_bytes
    from retriever.images import decode

    side = round(draft_factor * input_size)
    blobs = [Path(p).read_bytes() for p in files]  # the page cache is warm: time decoding, not the disk
    # untimed: the decoded sizes, and a warm-up
    sizes: Counter = Counter()
    scales: Counter = Counter()
    for i, data in enumerate(blobs):
        dec = decode(data, files[i], draft_min_side=side)
        sizes[f"{dec.image.width}x{dec.image.height}"] += 1
        scales[scale_label((dec.meta["width"], dec.meta["height"]), dec.image.size)] += 1
    decode(blobs[0], files[0])

    def rate(fn) -> tuple[float, float]:
        t0 = time.perf_counter()
        for i, data in enumerate(blobs):
            fn(i, data)
        s = time.perf_counter() - t0
        return len(blobs) / s, 1000 * s / len(blobs)

    full_rate, full_ms = rate(lambda i, d: decode(d, files[i]))
    draft_rate, draft_ms = rate(lambda i, d: decode(d, files[i], draft_min_side=side))
    full_pre_rate, full_pre_ms = rate(lambda i, d: preprocess(decode(d, files[i]).image))
    draft_pre_rate, draft_pre_ms = rate(lambda i, d: preprocess(decode(d, files[i], draft_min_side=side).image))

    def chain(i, _):
        with open(files[i], "rb") as f:
            data = f.read()
        fingerprint_bytes(data)
        preprocess(decode(data, files[i], draft_min_side=side).image)

    chain_rate, chain_ms = rate(chain)
    by_factor = {}
    for f in sorted({1.0, 2.0, float(draft_factor)}):
        s_f = round(f * input_size)
        by_factor[f"{f:g}"] = rnd(rate(lambda i, d: preprocess(decode(d, files[i], draft_min_side=s_f).image))[0], 1)
    total_mb = sum(len(b) for b in blobs) / 1e6
    return {
        "images": len(blobs),
        "mean_file_mb": rnd(total_mb / len(blobs), 2),
        "input_size": input_size,
        "draft_factor": draft_factor,
        "draft_min_side": side,
        "draft_scales": dict(scales),
        "draft_sizes": dict(sizes),
        "full_decode_images_per_s": rnd(full_rate, 1),
        "full_decode_ms": rnd(full_ms, 1),
        "draft_decode_images_per_s": rnd(draft_rate, 1),
        "draft_decode_ms": rnd(draft_ms, 1),
        "full_decode_preprocess_images_per_s": rnd(full_pre_rate, 1),
        "full_decode_preprocess_ms": rnd(full_pre_ms, 1),
        "draft_decode_preprocess_images_per_s": rnd(draft_pre_rate, 1),
        "draft_decode_preprocess_ms": rnd(draft_pre_ms, 1),
        "worker_chain_images_per_s": rnd(chain_rate, 1),
        "worker_chain_ms": rnd(chain_ms, 1),
        "workers_for_2000_full_decode": math.ceil(TARGET_DECODE_RATE / full_rate),
        "workers_for_2000_draft_decode": math.ceil(TARGET_DECODE_RATE / draft_rate),
        "workers_for_2000_worker_chain": math.ceil(TARGET_DECODE_RATE / chain_rate),
        "draft_decode_preprocess_images_per_s_by_factor": by_factor,
    }


CHILDREN = {"naive": child_naive, "retriever": child_retriever, "onnx": child_retriever, "decode": child_decode}


def run_child(mode: str, model: str, weights: str | None, files_list: Path, work: Path,
              args: argparse.Namespace) -> dict[str, Any]:
    home = work / f"home-{mode}-{model}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--model", model,
           "--files-list", str(files_list), "--home", str(home), "--workers", str(args.workers),
           "--draft-factor", repr(args.draft_factor), "--decode-sample", str(args.decode_sample)]
    if weights:
        cmd += ["--weights", weights]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.pipeline_draft_factor is not None:
        cmd += ["--pipeline-draft-factor", repr(args.pipeline_draft_factor)]
    if args.pool:
        cmd += ["--pool", args.pool]
    log(f"{model}: {mode} ...")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=None, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child for {model} exited {proc.returncode}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1])
    out["subprocess_wall_s"] = rnd(time.perf_counter() - t0, 1)
    shutil.rmtree(home, ignore_errors=True)
    return out


def indexer_state() -> dict[str, Any]:
    """Which indexer is being measured: the commit, whether indexer.py has uncommitted changes, and
    whether it decodes in processes with a DRAFT_FACTOR."""
    src = "".join((REPO / "retriever" / name).read_text() for name in ("indexer.py", "decode_pool.py"))

    def git(*a: str) -> str | None:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    import retriever.indexer as ix

    return {
        "git_head": git("log", "-1", "--format=%h %s"),
        "indexer_modified_uncommitted": bool(git("status", "--porcelain", "retriever/indexer.py",
                                                 "retriever/decode_pool.py")),
        "process_pool": "ProcessPool" in src,
        "draft_factor_in_indexer": getattr(ix, "DRAFT_FACTOR", None),
    }


def run(args: argparse.Namespace, work: Path, cache: Path) -> dict[str, Any]:
    load_start = loadavg()
    state = indexer_state()
    if args.draft_factor is None:
        args.draft_factor = state["draft_factor_in_indexer"] or PLANNED_DRAFT_FACTOR
        source = "retriever.indexer.DRAFT_FACTOR" if state["draft_factor_in_indexer"] else \
            f"planned value {PLANNED_DRAFT_FACTOR} (retriever.indexer has no DRAFT_FACTOR)"
    else:
        source = "--draft-factor"
    result: dict[str, Any] = {
        "benchmark": "indexing",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "indexer": state,
        "draft_factor": args.draft_factor,
        "draft_factor_source": source,
        "workers_option": args.workers,
        "batch_size": NAIVE_BATCH,
        "notes": [],
    }
    log(f"12-MP photos from {args.source} (cache {cache}) ...")
    photos = photo_set(args.source, args.n, cache, seed=args.seed)
    result["photos"] = photos.describe()
    files_list = work / "files.txt"
    files_list.write_text("\n".join(str(p) for p in photos.paths))
    for p in photos.paths:  # warm the page cache: every measurement reads from memory
        p.read_bytes()

    result["models"] = {}
    for model in args.models:
        weights, note = args.pretrained, None
        if model != "offline" and not weights:
            log(f"creating seeded random weights for {model} ...")
            weights, note, _ = random_weights_file(model, work)
            result["notes"].append(RANDOM_WEIGHTS_NOTE.split(":")[0] + ": they time exactly like trained ones.")
        m: dict[str, Any] = {"pretrained": note or weights}
        for mode in args.modes:
            m[mode] = run_child(mode, model, weights, files_list, work, args)
        if "retriever" in m and "onnx" in m and m["retriever"]["images_per_s"]:
            m["onnx_speedup"] = rnd(m["onnx"]["images_per_s"] / m["retriever"]["images_per_s"], 2)
            m["onnx_meets_target"] = m["onnx_speedup"] >= TARGET_ONNX_SPEEDUP
        if "naive" in m and "retriever" in m and m["naive"]["images_per_s"]:
            m["speedup"] = rnd(m["retriever"]["images_per_s"] / m["naive"]["images_per_s"], 2)
            m["meets_target"] = m["speedup"] >= TARGET_SPEEDUP
        result["models"][model] = m
    result["target_speedup"] = TARGET_SPEEDUP
    result["target_onnx_speedup"] = TARGET_ONNX_SPEEDUP
    result["env"] = env_info(load_start)
    return result


# -- output ------------------------------------------------------------------------------------------


def table(r: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = []
    head = ("model", "figure", "value", "notes")
    for model, m in r["models"].items():
        for mode in ("naive", "retriever", "onnx"):
            if mode not in m:
                continue
            x = m[mode]
            extra = f", {x['workers']} {x.get('pool') or ''} workers".replace("  ", " ") if mode != "naive" else ""
            if mode != "naive" and x.get("backend"):
                extra += f", {x['backend']}"
            rows.append((model, f"{mode} indexing", f"{x['images_per_s']} img/s",
                         f"{x['images']} images in {x['seconds']:.1f} s; forward passes {x['forward_s']:.1f} s "
                         f"({100 * x['forward_share']:.0f} %){extra}"))
            rows.append((model, f"  {mode} memory", f"{x['sampled_peak_pss_sum_mb']:.0f} MB PSS",
                         f"peak sums over {x['sampled_peak_processes']} processes: RSS {x['sampled_peak_rss_sum_mb']:.0f} MB; "
                         f"ru_maxrss main {x['maxrss_self_mb']:.0f} MB ({x['rss_after_load_mb']:.0f} MB after model load)"
                         + (f", largest worker {x['sampled_peak_child_rss_mb']:.0f} MB RSS"
                            if x["sampled_peak_processes"] > 1 else "")))
            rows.append((model, f"  {mode} CPU", f"{x['cpu_self_s'] + x['cpu_children_s']:.1f} s",
                         f"main process {x['cpu_self_s']:.1f} s + workers {x['cpu_children_s']:.1f} s, "
                         f"in {x['seconds']:.1f} s on {r['env']['cpu_count']} CPUs; other processes "
                         f"{x['cpu_other_processes_s']} s"
                         + (f"; first batch ready after {x['first_batch_ready_s']:.1f} s, "
                            f"{x['images_per_s_after_first_batch']} img/s from there"
                            if x.get("first_batch_ready_s") is not None else "")))
        if "speedup" in m:
            rows.append((model, "retriever / naive", f"{m['speedup']:.2f}x",
                         f"target >= {r['target_speedup']:.0f}x: {'ok' if m['meets_target'] else 'MISSED'}"))
        if "onnx_speedup" in m:
            measured = m["onnx"].get("onnx_measured_at_export") or {}
            rows.append((model, "onnx / retriever (PyTorch)", f"{m['onnx_speedup']:.2f}x",
                         f"target >= {r['target_onnx_speedup']}x: {'ok' if m['onnx_meets_target'] else 'MISSED'}; "
                         f"at export the towers alone: ONNX {measured.get('onnx_images_per_s')} vs PyTorch "
                         f"{measured.get('pytorch_images_per_s')} img/s, auto chooses {measured.get('backend')}"))
        if "decode" in m:
            d = m["decode"]
            rows.append((model, "1 worker: full decode", f"{d['full_decode_images_per_s']} img/s",
                         f"{d['full_decode_ms']} ms each; {d['workers_for_2000_full_decode']} workers for 2,000 img/s"))
            rows.append((model, "1 worker: draft decode", f"{d['draft_decode_images_per_s']} img/s",
                         f"min side {d['draft_min_side']} -> {'+'.join(d['draft_scales'])}; "
                         f"{d['workers_for_2000_draft_decode']} workers for 2,000 img/s"))
            rows.append((model, "1 worker: full + preprocess", f"{d['full_decode_preprocess_images_per_s']} img/s", ""))
            rows.append((model, "1 worker: draft + preprocess", f"{d['draft_decode_preprocess_images_per_s']} img/s", ""))
            rows.append((model, "1 worker: whole chain", f"{d['worker_chain_images_per_s']} img/s",
                         f"read + fingerprint + draft decode + preprocess; "
                         f"{d['workers_for_2000_worker_chain']} workers for 2,000 img/s"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    ph, ix, e = r["photos"], r["indexer"], r["env"]
    lines.append("")
    lines.append(f"{ph['n']} JPEGs {ph['size']}, {ph['mean_file_mb']} MB each; draft factor {r['draft_factor']} "
                 f"({r['draft_factor_source']}); indexer: {ix['git_head']}"
                 f"{' + uncommitted changes' if ix['indexer_modified_uncommitted'] else ''}, "
                 f"{'process' if ix['process_pool'] else 'thread'} pool")
    for note in r["notes"]:
        lines.append(f"note: {note}")
    lines.append(f"python {e['python']}, torch {e['torch']} ({e['torch_threads']} threads), Pillow {e['pillow']}, "
                 f"{e['cpu_count']} CPUs ({e['processor']}), load average {e['loadavg_1m_start']} -> {e['loadavg_1m_end']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Indexing throughput on 12-MP JPEGs, retriever vs a naive loop: one JSON line, then a table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of real photos (only read)")
    ap.add_argument("--n", type=int, default=200, help="12-MP photos indexed")
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep the generated 12-MP files here and reuse them [default: a temporary folder, deleted]")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated: open_clip architectures and/or 'offline'")
    ap.add_argument("--model", dest="models", help="one model (same as --models NAME)")
    ap.add_argument("--pretrained", default=None,
                    help="weights for the open_clip model; without it, seeded random weights in a temporary .pt file")
    ap.add_argument("--workers", type=int, default=0, help="IndexOptions(workers=N) (0: retriever's default)")
    ap.add_argument("--draft-factor", type=float, default=None,
                    help="for the decode figures: draft_min_side = factor * input_size "
                         f"[default: retriever.indexer.DRAFT_FACTOR, else {PLANNED_DRAFT_FACTOR}]")
    ap.add_argument("--pool", choices=["process", "thread", "auto"], default=None,
                    help="IndexOptions(pool=...): decode in worker processes or threads [default: retriever's, "
                         "'auto' = processes from 64 files on]")
    ap.add_argument("--pipeline-draft-factor", type=float, default=None,
                    help="benchmark only: set retriever.indexer.DRAFT_FACTOR to this in the retriever run "
                         "(what another factor would give end to end) [default: leave it]")
    ap.add_argument("--decode-sample", type=int, default=0, help="photos in the decode figures (0: all --n)")
    ap.add_argument("--modes", default="naive,retriever,decode", help="which measurements, comma-separated")
    ap.add_argument("--seed", type=int, default=0, help="which photos, and the noise")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in the measuring processes (0: default)")
    # internal: one measurement in a child process
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--files-list", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--home", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in str(args.models).split(",") if m.strip()]
    args.modes = [m.strip() for m in str(args.modes).split(",") if m.strip()]
    if args.child:
        return args
    if set(args.modes) - set(CHILDREN):
        ap.error(f"--modes: choose among {', '.join(CHILDREN)}")
    if args.n < 1:
        ap.error("--n must be at least 1")
    if not args.source.is_dir():
        ap.error(f"--source: no such folder: {args.source}")
    return args


def child_main(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.model = args.models[0]
    if args.draft_factor is None:
        args.draft_factor = PLANNED_DRAFT_FACTOR
    files = [ln for ln in args.files_list.read_text().splitlines() if ln]
    with stdout_to_stderr():
        out = CHILDREN[args.child](args, files)
    print(json.dumps(out), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    work = Path(tempfile.mkdtemp(prefix="retriever-indexing-"))
    try:
        with cache_folder(args.cache, "retriever-indexing-photos-") as cache, stdout_to_stderr():
            result = run(args, work, cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)
    print(table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
