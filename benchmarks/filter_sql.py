"""How long the catalog side of a filtered search takes: `retriever.filters.matching_ids` (one
SQL query over the images table) on a synthetic catalog of --n rows (default 200,000), for each
kind of filter. Prints one JSON line, then a table.

    python benchmarks/filter_sql.py --n 200000
"""

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retriever import filters as F  # noqa: E402
from retriever.store.catalog import Catalog  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args(argv)
    folder = Path(tempfile.mkdtemp())
    Catalog(folder / "c.db", create=True).close()
    con = sqlite3.connect(folder / "c.db")
    rnd = random.Random(0)
    cams = ["Canon", "NIKON", "Apple", "SONY", "Google"]
    rows = []
    for i in range(1, args.n + 1):
        y = rnd.randint(2010, 2024)
        rows.append((i, f"/photos/{y}/{i % 300}/IMG_{i}.jpg", None, 1000, 10**18, "f%d" % i, "indexed", None, 4000,
                     3000, "JPEG", f"{y}-{rnd.randint(1, 12):02d}-10T12:00:00", rnd.choice(cams), "X",
                     rnd.uniform(-60, 60), rnd.uniform(-180, 180), "2026"))
    con.executemany("INSERT INTO images (id,path,frame_ms,size,mtime_ns,fingerprint,status,error,width,height,format,"
                    "taken_at,camera_make,camera_model,gps_lat,gps_lon,indexed_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    con.executemany("INSERT INTO vectors (image_id, vector) VALUES (?, ?)", ((i, b"\0" * 8) for i in range(1, args.n + 1)))
    con.commit()
    con.close()
    cat = Catalog(folder / "c.db")
    cases = [dict(cameras=["canon"]), dict(after="2023"), dict(after="2023-06", before="2023-07"),
             dict(folders=["/photos/2015"]), dict(near="48.85,2.35", within_km=500), dict(formats=["jpeg"]),
             dict(min_size="3000"), dict(tags=["beach"])]
    out = []
    for kw in cases:
        f = F.build(**kw)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            ids = F.matching_ids(cat, f)
            times.append(time.perf_counter() - t)
        out.append({"filter": kw, "matches": len(ids), "ms": round(sorted(times)[1] * 1000, 1)})
    print(json.dumps({"benchmark": "filter_sql", "n": args.n, "rows": out, "loadavg_1m": os.getloadavg()[0]}))
    print()
    print(f"matching_ids on {args.n:,} catalog rows (median of 3)")
    for r in out:
        print(f"  {json.dumps(r['filter']):<50} {r['matches']:>8,} pass  {r['ms']:>7.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
