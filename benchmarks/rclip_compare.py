"""retriever against rclip, same photos, same architecture: CLI text-search wall time and indexing.

    pip install rclip              # best in its own venv: it pins numpy, pillow and regex
    python benchmarks/rclip_compare.py --rclip /tmp/rclip-venv/bin/rclip
    python benchmarks/rclip_compare.py --rclip ... --photos ../shared/datasets/caltech101-test --n 1000 --runs 9

rclip (https://github.com/yurijmikhalevich/rclip) runs open_clip's ViT-B-32-256 on ONNX Runtime and
downloads its model files from the Hugging Face hub on first use. Nothing can be downloaded here,
so this script gives both tools the same model offline:

  1. ViT-B-32-256 with seeded random weights (torch.manual_seed(0)), saved to a local .pt file.
     Random weights time exactly like the real ones (same architecture, same FLOPs).
  2. For rclip, both towers exported to ONNX in the folder layout its model_download.py expects
     ($RCLIP_DATADIR/ViT-B-32-256-datacomp_s34b_b86k/{visual,textual}.onnx, input "input",
     dynamic batch) and open_clip's BPE vocabulary at tokenizer/bpe_simple_vocab_16e6.txt.gz.
     RCLIP_DATADIR points rclip at them and HF_HUB_OFFLINE=1 keeps it off the network.
  3. For retriever, `retriever index PHOTOS --model ViT-B-32-256 --pretrained FILE`, which exports
     its own ONNX towers and checks them against PyTorch.

Measured, in the same run and on the same --n photos copied from --photos (real photos):
  - indexing: rclip's first search (it indexes the current folder before answering) and
    `retriever index`, wall seconds, model load included;
  - first query after a fresh start: a new process answering one text query, warm disk cache,
    median of --runs (queries differ between runs); rclip as a user runs it (it re-checks the
    folder for new files first) and with --no-indexing; retriever with no daemon
    (RETRIEVER_NO_DAEMON=1) and, when the daemon is there, with it warm.
  The runs of the tools alternate, so a slow spell of the machine hits both.
  The `retriever` and `rclip` run are the real console scripts, not a pyenv shim.

Prints FIRST one JSON line holding every figure, THEN a readable table. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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

from speed import cpu_name, loadavg, make_queries, make_random_weights, stdout_to_stderr  # noqa: E402

ARCH = "ViT-B-32-256"
RCLIP_MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"  # rclip/model_download.py
DEFAULT_PHOTOS = REPO.parent / "shared" / "datasets" / "caltech101-test"
TARGET_RATIO = 0.8  # retriever's first-query wall at most 0.8x rclip's


def log(msg: str) -> None:
    print(f"[rclip_compare] {msg}", file=sys.stderr, flush=True)


# -- setup -----------------------------------------------------------------------------------------


def copy_photos(source: Path, dest: Path, n: int) -> int:
    """n photos spread over every class of `source` (every k-th of the sorted list), flat."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(files) < n:
        raise SystemExit(f"{source} holds {len(files)} photos, fewer than --n {n}")
    step = len(files) / n
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        f = files[int(i * step)]
        shutil.copyfile(f, dest / f"{f.parent.name}-{f.name}")
    return n


def export_for_rclip(weights: Path, datadir: Path) -> dict[str, Any]:
    """Both towers of ViT-B-32-256 (these weights) as rclip's ONNX files, plus its vocabulary."""
    import numpy as np
    import onnxruntime
    import open_clip
    import torch

    from retriever.onnx.export import _export
    from retriever.onnx.text_tokens import open_clip_vocab_path

    model = open_clip.create_model(ARCH, pretrained=str(weights)).eval()
    folder = datadir / RCLIP_MODEL_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    (datadir / "tokenizer").mkdir(exist_ok=True)
    shutil.copyfile(open_clip_vocab_path(), datadir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")

    class Visual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input):  # noqa: A002 - rclip feeds {"input": ...}
            return self.model.encode_image(input)

    class Textual(Visual):
        def forward(self, input):  # noqa: A002
            return self.model.encode_text(input)

    tokens = open_clip.get_tokenizer(ARCH)(["a photo of a cat", "a dog"])
    pixels = torch.randn(2, 3, 256, 256)
    _export(Visual().eval(), {"input": pixels}, folder / "visual.onnx", {"input": {0: "batch"}})
    _export(Textual().eval(), {"input": tokens}, folder / "textual.onnx", {"input": {0: "batch"}})
    with torch.no_grad():
        ref_t = model.encode_text(tokens).numpy()
        ref_v = model.encode_image(pixels).numpy()
    diffs = {}
    for name, feed, ref in (("textual", tokens.numpy(), ref_t), ("visual", pixels.numpy(), ref_v)):
        session = onnxruntime.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        diffs[name] = float(np.abs(session.run(None, {"input": feed})[0] - ref).max())
    return {"max_abs_diff": diffs,
            "bytes": {n: (folder / f"{n}.onnx").stat().st_size for n in ("visual", "textual")}}


# -- timing ----------------------------------------------------------------------------------------


CPU_SECONDS: dict[str, list[float]] = {}  # user + system CPU of each timed command, by variant


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _daemon_cpu() -> float:
    """User + system CPU seconds so far of every running retriever daemon (and its reaped
    children). The daemon is detached, so RUSAGE_CHILDREN never counts it: read /proc instead."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"retriever.daemon" not in cmdline:
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def timed(cmd: list[str], *, cwd: Path, env: dict[str, str], what: str) -> tuple[float, str]:
    """Wall seconds and stdout of one run; its CPU seconds (user + system, the process, its
    children and any retriever daemon while it ran) go to CPU_SECONDS[what]: a figure that a busy machine disturbs much less than wall."""
    cpu0, daemon0 = _children_cpu(), _daemon_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t0
    # a daemon answers on the command's behalf: its CPU during the command counts too
    CPU_SECONDS.setdefault(what, []).append(_children_cpu() - cpu0 + max(0.0, _daemon_cpu() - daemon0))
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-800:]}")
    return seconds, proc.stdout.decode(errors="replace")


def stats(values: Sequence[float]) -> dict[str, Any]:
    return {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
            "max_s": round(max(values), 3), "runs": len(values)}


def first_line(out: str) -> str:
    return next((line.strip() for line in out.splitlines() if line.strip()), "")


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    load_start = loadavg()
    photos = work / "photos"
    rclip_data = work / "rclip-data"
    saved = work / "setup.json"  # --reuse: the collection, both indexes and their figures are kept here
    setup = json.loads(saved.read_text()) if args.reuse and saved.is_file() else None
    if setup is None:
        n = copy_photos(args.photos, photos, args.n)
        log(f"{n} photos copied to {photos}")
        with stdout_to_stderr():
            weights = make_random_weights(ARCH, work)
            exported = export_for_rclip(weights, rclip_data)
        log(f"rclip's ONNX files written: {exported}")
    else:
        n, weights, exported = setup["n"], Path(setup["weights"]), setup["exported"]
        log(f"reusing {work} ({n} photos, both indexes)")

    base = {k: v for k, v in os.environ.items() if not k.startswith(("RETRIEVER_", "RCLIP_"))}
    rclip_env = {**base, "RCLIP_DATADIR": str(rclip_data), "HF_HUB_OFFLINE": "1"}
    home = work / "home"
    ours_env = {**base, "RETRIEVER_HOME": str(home), "RETRIEVER_NO_DAEMON": "1"}
    rclip = [str(args.rclip)]
    retriever = [str(Path(sys.executable).parent / "retriever")]
    if not Path(retriever[0]).is_file():
        retriever = [sys.executable, "-m", "retriever"]

    if setup is None:
        log("rclip: first search, which indexes the folder ...")
        rclip_index_s, _ = timed(rclip + ["-f", "a photo of a cat"], cwd=photos, env=rclip_env, what="rclip indexing")
        log(f"  {rclip_index_s:.1f} s")
        log("retriever index ...")
        ours_index_s, out = timed(retriever + ["index", str(photos), "--model", ARCH, "--pretrained", str(weights),
                                               "--json", "-q"], cwd=work, env=ours_env, what="retriever index")
        summary = json.loads(out.strip().splitlines()[-1])
        log(f"  {ours_index_s:.1f} s: {summary.get('indexed')} photos on {summary.get('backend')}")
        setup = {"n": n, "weights": str(weights), "exported": exported, "rclip_index_s": rclip_index_s,
                 "ours_index_s": ours_index_s, "summary": summary, "loadavg": loadavg()}
        saved.write_text(json.dumps(setup))
    rclip_index_s, ours_index_s, summary = setup["rclip_index_s"], setup["ours_index_s"], setup["summary"]
    _, status_out = timed(retriever + ["status", "--json"], cwd=work, env=ours_env, what="retriever status")
    status = json.loads(status_out)

    queries = make_queries(args.runs * 4 + 4)
    variants = {
        "rclip": lambda q: (rclip + ["-f", "-t", "10", q], photos, rclip_env),
        "rclip_no_indexing": lambda q: (rclip + ["-f", "-n", "-t", "10", q], photos, rclip_env),
        "retriever": lambda q: (retriever + ["search", "-k", "10", "--paths", q], work, ours_env),
    }
    daemon = None
    if not args.no_daemon_run:
        daemon = {k: v for k, v in ours_env.items() if k != "RETRIEVER_NO_DAEMON"}
        variants["retriever_daemon_warm"] = lambda q: (retriever + ["search", "-k", "10", "--paths", q], work, daemon)
    times: dict[str, list[float]] = {name: [] for name in variants}
    answers: dict[str, str] = {}
    for name, make in variants.items():  # one warm-up each: the disk cache, and the daemon started
        cmd, cwd, env = make(queries[-1])
        timed(cmd, cwd=cwd, env=env, what=name)
    if daemon is not None:
        time.sleep(args.daemon_wait)  # the first search started it in the background
        timed(variants["retriever_daemon_warm"](queries[-2])[0], cwd=work, env=daemon, what="daemon warm-up")
    for r in range(args.runs):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            q = queries[r * len(variants) + list(variants).index(name)]
            cmd, cwd, env = variants[name](q)
            seconds, out = timed(cmd, cwd=cwd, env=env, what=f"{name} (timed)")
            times[name].append(seconds)
            answers[name] = first_line(out)
        log(f"  run {r + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    if daemon is not None:
        subprocess.run(retriever + ["daemon", "stop"], cwd=work, env=daemon, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    first = {name: stats(v) for name, v in times.items()}
    for name in first:
        first[name]["median_cpu_s"] = round(statistics.median(CPU_SECONDS[f"{name} (timed)"]), 3)
    ratio = first["retriever"]["median_s"] / first["rclip"]["median_s"]
    cpu_ratio = first["retriever"]["median_cpu_s"] / first["rclip"]["median_cpu_s"]
    return {
        "benchmark": "rclip_compare",
        "arch": ARCH,
        "weights": "random, torch.manual_seed(0)",
        "photos": n,
        "photos_from": str(args.photos),
        "rclip_export": exported,
        "indexing": {
            "rclip_s": round(rclip_index_s, 2), "rclip_images_per_s": round(n / rclip_index_s, 2),
            "retriever_s": round(ours_index_s, 2), "retriever_images_per_s": round(n / ours_index_s, 2),
            "retriever_backend": summary.get("backend"),
            "retriever_onnx_measured": (status.get("onnx") or {}).get("indexing"),
            "note": "wall seconds of the whole command on a new collection, model load included",
            "loadavg_after": setup.get("loadavg"),
        },
        "first_query": first,
        "ratio_retriever_to_rclip": round(ratio, 3),
        "cpu_ratio_retriever_to_rclip": round(cpu_ratio, 3),
        "loadavg_start": load_start,
        "target_ratio": TARGET_RATIO,
        "met": ratio <= TARGET_RATIO,
        "daemon_ratio_to_rclip": round(first["retriever_daemon_warm"]["median_s"] / first["rclip"]["median_s"], 3)
        if "retriever_daemon_warm" in first else None,
        "last_answers": answers,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "loadavg_end": loadavg(),
    }


def table(r: dict[str, Any]) -> str:
    fq = r["first_query"]
    ix = r["indexing"]
    lines = [
        f"retriever vs rclip, {r['arch']} ({r['weights']}), {r['photos']} photos, {r['cores']} cores ({r['cpu']})",
        "",
        "| first text query, fresh process | median wall | min | max | median CPU (user+sys) |",
        "|---|---|---|---|---|",
    ]
    names = {"rclip": "rclip (as run: re-checks the folder)", "rclip_no_indexing": "rclip --no-indexing",
             "retriever": "retriever, no daemon", "retriever_daemon_warm": "retriever, daemon warm"}
    for key, label in names.items():
        if key in fq:
            s = fq[key]
            lines.append(f"| {label} | {s['median_s']:.3f} s | {s['min_s']:.3f} s | {s['max_s']:.3f} s "
                         f"| {s['median_cpu_s']:.3f} s |")
    lines += [
        "",
        f"retriever / rclip: {r['ratio_retriever_to_rclip']:.2f} (target ≤ {r['target_ratio']}: "
        f"{'met' if r['met'] else 'NOT met'})"
        + (f"; with the daemon warm {r['daemon_ratio_to_rclip']:.2f}" if r.get("daemon_ratio_to_rclip") else "")
        + f"; CPU seconds {r['cpu_ratio_retriever_to_rclip']:.2f}",
        f"load average {r['loadavg_start']} at the start, {r['loadavg_end']} at the end",
        "",
        "| indexing a new collection (wall, model load included) | seconds | images/s |",
        "|---|---|---|",
        f"| rclip (its first search) | {ix['rclip_s']:.1f} | {ix['rclip_images_per_s']:.1f} |",
        f"| retriever index ({ix['retriever_backend']}) | {ix['retriever_s']:.1f} | {ix['retriever_images_per_s']:.1f} |",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rclip", type=Path, default=Path(shutil.which("rclip") or "rclip"), help="rclip's script")
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of real photos (only read)")
    ap.add_argument("--n", type=int, default=1000, help="photos in the collection")
    ap.add_argument("--runs", type=int, default=9, help="timed queries per variant")
    ap.add_argument("--daemon-wait", type=float, default=5.0, help="seconds for the daemon to start")
    ap.add_argument("--no-daemon-run", action="store_true", help="skip the daemon variant")
    ap.add_argument("--work", type=Path, default=None, help="keep everything in this folder")
    ap.add_argument("--reuse", action="store_true",
                    help="with --work: reuse the collection and both indexes a run left there (query timings only)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.rclip.is_file():
        raise SystemExit(f"rclip not found at {args.rclip}: pip install rclip (a venv of its own is best)")
    work = args.work or Path(tempfile.mkdtemp(prefix="rclip-compare-"))
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
