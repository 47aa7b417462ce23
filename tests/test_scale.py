"""What keeps costs growing with the change, not the collection (benchmarks/scale.py measures
them at 1 M): every filter is answered from an index (its query plan, read here), a broad filter
is checked on search candidates and gives exactly the filtered search's answer, a combined filter
is listed from its most selective condition, and the catalog's bulk writer stores what the
per-row SQL did (dates, keyword rows)."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime

import numpy as np
import pytest

from retriever import filters as F
from retriever import search as S
from retriever.encoders.base import ModelSpec
from retriever.index import Index
from retriever.search import Searcher
from retriever.store.filters import filter_query
from retriever.store.writes import date_key

DIM = 16
MAKES = [("Canon", "EOS 5D"), ("Apple", "iPhone 13"), ("SONY", "ILCE-7M3"), None]
FORMATS = ["JPEG", "HEIF", "PNG", "MOV"]
SIZES = [(4032, 3024), (3024, 4032), (800, 600)]


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out = []
    for i in range(n):
        cam = MAKES[i % 4]
        fmt = FORMATS[(i // 4) % 4]
        w, h = SIZES[i % 3]
        year = 2015 + i % 6
        out.append({
            "path": f"/photos/{year}/{'trip' if i % 5 else 'home'}/img_{i:04d}.jpg", "frame_ms": 0 if fmt == "MOV" else None,
            "size": 1000 + i, "mtime_ns": 1_500_000_000_000_000_000 + i * 86_400_000_000_000,
            "fingerprint": f"{i:032x}", "status": "indexed", "error": None, "width": w, "height": h,
            "format": fmt, "taken_at": None if i % 7 == 0 else f"{year}-0{1 + i % 9}-15T10:00:00",
            "camera_make": cam[0] if cam else None, "camera_model": cam[1] if cam else None,
            "gps_lat": 48.85 + (i % 10) * 0.01 if i % 3 else None, "gps_lon": 2.35 if i % 3 else None,
            "vector": vecs[i],
        })
    return out


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    home = tmp_path_factory.mktemp("scale")
    index = Index.create(home, "s", ModelSpec("synthetic"), "synthetic/test", DIM)
    rows = _rows(240)
    ids = index.catalog.write_batch(rows)
    tagged = [(i, "beach", 0.9) for i in ids[::6]] + [(i, "dog", 0.9) for i in ids[::4]]
    index.catalog.write_tags(ids, tagged)
    yield index, rows, ids
    index.close()


CASES = {
    "date": dict(after="2016-01-01", before="2017-06-01"),
    "folder": dict(folders=["/photos/2017/trip"]),
    "camera": dict(cameras=["apple"]),
    "gps": dict(near="48.86,2.35", within_km=1.5),
    "format": dict(formats=["heic"]),
    "video": dict(formats=["video"]),
    "size": dict(min_size="4000x3000"),
    "tag": dict(tags=["beach"]),
    "tags-all": dict(tags=["beach", "dog"]),
    "tag-any": dict(tags_any=["beach", "dog"]),
    "no-tag": dict(no_tags=["dog"]),
    "combined": dict(after="2016", cameras=["canon", "sony"], formats=["jpeg", "png"], min_size="1000"),
    "combined-tag": dict(tags=["dog"], folders=["/photos/2019"], near="48.86,2.35", within_km=50),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_filter_is_answered_from_an_index(filled, kind):
    index = filled[0]
    f = F.build(**CASES[kind])
    with index.catalog.cursor() as cursor:
        query, params = filter_query(f, cursor)
        plan = [row[3] for row in cursor.execute("EXPLAIN QUERY PLAN " + query, params)]
    # never a scan of the table; a NOT IN (no-tag) may walk a covering index, which stops early
    assert not any(line.startswith("SCAN images") and "COVERING INDEX" not in line for line in plan), plan
    if kind != "no-tag":
        assert any(line.startswith("SEARCH images") for line in plan), plan


def _exact(rows_by_id, f, query, k, exclude=()):
    """Brute force: the best k by cosine among the rows that pass f (written out in Python)."""
    def passes(i, r):
        tags = set(r["_tags"])
        date = r["taken_at"] or datetime.fromtimestamp(r["mtime_ns"] // 10**9).strftime("%Y-%m-%dT%H:%M:%S")
        cam = f"{r['camera_make'] or ''} {r['camera_model'] or ''}".lower()
        ok = (not f.after or date >= f.after) and (not f.before or date < f.before)
        ok &= not f.folders or any(r["path"].startswith(d + "/") for d in f.folders)
        ok &= not f.cameras or any(c.lower() in cam for c in f.cameras)
        ok &= not f.formats or any((r["frame_ms"] is not None) if x == "VIDEO" else r["format"] == x for x in f.formats)
        ok &= not f.min_size or (max(r["width"], r["height"]) >= f.min_size[0] and min(r["width"], r["height"]) >= f.min_size[1])
        ok &= f.near is None or F.haversine_km(*f.near, r["gps_lat"], r["gps_lon"]) <= f.within_km
        ok &= all(t in tags for t in f.tags) and (not f.tags_any or bool(tags & set(f.tags_any)))
        return ok and not tags & set(f.no_tags)

    passing = [i for i, r in rows_by_id.items() if passes(i, r) and i not in exclude]
    scored = sorted(((float(rows_by_id[i]["vector"] @ query), i) for i in passing), key=lambda t: (-t[0], t[1]))
    return passing, [i for _, i in scored[:k]]


@pytest.mark.parametrize("columns", [False, True], ids=["sql", "columns"])
@pytest.mark.parametrize("broad_at", [3, 100_000])
def test_filtered_search_equals_brute_force_whether_broad_or_listed(filled, monkeypatch, broad_at, columns):
    """broad_at 3: every filter passing more than 3 items is broad (candidates checked by id, the
    path of a 1 M collection); 100,000: every filter lists its ids. columns: a warm searcher
    answers date, camera, format, size and GPS filters from columns in memory
    (retriever.filter_columns), as at 1 M. Same answers."""
    from retriever import filter_columns

    index, rows, ids = filled
    monkeypatch.setattr(F, "BROAD_AT", broad_at)
    monkeypatch.setattr(filter_columns, "MIN_ROWS", 0 if columns else 10**9)
    monkeypatch.setattr(filter_columns, "SAMPLE", 16)  # conditions ordered by their pass rate on 16 rows
    monkeypatch.setattr(S, "VERIFY_MAX_FETCH", 64)  # a filter against the query falls back to listing
    tags = {}
    for i, label, _ in [(i, "beach", 0) for i in ids[::6]] + [(i, "dog", 0) for i in ids[::4]]:
        tags.setdefault(i, []).append(label)
    by_id = {i: {**r, "_tags": tags.get(i, [])} for i, r in zip(ids, rows)}
    searcher = Searcher(index, encoder=object())
    assert (searcher.filter_columns() is not None) == columns  # read now (a warm searcher reads them in a thread)
    rng = np.random.default_rng(5)
    strategies = set()
    for kind, kw in CASES.items():
        f = F.build(**kw)
        passing, _ = _exact(by_id, f, np.zeros(DIM, dtype=np.float32), 0)
        match = searcher.match(f)
        assert isinstance(match, filter_columns.ColumnMatch) == (columns and filter_columns.FilterColumns.covers(f)), kind
        if len(passing) > broad_at:  # else a condition alone may still pass more (a box, one of two tags)
            assert match.broad, kind
        if not match.broad:
            assert match.ids.tolist() == sorted(passing), kind
        for _ in range(3):
            q = rng.standard_normal(DIM).astype(np.float32)
            q /= np.linalg.norm(q)
            exclude = [ids[0], ids[1]]
            got = [i for _, i in searcher._filtered(q[None, :], 10, exclude, f)]
            strategies.add(searcher.last_strategy)
            assert got == _exact(by_id, f, q, 10, exclude)[1], kind
    assert ("verify" in strategies) == (broad_at == 3)


def test_a_warm_process_reads_a_catalogs_columns_at_most_every_interval(filled, monkeypatch):
    """Each catalog generation is a new searcher in a warm process: while an indexer commits,
    a new one answers from SQL until the interval since the last read has passed."""
    from retriever import filter_columns

    index = filled[0]
    monkeypatch.setattr(filter_columns, "MIN_ROWS", 0)
    monkeypatch.setattr(filter_columns, "_last_read", {})
    first = Searcher(index, encoder=object())
    first.filter_columns(wait=False)  # starts reading in a thread (None until it is done)
    assert first.filter_columns() is not None
    f = F.build(cameras=["apple"])
    assert isinstance(first.match(f), filter_columns.ColumnMatch)
    second = Searcher(index, encoder=object())  # the next generation, moments later
    assert second.filter_columns(wait=False) is None and second._columns is None
    assert not isinstance(second.match(f), filter_columns.ColumnMatch)
    assert second.match(f).all_ids().tolist() == first.match(f).all_ids().tolist()
    monkeypatch.setattr(filter_columns, "READ_INTERVAL_S", 0.0)
    second.filter_columns(wait=False)
    assert second.filter_columns() is not None


def test_broad_filter_keeps_only_passing_candidates(filled, monkeypatch):
    index, rows, ids = filled
    monkeypatch.setattr(F, "BROAD_AT", 3)
    f = F.build(cameras=["apple"])
    match = F.match_filter(index.catalog, f)
    assert match.broad
    apple = {i for i, r in zip(ids, rows) if r["camera_make"] == "Apple"}
    kept = match.keep(list(reversed(ids)))
    assert set(kept.tolist()) == apple and kept.tolist() == sorted(kept.tolist(), reverse=True)
    assert match.all_ids().tolist() == sorted(apple)


def test_bulk_writer_stores_dates_and_keyword_rows_like_the_sql_did(filled, tmp_path):
    index, rows, ids = filled
    con = sqlite3.connect(index.catalog.path)
    stored = dict(con.execute("SELECT id, date_key FROM images"))
    for i, r in zip(ids, rows):
        assert stored[i] == date_key(r["taken_at"], r["mtime_ns"])
    # another writer's insert (plain SQL) gets its date from the trigger, in SQLite's local time
    con.execute("INSERT INTO images (path, size, mtime_ns, status, indexed_at) "
                "VALUES ('/x/raw.jpg', 1, 1600000000123456789, 'failed', 'now')")
    raw = con.execute("SELECT date_key FROM images WHERE path = '/x/raw.jpg'").fetchone()[0]
    assert raw == date_key(None, 1600000000123456789)
    con.rollback()
    names = dict(con.execute("SELECT rowid, name FROM keywords"))
    assert all(names[i] == os.path.basename(r["path"]) for i, r in zip(ids, rows))
    con.close()


def test_bulk_writer_updates_and_replaces_vectors_in_one_checkpoint(tmp_path):
    index = Index.create(tmp_path, "w", ModelSpec("synthetic"), "synthetic/test", DIM)
    cat = index.catalog
    rows = _rows(6)
    ids = cat.write_batch(rows)
    cat.write_tags(ids, [(ids[0], "beach", 0.9), (ids[1], "beach", 0.9)])
    new_vec = np.eye(DIM, dtype=np.float32)[0]
    # the same path again (an update keeps the id), a new vector drops the old one's tags; a row
    # given twice in one batch ends with its last vector; a removal goes first
    again = [dict(rows[0], size=5, vector=new_vec), dict(rows[1], vector=None), dict(rows[2], vector=new_vec * -1),
             dict(rows[2], vector=new_vec)]
    out = cat.write_batch(again, remove_ids=[ids[5]])
    assert out == [ids[0], ids[1], ids[2], ids[2]]
    assert cat.image_rows([ids[0]])[ids[0]]["size"] == 5
    stored = cat.vectors_for(ids, DIM)
    assert np.array_equal(stored[ids[0]], new_vec) and np.array_equal(stored[ids[2]], new_vec)
    assert ids[1] not in stored and ids[5] not in stored and ids[3] in stored
    assert cat.tag_counts() == {}
    assert cat.image_rows([ids[5]]) == {}
    # new items between updates, and a new item twice: one insert, then an update of it
    fresh = _rows(12)[6:]
    out = cat.write_batch([fresh[0], fresh[1], dict(rows[3], size=9), fresh[2], dict(fresh[2], size=77, vector=new_vec),
                           fresh[3]])
    assert out[3] == out[4] and len(set(out)) == 5 and out[2] == ids[3]
    assert [i for i in out if i not in ids] == sorted(i for i in out if i not in ids)
    got = cat.image_rows(out)
    assert [got[i]["path"] for i in out] == [fresh[0]["path"], fresh[1]["path"], rows[3]["path"], fresh[2]["path"],
                                             fresh[2]["path"], fresh[3]["path"]]
    assert got[out[3]]["size"] == 77 and got[ids[3]]["size"] == 9
    stored = cat.vectors_for(out, DIM)
    assert np.array_equal(stored[out[3]], new_vec) and np.array_equal(stored[out[5]], fresh[3]["vector"])
    index.close()
