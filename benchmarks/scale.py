"""Costs at 1-10 million photos: a catalog of --rows realistic rows built through the project's
own write path (retriever.store.catalog.Catalog.write_batch in the indexer's 256-row checkpoints:
the same code as `retriever index`, the encoder replaced by clustered 512-d vectors), then each
cost the issue names, measured on it. Prints one JSON line, then a table.

    python benchmarks/scale.py --rows 1000000              # ~15 min on 2 cores
    python benchmarks/scale.py --rows 200000 --keep /tmp/scale200k
    python benchmarks/scale.py --reuse /tmp/scale200k      # measure again, no build

Rows: dates over 15 years, in date order as a folder walk finds them (15 % without EXIF date: the
file's mtime counts), 40 camera models (10 % none), GPS for 60 % (an event's 500 photos at one of
300 places), folders 4 deep (year/event/day), formats
(JPEG, HEIF, PNG, DNG, 3 % video frames), sizes, tags on a share of the photos, captions on 2 %.
Text read in photos (OCR) does not exist yet in the catalog; no row has any.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retriever import filters as F  # noqa: E402
from retriever.encoders.base import ModelSpec  # noqa: E402
from retriever.index import Index  # noqa: E402
from retriever.search import Searcher  # noqa: E402
from retriever.store.captions import write_captions  # noqa: E402

DIM = 512
CHECKPOINT = 256  # retriever.indexer.CHECKPOINT_ROWS
MAKES = ["Canon", "NIKON CORPORATION", "Apple", "SONY", "Google", "samsung", "FUJIFILM", "OLYMPUS", "Panasonic",
         "LEICA"]
TAGS = {"beach": 0.04, "dog": 0.02, "snow": 0.03, "car": 0.05, "sunset": 0.01, "document": 0.001}
TARGETS = {"filter_p50_ms": 10.0, "filtered_search_p50_ms": 5.0, "filtered_search_recall": 0.95,
           "commit_rows_per_s": 10_000, "status_s": 0.3, "tags_s": 0.3, "incremental_s": 5.0,
           "duplicates_s": 600.0}


class Rows:
    """The synthetic collection: row i's metadata and vector, reproducible from the seed."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n = n
        self.cameras = [(MAKES[i % len(MAKES)], f"Model {chr(65 + i)}{i * 7 % 100}") for i in range(40)]
        self.places = np.c_[rng.uniform(-45, 62, 300), rng.uniform(-170, 170, 300)]
        # like real embeddings: a direction every photo shares, 50 themes, 2,000 scenes, noise
        common = _unit(rng.standard_normal((1, DIM)).astype(np.float32))
        themes = _unit(rng.standard_normal((50, DIM)).astype(np.float32))
        scenes = _unit(rng.standard_normal((2000, DIM)).astype(np.float32))
        self.centers = _unit(0.6 * common + 0.55 * themes[np.arange(2000) % 50] + 0.5 * scenes)
        start = np.datetime64("2011-01-01T00:00:00").astype("datetime64[s]").astype(np.int64)
        # a library is walked folder by folder, and folders follow time: rows come in date order
        self.taken = np.sort(start + rng.integers(0, 15 * 365 * 86400, n))
        self.has_exif = rng.random(n) > 0.15
        self.camera = np.where(rng.random(n) < 0.1, -1, rng.integers(0, 40, n))
        # an event's photos (500 in a row) share a place, when they have GPS
        self.event_place = rng.integers(0, 300, n // 500 + 1)
        self.place = np.where(rng.random(n) < 0.6, self.event_place[np.arange(n) // 500], -1)
        self.jitter = rng.normal(0, 0.05, (n, 2))
        self.kind = rng.choice(5, n, p=[0.78, 0.1, 0.06, 0.03, 0.03])  # JPEG HEIF PNG DNG video
        self.size = rng.choice(5, n, p=[0.4, 0.25, 0.15, 0.1, 0.1])
        self.cluster = rng.integers(0, 2000, n)
        self.noise_seed = seed + 1
        # planted near-duplicates: 0.5 % of the photos are an edited copy of an earlier one
        # (the source's vector plus noise: cosine ~0.98; the offline threshold is 0.95)
        self.copy_of = np.full(n, -1, dtype=np.int64)
        planted = np.flatnonzero(rng.random(n) < 0.005)
        planted = planted[planted > 0]
        self.copy_of[planted] = (rng.random(len(planted)) * planted).astype(np.int64)
        self.copy_of[planted[self.copy_of[self.copy_of[planted]] >= 0]] = -1  # a copy of a copy: none
        video = self.kind == 4  # still images only (a frame is never a still's duplicate)
        self.copy_of[video | (self.copy_of >= 0) & video[np.maximum(self.copy_of, 0)]] = -1

    SIZES = [(4032, 3024), (3024, 4032), (6000, 4000), (1920, 1080), (800, 600)]
    FORMATS = ["JPEG", "HEIF", "PNG", "DNG", "MOV"]

    def path(self, i: int) -> str:
        year = str(np.datetime64(int(self.taken[i]), "s"))[:4]
        ext = ["jpg", "heic", "png", "dng", "mp4"][self.kind[i]]
        return f"/data/photos/{year}/event-{i // 500:05d}/day-{(i // 50) % 10}/IMG_{i:08d}.{ext}"

    def vectors(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi (lo a multiple of CHECKPOINT, as build writes them)."""
        out, rng = self._base(lo, hi)
        for k in np.flatnonzero(self.copy_of[lo:hi] >= 0):  # a copy of its source's own vector
            src = int(self.copy_of[lo + k])
            start = src // CHECKPOINT * CHECKPOINT
            source = self._base(start, min(self.n, start + CHECKPOINT))[0][src - start]
            out[k] = _unit((source + rng.standard_normal(DIM).astype(np.float32) * 0.009)[None])[0]
        return out

    def _base(self, lo: int, hi: int):
        rng = np.random.default_rng((self.noise_seed, lo))
        noise = rng.standard_normal((hi - lo, DIM)).astype(np.float32) * 0.025
        return _unit(self.centers[self.cluster[lo:hi]] + noise), rng

    def batch(self, lo: int, hi: int) -> list[dict]:
        vecs = self.vectors(lo, hi)
        out = []
        for j, i in enumerate(range(lo, hi)):
            w, h = self.SIZES[self.size[i]]
            cam = self.camera[i]
            place = self.place[i]
            video = self.kind[i] == 4
            taken = str(np.datetime64(int(self.taken[i]), "s"))
            out.append({
                "path": self.path(i), "frame_ms": 0 if video else None, "size": 1_000_000 + i % 5_000_000,
                "mtime_ns": int(self.taken[i]) * 1_000_000_000, "fingerprint": f"{i:032x}", "status": "indexed",
                "error": None, "width": w, "height": h, "format": self.FORMATS[self.kind[i]],
                "taken_at": taken if self.has_exif[i] else None,
                "camera_make": self.cameras[cam][0] if cam >= 0 else None,
                "camera_model": self.cameras[cam][1] if cam >= 0 else None,
                "gps_lat": float(self.places[place][0] + self.jitter[i][0]) if place >= 0 else None,
                "gps_lon": float(self.places[place][1] + self.jitter[i][1]) if place >= 0 else None,
                "vector": vecs[j],
            })
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build(home: Path, rows: Rows, log) -> dict:
    index = Index.create(home, "scale", ModelSpec("synthetic"), "synthetic/clustered-512", DIM)
    catalog = index.catalog
    write_s = 0.0
    t0 = time.perf_counter()
    ids_all: list[int] = []
    for lo in range(0, rows.n, CHECKPOINT):
        batch = rows.batch(lo, min(rows.n, lo + CHECKPOINT))
        t = time.perf_counter()
        ids_all.extend(catalog.write_batch(batch))
        write_s += time.perf_counter() - t
        if (lo + CHECKPOINT) // 100_000 > lo // 100_000:
            log(f"  {lo + CHECKPOINT:,} rows, {(lo + CHECKPOINT) / max(write_s, 1e-9):,.0f} rows/s committed")
    total_s = time.perf_counter() - t0
    ids = np.asarray(ids_all, dtype=np.int64)
    rng = np.random.default_rng(7)
    t = time.perf_counter()
    tag_rows = []
    for label, share in TAGS.items():
        for i in ids[rng.random(len(ids)) < share]:
            tag_rows.append((int(i), label, 0.9))
    catalog.write_tags([int(i) for i in ids], tag_rows)
    tags_write_s = time.perf_counter() - t
    captioned = ids[rng.random(len(ids)) < 0.02]
    write_captions(catalog, [(int(i), f"a photo of a beach with a red kite number {int(i)}", None) for i in captioned],
                   "synthetic")
    t = time.perf_counter()
    index.acquire_lock()  # as `retriever index` holds it: the FAISS file is saved
    index.vector_index()  # the auto-chosen FAISS index, built and saved
    index.release_lock()
    faiss_build_s = time.perf_counter() - t
    index.close()
    return {"rows": rows.n, "commit_s": round(write_s, 2), "commit_rows_per_s": round(rows.n / write_s),
            "build_loop_s": round(total_s, 2), "tags_written": len(tag_rows), "tags_write_s": round(tags_write_s, 2),
            "captions": int(len(captioned)), "faiss_build_s": round(faiss_build_s, 2)}


def filter_cases(rows: Rows) -> list[tuple[str, str, dict]]:
    """(kind, breadth, Filters keywords): each kind alone, selective and broad, and combined."""
    place = rows.places[rows.event_place[rows.n // 2 // 500]]
    near = f"{place[0]:.4f},{place[1]:.4f}"
    year_folder = "/data/photos/2016"
    event_folder = os.path.dirname(os.path.dirname(rows.path(rows.n // 2)))
    return [
        ("date", "selective", dict(after="2016-03-01", before="2016-03-04")),
        ("date", "broad", dict(after="2013")),
        ("folder", "selective", dict(folders=[event_folder])),
        ("folder", "broad", dict(folders=["/data/photos"])),
        ("folder", "year", dict(folders=[year_folder])),
        ("camera", "selective", dict(cameras=["model c14"])),
        ("camera", "broad", dict(cameras=["canon", "apple", "sony"])),
        ("gps", "selective", dict(near=near, within_km=2)),
        ("gps", "broad", dict(near="20,0", within_km=8000)),
        ("format", "selective", dict(formats=["dng"])),
        ("format", "broad", dict(formats=["jpeg"])),
        ("format", "video", dict(formats=["video"])),
        ("size", "selective", dict(min_size="5000")),
        ("size", "broad", dict(min_size="1000")),
        ("tag", "selective", dict(tags=["document"])),
        ("tag", "broad", dict(tags_any=["beach", "car", "dog"])),
        ("no-tag", "broad", dict(no_tags=["car"])),
        ("combined", "selective", dict(after="2016", before="2017", cameras=["apple"], formats=["heic"])),
        ("combined", "broad", dict(after="2012", min_size="1000", formats=["jpeg", "heic"])),
    ]


def _p50(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, out


def measure(home: Path, rows: Rows, args, log) -> dict:
    index = Index.open(home, "scale")
    catalog = index.catalog
    out: dict = {}
    # -- the SQL side of each filter: what a search runs (match_filter), and listing every id
    filt = []
    for kind, breadth, kw in filter_cases(rows):
        f = F.build(**kw)
        ms, match = _p50(lambda: F.match_filter(catalog, f), args.repeat)
        list_ms, ids = _p50(lambda: F.matching_ids(catalog, f), 3)
        filt.append({"kind": kind, "breadth": breadth, "filter": kw, "passing": int(len(ids)),
                     "share": round(len(ids) / rows.n, 5), "broad": match.broad, "ms": round(ms, 2),
                     "list_all_ms": round(list_ms, 1)})
        log(f"  filter {kind:<9} {breadth:<9} {len(ids):>9,} pass  {ms:7.2f} ms  (listing all: {list_ms:7.1f} ms)")
    out["filters"] = filt
    out["filter_p50_ms"] = max(r["ms"] for r in filt)
    # -- filtered search on the automatically chosen index, against exact filtered search
    searcher = Searcher(index, encoder=object())
    vectors = searcher.vectors
    t = time.perf_counter()
    searcher.filter_columns()  # a warm searcher's columns (retriever.filter_columns), read once per generation
    out["filter_columns_load_s"] = round(time.perf_counter() - t, 2)
    log(f"  filter columns read in {out['filter_columns_load_s']} s")
    out["vector_index"] = {"kind": type(vectors).__name__, "ivf": bool(getattr(vectors, "is_ivf", False)),
                           "factory": getattr(vectors, "factory", None), "delta": len(getattr(vectors, "delta", ()))}
    rng = np.random.default_rng(3)
    queries = rows.vectors(0, args.queries) + rng.standard_normal((args.queries, DIM)).astype(np.float32) * 0.02
    queries = _unit(queries)
    all_vecs = None
    searches = []
    for kind, breadth, kw in filter_cases(rows):
        if (kind, breadth) not in {("date", "selective"), ("date", "broad"), ("camera", "selective"),
                                   ("format", "broad"), ("combined", "selective"), ("tag", "broad")}:
            continue
        f = F.build(**kw)
        allowed = F.matching_ids(catalog, f)
        if all_vecs is None:
            all_ids, all_vecs = _all_vectors(catalog)
        pos = np.searchsorted(all_ids, allowed)
        sub = all_vecs[pos]
        times, recalls, strategies, answers = [], [], set(), []
        for q in queries:  # timed first, apart from the brute force (which would evict every cache)
            t = time.perf_counter()
            answers.append(searcher._filtered(q[None, :], 10, [], f))
            times.append(time.perf_counter() - t)
            strategies.add(searcher.last_strategy)
        for q, hits in zip(queries, answers):
            exact = allowed[np.argsort(-(sub @ q))[:10]]
            recalls.append(len({i for _, i in hits} & set(exact.tolist())) / max(1, min(10, len(allowed))))
        searches.append({"kind": kind, "breadth": breadth, "share": round(len(allowed) / rows.n, 5),
                         "p50_ms": round(statistics.median(times) * 1000, 2), "recall_at_10": round(float(np.mean(recalls)), 3),
                         "strategy": sorted(s for s in strategies if s)})
        log(f"  search {kind:<9} {breadth:<9} share {len(allowed) / rows.n:7.4f}  "
            f"{searches[-1]['p50_ms']:7.2f} ms  recall@10 {searches[-1]['recall_at_10']:.3f}  {searches[-1]['strategy']}")
    out["filtered_search"] = searches
    out["filtered_search_p50_ms"] = max(s["p50_ms"] for s in searches)
    out["filtered_search_recall"] = min(s["recall_at_10"] for s in searches)
    del all_vecs
    # -- status and tags
    out["status_s"] = round(_p50(index.status, 3)[0] / 1000, 3)
    out["tags_s"] = round(_p50(lambda: (catalog.tag_counts(), catalog.tag_coverage()), 3)[0] / 1000, 3)
    index.close()
    return out


def _all_vectors(catalog) -> tuple[np.ndarray, np.ndarray]:
    ids, vecs = [], []
    for i, v in catalog.iter_vectors(DIM, chunk=50_000):
        ids.append(i)
        vecs.append(v)
    return np.concatenate(ids), np.concatenate(vecs)


def incremental(home: Path, rows: Rows, log) -> dict:
    """100 new photos written through the indexer's path (the checkpoint's record appended to the
    FAISS file's delta log inside the catalog transaction: retriever.index_log), in a writer
    process; then a new search process that opens the index, sees them and answers a filtered
    query; each process's wall time and peak RSS. Then a third process that, once loaded, waits
    for another writer's 100 photos and takes them in warm, reading only the new records
    (warm_reload_s); and a fourth that folds the log (fold_s)."""
    import subprocess

    out = {}
    for role in ("writer", "reader", "warm", "fold"):
        t = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--rows", "100", "--child", role, str(home)],
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        out[role] = {"wall_s": round(wall, 2), **json.loads(done.stdout.strip().splitlines()[-1])}
    log(f"  incremental: writer +100 in {out['writer']['wall_s']:.2f} s ({out['writer']['maxrss_mb']} MB), "
        f"new reader {out['reader']['wall_s']:.2f} s ({out['reader']['maxrss_mb']} MB, {out['reader']['vectors']:,} "
        f"vectors, delta {out['reader']['delta']}), warm reload of +100 {out['warm']['warm_reload_s']:.3f} s; "
        f"folding the log of {out['fold']['logged']} vectors {out['fold']['fold_s']:.2f} s ({out['fold']['maxrss_mb']} MB)")
    return {"incremental_s": round(out["writer"]["wall_s"] + out["reader"]["wall_s"], 2), "incremental": out,
            "warm_reload_s": out["warm"]["warm_reload_s"], "fold_s": out["fold"]["fold_s"],
            "index_add_100_maxrss_mb": out["writer"]["maxrss_mb"], "search_process_maxrss_mb": out["reader"]["maxrss_mb"]}


def child(role: str, home: Path, rows: Rows) -> None:
    """The processes `incremental` times (their wall includes starting Python and imports)."""
    if role == "writer":  # `rows`: 100 new photos like the collection's (its themes and scenes)
        with Index.open(home, "scale") as index:
            index.acquire_lock()
            writer = index.vector_writer()  # as the indexer: the FAISS file is not loaded
            new_folder = f"/data/new-{time.time_ns()}/"  # new paths each time: 100 additions
            batch = [dict(r, path=r["path"].replace("/data/photos/", new_folder), _in_index=False)
                     for r in rows.batch(0, 100)]
            ids = index.catalog.write_batch(batch, on_commit=writer.on_commit)
            writer.apply([], np.asarray(ids, dtype=np.int64), np.stack([r["vector"] for r in batch]))
            writer.finish()  # folds only past the measured size (retriever.index_log)
            index.release_lock()
        result = {"added": len(ids), "folded": writer.offset == 64}
    elif role == "delta":  # `rows` new photos logged in the indexer's checkpoints, the log not folded
        with Index.open(home, "scale") as index:
            index.acquire_lock()
            writer = index.vector_writer()
            new_folder = f"/data/delta-{time.time_ns()}/"
            for lo in range(0, rows.n, CHECKPOINT):
                batch = [dict(r, path=r["path"].replace("/data/photos/", new_folder), _in_index=False)
                         for r in rows.batch(lo, min(rows.n, lo + CHECKPOINT))]
                ids = index.catalog.write_batch(batch, on_commit=writer.on_commit)
                writer.apply([], np.asarray(ids, dtype=np.int64), np.stack([r["vector"] for r in batch]))
            index.release_lock()
        result = {"logged": writer.logged}
    elif role == "fold":  # what `finish` does once the log passes its measured size (and optimize)
        with Index.open(home, "scale") as index:
            index.acquire_lock()
            writer = index.vector_writer()
            result = {"logged": writer.logged}
            t = time.perf_counter()
            writer.fold()
            result["fold_s"] = round(time.perf_counter() - t, 2)
            index.release_lock()
    else:  # reader: a new search process; warm: one that then takes in another writer's 100 photos
        import subprocess

        with Index.open(home, "scale", read_only=True) as index:
            searcher = Searcher(index, encoder=object())
            q = rows.vectors(0, 1)[0]
            hits = searcher._filtered(q[None, :], 10, [], F.build(after="2013", formats=["jpeg"]))
            vectors = searcher.vectors
            result = {"vectors": len(vectors), "hits": len(hits), "delta": len(getattr(vectors, "delta", ()))}
            if role == "warm":
                subprocess.run([sys.executable, __file__, "--rows", "100", "--child", "writer", str(home)],
                               capture_output=True, check=True)
                t = time.perf_counter()
                warm = Searcher(index, encoder=object())
                warm.previous_vectors = vectors
                warm._filtered(q[None, :], 10, [], F.build(after="2013", formats=["jpeg"]))
                result["warm_reload_s"] = round(time.perf_counter() - t, 3)
                result["warm_vectors"] = len(warm.vectors)
    result["maxrss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def _peak_rss_mb() -> int:
    """This process's peak RSS (VmHWM: getrusage's maxrss survives exec, so a child started by a
    big parent would report the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def duplicates(home: Path, rows: Rows, exact_too: bool, log) -> dict:
    """`retriever duplicates`' search (find_duplicates, the default threshold of the offline
    encoder's family) on the whole catalog; recall of the planted copies (source and copy in one
    group). exact_too: the exact range search as well, for the recall it gives."""
    import retriever.duplicates as D

    planted = {(int(self_id), int(src)) for self_id, src in enumerate(rows.copy_of) if src >= 0}
    out = {"planted_pairs": len(planted), "threshold": 0.95}
    runs = ([("ivf", 0), ("exact", 10**12)] if exact_too  # both searches, whatever the size
            else [("ivf" if rows.n > D.EXACT_MAX else "exact", None)])  # what the command runs
    for method, exact_max in runs:
        saved = D.EXACT_MAX
        if exact_max is not None:
            D.EXACT_MAX = exact_max
        try:
            with Index.open(home, "scale") as index:
                t = time.perf_counter()
                report = D.find_duplicates(index, 0.95)
                seconds = time.perf_counter() - t
        finally:
            D.EXACT_MAX = saved
        group_of = {}
        for g, group in enumerate(report.groups):
            for m in group.members:
                group_of[m.id] = g
        # catalog ids are row number + 1 (written in order into a new catalog)
        found = sum(1 for a, b in planted if group_of.get(a + 1, -1) == group_of.get(b + 1, -2))
        out[method] = {"seconds": round(seconds, 1), "groups": len(report.groups),
                       "files_in_groups": report.files_in_groups, "planted_recall": round(found / max(1, len(planted)), 4)}
        log(f"  duplicates ({method}): {seconds:.1f} s, {len(report.groups):,} groups, "
            f"planted recall {out[method]['planted_recall']:.4f}")
    out["duplicates_s"] = out[runs[0][0]]["seconds"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="build here and keep it (default: a temporary folder, deleted)")
    ap.add_argument("--reuse", type=Path, help="measure a catalog built before with --keep (same --rows)")
    ap.add_argument("--repeat", type=int, default=15, help="timings per filter")
    ap.add_argument("--queries", type=int, default=30, help="queries per filtered search")
    ap.add_argument("--no-incremental", action="store_true", help="skip adding 100 rows at the end")
    ap.add_argument("--delta", type=int, default=0,
                    help="with --reuse: first log this many new rows, unfolded, so searches read file + log")
    ap.add_argument("--only-incremental", action="store_true",
                    help="with --reuse: only add 100 rows (twice) and fold the log")
    ap.add_argument("--duplicates", action="store_true", help="time `retriever duplicates` on the whole catalog")
    ap.add_argument("--duplicates-exact", action="store_true",
                    help="with --duplicates: both the approximate and the exact search, whatever the size")
    ap.add_argument("--child", nargs=2, metavar=("ROLE", "HOME"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]), Rows(args.rows))
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows = Rows(args.rows)
    home = args.reuse or args.keep or Path(tempfile.mkdtemp(prefix="retriever-scale-"))
    result: dict = {"benchmark": "scale", "rows": args.rows, "loadavg_start": round(os.getloadavg()[0], 2)}
    if args.reuse:
        meta = json.loads((home / "scale-build.json").read_text())
        result["build"] = meta
    else:
        log(f"building {args.rows:,} rows in {home}")
        result["build"] = build(home, rows, log)
        (home / "scale-build.json").write_text(json.dumps(result["build"]))
    result["commit_rows_per_s"] = result["build"]["commit_rows_per_s"]
    if args.delta:
        import subprocess

        done = subprocess.run([sys.executable, __file__, "--rows", str(args.delta), "--child", "delta", str(home)],
                              capture_output=True, text=True, check=True)
        log(f"  {json.loads(done.stdout.strip().splitlines()[-1])['logged']:,} vectors in the delta log")
        result["delta"] = args.delta
    if not args.only_incremental:
        result.update(measure(home, rows, args, log))
    if args.duplicates:
        result["duplicates"] = duplicates(home, rows, args.duplicates_exact, log)
        result["duplicates_s"] = result["duplicates"]["duplicates_s"]
    if not args.no_incremental:
        result.update(incremental(home, rows, log))
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    result["targets"] = {k: {"value": result.get(k), "target": v,
                             "met": None if result.get(k) is None else
                             (result[k] >= v if k in ("commit_rows_per_s", "filtered_search_recall") else result[k] <= v)}
                         for k, v in TARGETS.items()}
    print(json.dumps(result))
    print()
    print(f"scale: {args.rows:,} rows, 2 cores, load {result['loadavg_start']} -> {result['loadavg_end']}")
    print()
    print("| filter | breadth | share | SQL side ms (p50) | listing every id ms |")
    print("|---|---|---|---|---|")
    for r in result.get("filters", []):
        print(f"| {r['kind']} | {r['breadth']} | {r['share']:.4f} | {r['ms']:.2f}{' (broad)' if r['broad'] else ''} "
              f"| {r['list_all_ms']:.1f} |")
    print()
    print("| filtered top-10 | share | p50 ms | recall@10 vs exact | strategy |")
    print("|---|---|---|---|---|")
    for s in result.get("filtered_search", []):
        print(f"| {s['kind']} {s['breadth']} | {s['share']:.4f} | {s['p50_ms']:.2f} | {s['recall_at_10']:.3f} "
              f"| {', '.join(s['strategy'])} |")
    print()
    print("| target | value | at most / least | met |")
    print("|---|---|---|---|")
    for k, t in result["targets"].items():
        print(f"| {k} | {t['value']} | {t['target']} | {t['met']} |")
    if not (args.keep or args.reuse):
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
