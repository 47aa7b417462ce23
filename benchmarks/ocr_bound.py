"""How close `retriever index --ocr` can come to the aim of issue 18 (OCR at most doubles indexing
time on 12-MP photos where one in ten has text) with any gate that skips photos, measured rather
than estimated.

A gate decides, before detection, which photos to read. The best gate there can be knows the
answer for free: it reads exactly the photos that hold text and costs nothing on the others. It
is timed inside a real run: `retriever index --ocr` of all the photos (ocr.py's throughput load:
the same 100 12-MP JPEGs, made the same way and cached in the same folder) with the reader
replaced by an oracle (OracleReader below) that reads only the photos of a set S, known
beforehand by a few pixels of their decoded image, and returns no text for the rest at once:

  index_all      `retriever index` of all the photos (no OCR)
  index_ocr_all  `retriever index --ocr` of all the photos (what ocr.py times); which photos the
                 reader keeps text on comes from this run's stored text
  oracle(S)      `retriever index --ocr`, the oracle reading S only
  free_gate(S)   (index_all + oracle(S) - oracle(nothing)) / index_all: the slowdown of a free,
                 perfect gate. oracle(nothing) reads no photo; what it costs beyond index_all is
                 the larger decode that --ocr asks of every photo (1/2 instead of 1/8 scale), taken
                 off as if the gate could decide without it (the generous bound); with it:
                 oracle(S) / index_all

for two sets:
  with_text      every photo the reader keeps a line on: the rendered text photos and the
                 photos of Caltech-101 with text of their own (a gate that loses no text)
  rendered       the rendered photos only (exactly one in ten), as if the others held no text

and the budget a real gate would have on every other photo: the wall time left under the aim of
2x, (index_all - (oracle(S) - oracle(nothing))) / (photos not in S), against the cost of one photo
read by mistake (a false positive: (oracle(S) - oracle(nothing)) / |S|). The oracle runs also give
the word recall of the rendered items from what they stored (it must equal the full run's), and
how many photos they stored text for (exactly the photos of S).
Then, in this process on one core, where a photo's time goes: the JPEG decode at 1/8, 1/4 and 1/2
scale, one detection pass, and how many photos without text still get a detected box.

Each run is repeated --rounds times, alternating, and the medians are used (the machine is noisy).

    python benchmarks/ocr_bound.py --work /tmp/ocr-bench      # reuses ocr.py's 12-MP load

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import ocr as O  # noqa: E402
from retriever.ocr.reader import DECODE_MIN_SIDE, OcrReader  # noqa: E402

KEYS_ENV = "OCR_BOUND_KEYS"  # the oracle's run: the file of the keys of the photos it reads


def photo_key(image, full_size) -> str:
    """A photo, told apart by its size and 25 pixels of its decoded image (microseconds)."""
    w, h = image.size
    pixels = [image.getpixel((x * (w - 1) // 6, y * (h - 1) // 6)) for x in range(1, 6) for y in range(1, 6)]
    return json.dumps([list(full_size or (w, h)), pixels])


class OracleReader(OcrReader):
    """Reads the photos whose key is in the file named by OCR_BOUND_KEYS; no text for the rest, at
    once (no detection, no model loaded for them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep = set(json.loads(Path(os.environ[KEYS_ENV]).read_text()))

    def read(self, image, full_size=None):
        if photo_key(image, full_size) not in self.keep:
            return []
        return super().read(image, full_size)


def oracle_cli() -> None:
    """`retriever` (the CLI in this process) with the reader replaced by OracleReader."""
    import retriever.ocr.reader as reader_module
    from retriever.cli import main as cli_main

    reader_module.OcrReader = OracleReader  # the indexer imports it when the run starts
    sys.argv = ["retriever", *sys.argv[1:]]
    cli_main()


def keys_of(paths: list[str]) -> list[str]:
    """The keys of the photos as the indexer decodes them for --ocr (DECODE_MIN_SIDE)."""
    from retriever.images import decode

    out = []
    for p in paths:
        d = decode(Path(p).read_bytes(), p, draft_min_side=DECODE_MIN_SIDE)
        out.append(photo_key(d.image.convert("RGB"), (d.meta["width"], d.meta["height"])))
    return out


def components(photos: list[dict[str, Any]], with_text: set[str]) -> dict[str, Any]:
    """Where a photo's time goes, in this process on one core (CPU ms, medians over the photos):
    the JPEG decode at the scales the indexer asks for (1/8 for the offline encoder alone, 1/2
    for --ocr; 1/4 between), one detection pass at DET_SIDE on the --ocr decode, and how many of
    the photos without text still get a detected box (whose recognition then finds nothing)."""
    import numpy as np

    from retriever.images import decode
    from retriever.ocr.reader import _detect

    reader = OcrReader(threads=1)
    det = reader._load()[0]
    decode_ms: dict[str, list[float]] = {"1/8": [], "1/4": [], "1/2": []}
    det_ms, boxed = [], 0
    for p in photos:
        data = Path(p["path"]).read_bytes()
        for scale, side in (("1/8", 224), ("1/4", 600), ("1/2", DECODE_MIN_SIDE)):
            t = time.process_time()
            d = decode(data, p["path"], draft_min_side=side)
            decode_ms[scale].append(1000 * (time.process_time() - t))
        bgr = np.ascontiguousarray(np.asarray(d.image.convert("RGB"))[:, :, ::-1])
        t = time.process_time()
        quads = _detect(det, bgr, reader.det_side)
        det_ms.append(1000 * (time.process_time() - t))
        boxed += bool(quads) and p["path"] not in with_text
    return {"decode_ms": {k: round(statistics.median(v), 1) for k, v in decode_ms.items()},
            "detect_ms": round(statistics.median(det_ms), 1), "det_side": reader.det_side,
            "without_text": len(photos) - len(with_text), "without_text_boxed": boxed}


def run_oracle(folder: Path, home: Path, cache: Path, keys_file: Path) -> dict[str, Any]:
    shutil.rmtree(home, ignore_errors=True)
    cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); import ocr_bound; "
           "ocr_bound.oracle_cli()", "index", str(folder), "--home", str(home), "--model", "offline", "--json",
           "-q", "--ocr"]
    env = {**O.retriever_env(cache), KEYS_ENV: str(keys_file)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the oracle's index run exited {proc.returncode}: {proc.stderr[-1500:]}")
    return {"wall_s": wall}


def recall(photos: list[dict[str, Any]], home: Path) -> float | None:
    stored, _ = O.stored_lines(home)
    text_photos = [p for p in photos if p["items"]]
    lines_of = {p["path"]: stored.get(str(Path(p["path"]).resolve()), []) for p in text_photos}
    return O.text_metrics(text_photos, lines_of, O.BIG_BUCKETS)["word_recall"]


def main(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ocr-bench"))
    ap.add_argument("--big-cache", type=Path, default=Path("/tmp/rb-cache"))
    ap.add_argument("--n-big", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "model-cache"
    O.log("model cache ...")
    O.prepare_cache(work, cache)
    manifest = O.make_big(args.n_big, work, args.big_cache, args.seed)
    folder = Path(manifest["folder"]) / "photos"
    photos = manifest["photos"]
    for p in folder.iterdir():  # the page cache: every run reads from memory
        p.read_bytes()
    started = time.time()
    runs: dict[str, list[float]] = {}

    def timed(key: str, run) -> None:
        runs.setdefault(key, []).append(round(run()["wall_s"], 3))

    home_ocr = work / "bound-home-ocr"
    O.log(f"index --ocr of all {len(photos)} photos: which photos hold text ...")
    timed("index_ocr_all", lambda: O.run_index(folder, home_ocr, cache, ocr=True))
    stored, _ = O.stored_lines(home_ocr)
    rendered = [p["path"] for p in photos if p["items"]]
    sets = {"nothing": [], "rendered": rendered,
            "with_text": [p["path"] for p in photos if p["items"] or stored.get(str(Path(p["path"]).resolve()))]}
    keys_files = {}
    for name, paths in sets.items():
        keys_files[name] = work / f"bound-keys-{name}.json"
        keys_files[name].write_text(json.dumps(keys_of(paths)))
    recalls = {"index_ocr_all": recall(photos, home_ocr)}
    found: dict[str, int] = {}
    for r in range(args.rounds):
        O.log(f"round {r + 1}/{args.rounds}: index, index --ocr, and the oracle reading nothing, the rendered "
              "photos, every photo with text ...")
        timed("index_all", lambda: O.run_index(folder, work / "bound-home", cache, ocr=False))
        if r:
            timed("index_ocr_all", lambda: O.run_index(folder, home_ocr, cache, ocr=True))
        for name in sets:
            home = work / f"bound-home-oracle-{name}"
            timed(f"oracle_{name}", lambda: run_oracle(folder, home, cache, keys_files[name]))
            if name != "nothing":
                recalls[f"oracle_{name}"] = recall(photos, home)
            found[name] = len(O.stored_lines(home)[0])  # photos it stored text for: exactly its set
    O.log("where a photo's time goes (one core) ...")
    parts = components(photos, set(sets["with_text"]))
    med = {k: statistics.median(v) for k, v in runs.items()}
    index_all = med["index_all"]
    n = len(photos)
    gates = {}
    for name, paths in sets.items():
        if name == "nothing":
            continue
        reading = med[f"oracle_{name}"] - med["oracle_nothing"]
        rest = n - len(paths)
        gates[name] = {
            "photos": len(paths), "reading_s": round(reading, 2),
            "free_gate_slowdown": round((index_all + reading) / index_all, 2),
            "with_its_decode": round(med[f"oracle_{name}"] / index_all, 2),
            "budget_ms_per_other_photo": round(1000 * (index_all - reading) / rest, 1) if rest else None,
            "false_positive_ms": round(1000 * reading / len(paths), 1) if paths else None,
        }
    result = {
        "benchmark": "ocr-bound", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "photos": n, "rounds": args.rounds, "runs_s": runs, "medians_s": {k: round(v, 2) for k, v in med.items()},
        "ocr_slowdown": round(med["index_ocr_all"] / index_all, 2),
        "decode_for_ocr_s": round(med["oracle_nothing"] - index_all, 2), "gates": gates,
        "word_recall": recalls, "oracle_stored_text": found, "components": parts,
        "natural_text": sorted(Path(p).name for p in sets["with_text"] if p not in rendered),
        "cpu": O.cpu_name(), "cores": os.cpu_count(), "load_avg_end": O.loadavg(),
    }
    print(json.dumps(result), flush=True)
    print()
    print(f"{n} 12-MP JPEGs ({len(rendered)} with rendered text), {os.cpu_count()} cores, medians of {args.rounds} "
          f"runs: index {index_all:.2f} s, index --ocr {med['index_ocr_all']:.2f} s (slowdown "
          f"{result['ocr_slowdown']}); --ocr reading nothing {med['oracle_nothing']:.2f} s (its larger decode)")
    print()
    print("| a free, perfect gate reads | photos | reading them (s) | slowdown | with --ocr's decode | "
          "wall ms a photo left for a real gate on each other photo | one false positive (ms) | word recall |")
    print("|---|---|---|---|---|---|---|---|")
    for name, g in gates.items():
        print(f"| {name} | {g['photos']} | {g['reading_s']} | **{g['free_gate_slowdown']}** | {g['with_its_decode']} "
              f"| {g['budget_ms_per_other_photo']} | {g['false_positive_ms']} | {recalls.get(f'oracle_{name}')} |")
    print()
    print(f"word recall of the rendered items, index --ocr of every photo: {recalls['index_ocr_all']}; photos "
          "with stored text after each oracle run (its set exactly): "
          + ", ".join(f"{name} {found[name]} of {len(sets[name])}" for name in sets))
    dm = parts["decode_ms"]
    print(f"one core, medians a photo: decode {dm['1/8']} ms at 1/8 scale, {dm['1/4']} at 1/4, {dm['1/2']} at 1/2; "
          f"detection at {parts['det_side']} px {parts['detect_ms']} ms; {parts['without_text_boxed']} of the "
          f"{parts['without_text']} photos without text get a detected box (recognised as nothing)")
    print("photos with text of their own (not rendered):", ", ".join(result["natural_text"]) or "none")
    return result


if __name__ == "__main__":
    main()
