"""Indexing a NEW collection: `retriever index` against rclip 3.3 and a naive loop, speed and memory.

    python -m venv /tmp/rclip-venv && /tmp/rclip-venv/bin/pip install rclip==3.3.0   # its own venv
    python benchmarks/index_rclip.py                                   # both loads, one run each
    python benchmarks/index_rclip.py --loads small --n-small 60 --runs 1   # a quick look
    python benchmarks/index_rclip.py --loads big --runs 3 --work /tmp/ir --big-cache /tmp/rb-cache

Two loads, each in a folder of its own that the contenders only read (page cache warmed first):
  big    200 12-MP JPEGs (4000x3000, quality 90) made from real photos (--photos, default
         ../shared/datasets/caltech101-test) by benchmarks/draft_agreement.py's generator, kept
         in --big-cache (slow to make the first time) and hard-linked into the load's folder;
  small  --n-small (1,000) of those real photos (about 300x200), copied.

Contenders, each a fresh process timed from spawn to exit (wall seconds), in the same run, their
order reversed every other repeat (--runs) so that a slow spell of the machine hits all of them:
  rclip           its first search in the photo folder (`rclip -f -t 1 "a photo"`, cwd = the
                  folder), which indexes every photo before answering; a fresh RCLIP_DATADIR per
                  run (so a fresh db.sqlite3) holding symlinks to ONE export of ViT-B-32-256's
                  towers in the layout of rclip's model_download.py (see rclip_compare.py);
                  HF_HUB_OFFLINE=1. The photos indexed are counted in its database afterwards.
  retriever_warm  `retriever index PHOTOS --model ViT-B-32-256 --pretrained WEIGHTS --json -q`
                  into a fresh RETRIEVER_HOME with RETRIEVER_CACHE_DIR on a model cache that
                  already holds this model's ONNX export (made once before the timed runs by
                  indexing 4 photos into a throwaway home): a new collection on a machine that
                  has used the model before. RETRIEVER_NO_DAEMON=1, no other RETRIEVER_* variable.
  retriever_cold  the same with a fresh, empty model cache each run: the first index ever on the
                  machine, which exports the model (--no-cold skips it).
  retriever_int8  retriever_warm with --precision int8: the image tower quantized by ONNX Runtime,
                  derived once from the export before the timed runs (--no-int8 skips it);
  naive           this script's --naive-child: walk, PIL open + convert("RGB"), the export's own
                  PIL + numpy preprocessing, batches of 32 through an ONNX Runtime session of the
                  cached image tower, vectors in a numpy array, no database: the 20-line floor.
Both tools run the same architecture with the same seeded random weights (torch.manual_seed(0),
which time like trained ones); nothing is downloaded.

For every run: wall seconds, images/s (photos / wall), the peak of the summed RSS (and PSS) of the
process and all its descendants, sampled every 20 ms from /proc (benchmarks/indexing.py's
helpers; the PSS sum every 0.2 s), the tree's CPU seconds (wait4), the CPU seconds the rest of the
machine used meanwhile (a busy machine shows there), and for
retriever its JSON run summary; retriever_overhead_s = wall - the summary's own `seconds`: what
happens outside the indexing run (imports, opening and creating the index, the final steps). The
run's `seconds` counts the model's load (and, on a cold cache, its export): it happens on first
need, inside the run. Every run must index every photo of its load (checked).

Targets (the project's issue): big, retriever_warm at least 1.8x rclip's speed (rclip wall /
retriever wall); small, at least 1.0x; retriever_warm's peak RSS at most 1.2x rclip's on each load;
retriever_warm's overhead at most 2 s. Cold and naive figures are shown beside them (no targets).

Prints FIRST one JSON line holding every figure, THEN a readable table. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
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

from draft_agreement import photo_set  # noqa: E402
from indexing import MemorySampler, _descendants, _rss_pss_kib  # noqa: E402
from rclip_compare import ARCH, DEFAULT_PHOTOS, RCLIP_MODEL_SUBDIR, copy_photos, export_for_rclip  # noqa: E402
from speed import cpu_name, loadavg, make_random_weights, stdout_to_stderr, subprocess_env  # noqa: E402

TARGET_SPEED = {"big": 1.8, "small": 1.0}  # retriever_warm speed / rclip's, at least
TARGET_RSS_RATIO = 1.2  # retriever_warm peak RSS / rclip's, at most
TARGET_OVERHEAD_S = 2.0  # retriever_warm wall - its run summary's seconds, at most
BIG_N = 200
NAIVE_BATCH = 32
SAMPLE_EVERY_S = 0.02
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(msg: str) -> None:
    print(f"[index_rclip] {msg}", file=sys.stderr, flush=True)


def rnd(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


class TreeSampler(MemorySampler):
    """indexing.MemorySampler's thread and peaks, for another process's tree (not this one's). The
    RSS sum every sample from /proc/PID/statm (~20 us a process); the PSS sum (smaps_rollup, ~1 ms
    for a 2.5 GB process, and it takes the process's mmap lock) every PSS_EVERY-th sample only."""

    PSS_EVERY = 10

    def __init__(self, pid: int, interval: float = SAMPLE_EVERY_S):
        super().__init__(interval)
        self.pid = pid

    def sample(self) -> None:
        pids = [self.pid, *_descendants(self.pid)]
        rss = alive = 0
        for p in pids:
            try:
                with open(f"/proc/{p}/statm") as f:
                    rss += int(f.read().split()[1]) * PAGE_KIB
                alive += 1
            except (OSError, ValueError, IndexError):
                pass
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        if self.samples % self.PSS_EVERY == 0:
            self.peak_pss_kib = max(self.peak_pss_kib, sum(_rss_pss_kib(p)[1] for p in pids))
        self.peak_processes = max(self.peak_processes, alive)
        self.samples += 1


def measure(cmd: list[str], *, cwd: Path, env: dict[str, str], out_dir: Path, what: str) -> dict[str, Any]:
    """One fresh process, spawn to exit: wall, sampled peaks of the tree, its CPU (wait4), stdout.
    (wait4's ru_maxrss is no use here: Linux carries this process's own RSS at fork into it.)"""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "stdout.txt", "wb") as so, open(out_dir / "stderr.txt", "wb") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=so, stderr=se, stdin=subprocess.DEVNULL)
        with TreeSampler(proc.pid) as sampler:
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (out_dir / "stderr.txt").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{what} exited {proc.returncode}: {tail}")
    return {"wall_s": wall, "peak_rss_mb": rnd(sampler.peak_rss_kib / 1024, 1),
            "peak_pss_mb": rnd(sampler.peak_pss_kib / 1024, 1),
            "cpu_s": rnd(usage.ru_utime + usage.ru_stime, 2), "peak_processes": sampler.peak_processes,
            # CPU time the rest of the machine used meanwhile (this script's sampler included): a busy machine
            "cpu_others_s": rnd(max(0.0, sampler.system_busy_s - usage.ru_utime - usage.ru_stime), 2)
            if sampler.system_busy_s is not None else None,
            "samples": sampler.samples, "stdout": (out_dir / "stdout.txt").read_text(errors="replace")}


def json_line(out: str, what: str) -> dict[str, Any]:
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{what} printed no JSON summary: {out[-500:]!r}")
    return json.loads(lines[-1])


# -- the naive loop (a child process) --------------------------------------------------------------


def naive_child(folder: Path, entry: Path) -> int:
    t0 = time.perf_counter()
    import numpy as np
    from PIL import Image

    from retriever.onnx.preprocess import preprocessor_from
    from retriever.onnx.session import make_session

    record = json.loads((entry / "manifest.json").read_text())["record"]
    preprocess = preprocessor_from(record["image_preprocess"])
    session = make_session(entry / record["towers"]["image"]["file"])
    paths = sorted(Path(d, f) for d, _, fs in os.walk(folder) for f in fs if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    vectors, batch = [], []
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            batch.append(preprocess(im.convert("RGB")))
        if len(batch) == NAIVE_BATCH or i == len(paths) - 1:
            vectors.append(session.run(["embedding"], {"pixels": np.stack(batch)})[0])
            batch = []
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, int(record["dim"])), np.float32)
    print(json.dumps({"indexed": int(matrix.shape[0]), "dim": int(matrix.shape[1]),
                      "seconds": round(time.perf_counter() - t0, 3)}))
    return 0


# -- the benchmark ---------------------------------------------------------------------------------


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str | None:
        try:  # GIT_OPTIONAL_LOCKS=0: `git status` leaves .git/index alone (someone else may be committing)
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=20,
                                  env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return None

    porcelain = git("status", "--porcelain", "--untracked-files=no")
    changed = [ln[3:] for ln in (porcelain or "").splitlines()]
    return {"head": git("rev-parse", "--short", "HEAD"), "dirty": bool(changed), "changed": changed}


def make_loads(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    loads: dict[str, dict[str, Any]] = {}
    for name in args.loads:
        folder = work / f"load-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        if name == "big":
            log(f"big: {BIG_N} 12-MP JPEGs from {args.photos} (cache {args.big_cache}; slow the first time) ...")
            made = photo_set(args.photos, BIG_N, args.big_cache, kind="upscale")
            if len(made.paths) != BIG_N:
                raise SystemExit(f"only {len(made.paths)} 12-MP photos could be made, not {BIG_N}")
            folder.mkdir(parents=True)
            for p in made.paths:
                try:
                    os.link(p, folder / p.name)
                except OSError:
                    shutil.copyfile(p, folder / p.name)
            about = made.describe()
        else:
            copy_photos(args.photos, folder, args.n_small)
            about = {"kind": "real photos, copied", "source": str(args.photos)}
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        about["total_mb"] = rnd(sum(p.stat().st_size for p in files) / 1e6, 1)
        for p in files:  # the page cache: every contender reads from memory
            p.read_bytes()
        loads[name] = {"folder": folder, "n": len(files), "about": about}
        log(f"{name}: {len(files)} photos in {folder} ({about['total_mb']} MB)")
    return loads


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    load_start, git_start = loadavg(), git_state()
    loads = make_loads(args, work)
    with stdout_to_stderr():
        log("seeded random weights and rclip's ONNX files ...")
        weights = make_random_weights(ARCH, work)
        rclip_model = work / "rclip-model"
        exported = export_for_rclip(weights, rclip_model)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RETRIEVER_", "RCLIP_"))}
    retriever = Path(sys.executable).parent / "retriever"
    if not retriever.is_file():
        raise SystemExit(f"no console script at {retriever}: pip install -e . in this venv")
    runs_dir = work / "runs"

    def retriever_cmd(photos: Path, precision: str = "fp32") -> list[str]:
        return [str(retriever), "index", str(photos), "--model", ARCH, "--pretrained", str(weights), "--json", "-q",
                "--precision", precision]

    def retriever_env(home: Path, cache: Path) -> dict[str, str]:
        return {**base, "RETRIEVER_HOME": str(home), "RETRIEVER_CACHE_DIR": str(cache), "RETRIEVER_NO_DAEMON": "1"}

    warm_cache = work / "cache-warm"
    shutil.rmtree(warm_cache, ignore_errors=True)
    tiny = work / "tiny"
    for old in (tiny, work / "home-prep", work / "home-prep8"):  # an index left by a run before: not new
        shutil.rmtree(old, ignore_errors=True)
    copy_photos(args.photos, tiny, 4)
    log("preparing the warm model cache (indexing 4 photos; exports the model) ...")
    prep = measure(retriever_cmd(tiny), cwd=work, env=retriever_env(work / "home-prep", warm_cache),
                   out_dir=runs_dir / "prep", what="retriever index (warm-cache preparation)")
    prep_summary = json_line(prep.pop("stdout"), "retriever index (preparation)")
    # An open_clip model's first index encodes with PyTorch while its export is made in a child
    # process that outlives the command (retriever.onnx.prepare): wait for that export.
    deadline = time.monotonic() + 600
    while True:
        entries = [m.parent for m in (warm_cache / "onnx").glob("*/manifest.json")
                   if json.loads(m.read_text()).get("record", {}).get("ok")]
        if entries or time.monotonic() > deadline:
            break
        time.sleep(2)
    if len(entries) != 1:
        raise RuntimeError(f"expected one usable export in {warm_cache / 'onnx'}, found {entries}")
    entry = entries[0]
    record = json.loads((entry / "manifest.json").read_text())["record"]
    log(f"  {prep['wall_s']:.1f} s; export {entry.name}, indexing measured at export: {record.get('indexing')}")
    int8_prep = None
    if not args.no_int8:  # the int8 tower derived from the export, once (no timing: a one-off, like the export)
        int8_prep = measure(retriever_cmd(tiny, "int8"), cwd=work, env=retriever_env(work / "home-prep8", warm_cache),
                            out_dir=runs_dir / "prep8", what="retriever index --precision int8 (preparation)")
        int8_prep.pop("stdout")
        int8_record = next(json.loads(m.read_text())["record"] for m in (warm_cache / "onnx").glob("*/manifest.json")
                           if json.loads(m.read_text())["record"].get("precision") == "int8")
        int8_prep["int8"] = int8_record.get("int8")
        log(f"  int8 tower: {int8_prep['wall_s']:.1f} s; {int8_record.get('int8')}")

    def run_rclip(load: dict[str, Any], tag: str) -> dict[str, Any]:
        datadir = runs_dir / tag / "rclip-data"
        shutil.rmtree(datadir, ignore_errors=True)
        datadir.mkdir(parents=True)
        for sub in (RCLIP_MODEL_SUBDIR, "tokenizer"):  # the model, shared; the db, fresh
            (datadir / sub).symlink_to(rclip_model / sub, target_is_directory=True)
        env = {k: v for k, v in base.items() if k != "PYTHONPATH"}
        env.update(RCLIP_DATADIR=str(datadir), HF_HUB_OFFLINE="1")
        r = measure([str(args.rclip), "-f", "-t", "1", "a photo"], cwd=load["folder"], env=env,
                    out_dir=runs_dir / tag, what="rclip")
        r.pop("stdout")
        with sqlite3.connect(datadir / "db.sqlite3") as con:
            r["indexed"] = con.execute("SELECT COUNT(*) FROM images WHERE deleted IS NULL").fetchone()[0]
        return r

    def run_retriever(load: dict[str, Any], tag: str, cold: bool, precision: str = "fp32") -> dict[str, Any]:
        home = runs_dir / tag / "home"
        cache = runs_dir / tag / "cache" if cold else warm_cache
        for d in (home, *([cache] if cold else [])):
            shutil.rmtree(d, ignore_errors=True)
        r = measure(retriever_cmd(load["folder"], precision), cwd=work, env=retriever_env(home, cache),
                    out_dir=runs_dir / tag, what=f"retriever index ({'cold' if cold else 'warm'})")
        summary = json_line(r.pop("stdout"), "retriever index")
        if cold:
            shutil.rmtree(cache, ignore_errors=True)  # an export is ~600 MB
        r.update(indexed=summary.get("indexed"), failed=summary.get("failed"), summary_seconds=summary.get("seconds"),
                 summary_images_per_s=summary.get("images_per_second"), backend=summary.get("backend"),
                 overhead_s=rnd(r["wall_s"] - summary.get("seconds", 0.0)), summary=summary)
        r.update({k: v for k, v in summary.items() if "steady" in k})
        return r

    def run_naive(load: dict[str, Any], tag: str) -> dict[str, Any]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--naive-child", str(load["folder"]),
               "--onnx-folder", str(entry)]
        r = measure(cmd, cwd=REPO, env=subprocess_env(), out_dir=runs_dir / tag, what="naive loop")
        out = json_line(r.pop("stdout"), "naive loop")
        r.update(indexed=out["indexed"], loop_seconds=out["seconds"])
        return r

    contenders = {"rclip": lambda ld, tag: run_rclip(ld, tag),
                  "retriever_warm": lambda ld, tag: run_retriever(ld, tag, cold=False),
                  "retriever_cold": lambda ld, tag: run_retriever(ld, tag, cold=True),
                  "naive": lambda ld, tag: run_naive(ld, tag),
                  "retriever_int8": lambda ld, tag: run_retriever(ld, tag, cold=False, precision="int8")}
    if args.no_cold:
        del contenders["retriever_cold"]
    if args.no_int8:
        del contenders["retriever_int8"]

    result_loads: dict[str, Any] = {}
    for name, load in loads.items():
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
        for r in range(args.runs):
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for c in order:
                log(f"{name} run {r + 1}/{args.runs}: {c} ...")
                one = contenders[c](load, f"{name}-{c}-{r}")
                if one["indexed"] != load["n"]:
                    raise RuntimeError(f"{c} indexed {one['indexed']} photos of the {name} load's {load['n']}")
                one["wall_s"] = rnd(one["wall_s"])
                one["images_per_s"] = rnd(load["n"] / one["wall_s"], 2)
                runs[c].append(one)
                log(f"  {one['wall_s']:.2f} s, {one['images_per_s']:.1f} images/s, peak RSS {one['peak_rss_mb']} MB"
                    + (f", overhead {one['overhead_s']:.2f} s" if "overhead_s" in one else ""))
        figures: dict[str, Any] = {}
        for c, rs in runs.items():
            def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
                return statistics.median(x[key] for x in rs)

            wall = med("wall_s")
            figures[c] = {"wall_s": rnd(wall), "images_per_s": rnd(load["n"] / wall, 2),
                          "peak_rss_mb": rnd(med("peak_rss_mb"), 1), "peak_pss_mb": rnd(med("peak_pss_mb"), 1),
                          "cpu_s": rnd(med("cpu_s"), 2), "cpu_others_s": rnd(max(x["cpu_others_s"] or 0 for x in rs), 2),
                          "runs": rs}
            if c.startswith("retriever"):
                figures[c].update(overhead_s=rnd(med("overhead_s")), summary_seconds=rnd(med("summary_seconds")),
                                  backend=rs[-1]["backend"])
        rc = figures["rclip"]
        ratios = {f"speed_{c}_vs_rclip": rnd(rc["wall_s"] / f["wall_s"]) for c, f in figures.items() if c != "rclip"}
        ratios.update({f"rss_{c}_vs_rclip": rnd(f["peak_rss_mb"] / rc["peak_rss_mb"]) for c, f in figures.items()
                       if c != "rclip"})
        result_loads[name] = {"photos": load["n"], "folder": str(load["folder"]), "about": load["about"],
                              "contenders": figures, "ratios": ratios}

    targets: dict[str, Any] = {}
    for name, ld in result_loads.items():
        warm, ratios = ld["contenders"]["retriever_warm"], ld["ratios"]
        targets[f"{name}_speed"] = {"value": ratios["speed_retriever_warm_vs_rclip"], "at_least": TARGET_SPEED[name]}
        targets[f"{name}_rss"] = {"value": ratios["rss_retriever_warm_vs_rclip"], "at_most": TARGET_RSS_RATIO}
        targets[f"{name}_overhead_s"] = {"value": warm["overhead_s"], "at_most": TARGET_OVERHEAD_S}
    for t in targets.values():
        t["met"] = t["value"] >= t["at_least"] if "at_least" in t else t["value"] <= t["at_most"]
    prep["summary"] = prep_summary
    return {
        "benchmark": "index_rclip", "arch": ARCH, "weights": "random, torch.manual_seed(0)", "runs": args.runs,
        "rclip": str(args.rclip), "rclip_export": exported, "retriever_export": {"entry": entry.name, **{
            k: record.get(k) for k in ("indexing", "image_preprocess", "dim")}},
        "warm_cache_preparation": prep, "int8_preparation": int8_prep, "loads": result_loads, "targets": targets,
        "all_targets_met": all(t["met"] for t in targets.values()),
        "loadavg_start": load_start, "loadavg_end": loadavg(), "cpu": cpu_name(), "cores": os.cpu_count(),
        "git": git_start,  # the tree when the run started; git_end: when it ended, if it changed meanwhile
        **({"git_end": git_end} if (git_end := git_state()) != git_start else {}),
    }


# -- output ----------------------------------------------------------------------------------------

LABELS = {"rclip": "rclip 3.3 (first search)", "retriever_warm": "retriever index, model cached",
          "retriever_cold": "retriever index, first ever (exports)", "naive": "naive loop (ONNX, no db)",
          "retriever_int8": "retriever index --precision int8, model cached"}
TARGET_LABELS = {"speed": "retriever_warm speed / rclip's", "rss": "retriever_warm peak RSS / rclip's",
                 "overhead_s": "retriever_warm overhead (wall - run), s"}


def table(r: dict[str, Any]) -> str:
    lines = [f"indexing a new collection: retriever vs rclip, {r['arch']} ({r['weights']}), median of {r['runs']} "
             f"run(s), {r['cores']} cores ({r['cpu']}), git {r['git']['head']}{' (dirty)' if r['git']['dirty'] else ''}"
             + (f" at the start, {r['git_end']['head']}{' (dirty)' if r['git_end']['dirty'] else ''} at the end"
                if "git_end" in r else "")]
    for name, ld in r["loads"].items():
        about = ld["about"]
        lines += ["", f"**{name}**: {ld['photos']} photos, {about.get('total_mb')} MB ({about.get('kind')})", "",
                  "| contender | wall s | images/s | speed vs rclip | peak RSS MB | peak PSS MB | RSS vs rclip "
                  "| CPU s | others' CPU s | overhead s | backend |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c, f in ld["contenders"].items():
            speed = ld["ratios"].get(f"speed_{c}_vs_rclip", 1.0)
            rss = ld["ratios"].get(f"rss_{c}_vs_rclip", 1.0)
            over = f"{f['overhead_s']:.2f}" if f.get("overhead_s") is not None else "-"
            lines.append(f"| {LABELS[c]} | {f['wall_s']:.2f} | {f['images_per_s']:.1f} | {speed:.2f}x "
                         f"| {f['peak_rss_mb']:.0f} | {f['peak_pss_mb']:.0f} | {rss:.2f}x | {f['cpu_s']:.1f} | {f['cpu_others_s']:.1f} "
                         f"| {over} | {f.get('backend') or '-'} |")
    lines += ["", "| target | load | value | limit | |", "|---|---|---|---|---|"]
    for key, t in r["targets"].items():
        load, what = key.split("_", 1)
        limit = f"≥ {t['at_least']}" if "at_least" in t else f"≤ {t['at_most']}"
        lines.append(f"| {TARGET_LABELS[what]} | {load} | {t['value']:.2f} | {limit} | {'met' if t['met'] else 'NOT met'} |")
    prep = r["warm_cache_preparation"]
    lines += ["", f"warm-cache preparation (4 photos, exports the model): {prep['wall_s']:.1f} s, peak RSS "
                  f"{prep['peak_rss_mb']:.0f} MB; indexing backend measured at export: "
                  f"{(r['retriever_export'].get('indexing') or {}).get('backend', r['retriever_export'].get('indexing'))}",
              f"load average {r['loadavg_start']} at the start, {r['loadavg_end']} at the end; others' CPU s: "
              "CPU time the rest of the machine used during a run (the most of any run): a busy machine"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loads", default="big,small", help="comma-separated: big, small")
    ap.add_argument("--runs", type=int, default=1, help="timed runs of each contender on each load")
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of real photos (only read)")
    ap.add_argument("--n-small", type=int, default=1000, help="photos in the small load")
    ap.add_argument("--rclip", type=Path, default=Path("/tmp/rclip-venv/bin/rclip"), help="rclip's script")
    ap.add_argument("--work", type=Path, default=None, help="keep everything in this folder")
    ap.add_argument("--no-cold", action="store_true", help="skip retriever_cold (the first index ever)")
    ap.add_argument("--no-int8", action="store_true", help="skip retriever_int8 (--precision int8, model cached)")
    ap.add_argument("--big-cache", type=Path, default=Path("/tmp/rb-cache"), help="where the 12-MP photos are kept")
    ap.add_argument("--naive-child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--onnx-folder", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.loads = [x.strip() for x in args.loads.split(",") if x.strip()]
    if not args.loads or set(args.loads) - set(TARGET_SPEED):
        ap.error(f"--loads takes {', '.join(TARGET_SPEED)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive_child is not None:
        return naive_child(args.naive_child, args.onnx_folder)
    if not args.rclip.is_file():
        raise SystemExit(f"rclip not found at {args.rclip}: pip install rclip==3.3.0 (a venv of its own is best)")
    work = (args.work or Path(tempfile.mkdtemp(prefix="index-rclip-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
