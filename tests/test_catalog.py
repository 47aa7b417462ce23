"""Catalog schema, migrations and storage."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import insert

from retriever import catalog as catalog_mod
from retriever.catalog import Catalog, migrations_table, utcnow
from retriever.errors import CatalogError


def row(path: str, status: str = "indexed", **extra):
    return {"path": path, "size": 10, "mtime_ns": 1, "fingerprint": "f" + path[-1], "status": status, **extra}


def test_migrations_are_named_ordered_and_applied_once(tmp_path):
    cat = Catalog(tmp_path / "c.db", create=True)
    names = [name for name, _ in catalog_mod.MIGRATIONS]
    assert cat.applied_migrations() == names
    cat.close()
    again = Catalog(tmp_path / "c.db")
    assert again.migrate() == []  # nothing pending on reopen
    assert again.applied_migrations() == names


def test_a_newer_catalog_is_refused(tmp_path):
    cat = Catalog(tmp_path / "c.db", create=True)
    with cat.engine.begin() as conn:
        conn.execute(insert(migrations_table).values(name="999_from_the_future", applied_at=utcnow()))
    cat.close()
    with pytest.raises(CatalogError, match="newer retriever"):
        Catalog(tmp_path / "c.db")


def test_a_pending_migration_is_applied_on_open(tmp_path, monkeypatch):
    Catalog(tmp_path / "c.db", create=True).close()
    calls = []
    monkeypatch.setattr(
        catalog_mod, "MIGRATIONS", catalog_mod.MIGRATIONS + [("999_test", lambda conn: calls.append(conn))]
    )
    cat = Catalog(tmp_path / "c.db")
    assert len(calls) == 1 and cat.applied_migrations()[-1] == "999_test"


def test_write_batch_upserts_rows_and_vectors_in_one_checkpoint(tmp_path):
    cat = Catalog(tmp_path / "c.db", create=True)
    g0 = cat.generation()
    vecs = np.eye(3, 4, dtype=np.float32)
    ids = cat.write_batch(
        [row("/a", vector=vecs[0]), row("/b", status="failed", error="broken", vector=None),
         row("/c", vector=vecs[1]), row("/d", vector=vecs[2])]
    )
    assert cat.generation() == g0 + 1
    assert cat.counts() == {"images": 3, "failed": 1, "stored_vectors": 3}
    stored = cat.vectors_for(ids, 4)
    assert set(stored) == {ids[0], ids[2], ids[3]}
    np.testing.assert_array_equal(stored[ids[3]], vecs[2])

    # Re-writing a path keeps its id; a row that now fails loses its vector.
    ids2 = cat.write_batch([row("/a", status="failed", error="now broken", vector=None)])
    assert ids2 == [ids[0]]
    assert ids[0] not in cat.vectors_for([ids[0]], 4)
    assert cat.failures()[0]["path"] == "/a"

    cat.remove([ids[2]])
    assert cat.find_by_path("/c") is None
    all_ids = np.concatenate([i for i, _ in cat.iter_vectors(4, chunk=1)])
    assert all_ids.tolist() == [ids[3]]


def test_partial_updates_by_id_keep_the_vector(tmp_path):
    cat = Catalog(tmp_path / "c.db", create=True)
    (image_id,) = cat.write_batch([row("/old/a.jpg", width=5, vector=np.arange(3, dtype=np.float32))])
    cat.write_batch([{"id": image_id, "path": "/new/a.jpg", "size": 11, "mtime_ns": 2}])  # a move
    moved = cat.find_by_path("/new/a.jpg")
    assert (moved["id"], moved["size"], moved["width"]) == (image_id, 11, 5)
    assert cat.find_by_path("/old/a.jpg") is None
    np.testing.assert_array_equal(cat.vectors_for([image_id], 3)[image_id], [0, 1, 2])
    assert [r["id"] for r in cat.indexed_with_fingerprint(moved["fingerprint"])] == [image_id]
    assert cat.indexed_with_fingerprint("nope") == []


def test_video_frames_are_items_of_one_file(tmp_path):
    cat = Catalog(tmp_path / "c.db", create=True)
    frames = [row("/v.mp4", frame_ms=ms, fingerprint="fv", vector=np.full(2, ms, np.float32)) for ms in (0, 5000)]
    ids = cat.write_batch(frames + [row("/a.jpg", vector=np.ones(2))])
    assert cat.write_batch([row("/v.mp4", frame_ms=5000, width=9)]) == [ids[1]]  # (path, frame) is the key
    known = cat.known_files()
    assert known["/v.mp4"].ids == (ids[0], ids[1]) and known["/a.jpg"].ids == (ids[2],)
    assert [r["frame_ms"] for r in cat.indexed_with_fingerprint("fv")] == [0, 5000]
    assert cat.find_by_path("/v.mp4")["frame_ms"] == 0
    import sqlalchemy

    with pytest.raises(sqlalchemy.exc.IntegrityError):  # no second still row for one path
        with cat.engine.begin() as conn:
            conn.execute(insert(catalog_mod.images).values(**row("/a.jpg"), indexed_at="x"))


def test_ids_under_a_folder(tmp_path):
    cat = Catalog(tmp_path / "c.db", create=True)
    ids = cat.write_batch([row(p) for p in ("/p/a.jpg", "/p/sub/b.jpg", "/p_x/c.jpg", "/p%/d.jpg", "/q.jpg")])
    assert sorted(cat.ids_under("/p")) == ids[:2]
    assert cat.ids_under("/p/a.jpg") == [ids[0]]
    assert cat.ids_under("/p%") == [ids[3]]
    # Case matters, and a non-UTF-8 name below the folder (stored escaped, whole path) is found.
    more = cat.write_batch([row(p) for p in ("/P/e.jpg", "/p/\udcff.jpg", "/p/sub/\udcfe\\x.jpg")])
    assert set(cat.ids_under("/p")) == {ids[0], ids[1], more[1], more[2]}
    assert cat.ids_under("/P") == [more[0]]


def test_ids_are_never_reused(tmp_path):
    cat = Catalog(tmp_path / "c.db", create=True)
    (first,) = cat.write_batch([row("/a", vector=np.ones(2))])
    cat.remove([first])
    (second,) = cat.write_batch([row("/b", vector=np.ones(2))])
    assert second > first  # FAISS ids stay unique over the index's life


def test_settings_round_trip_json(tmp_path):
    cat = Catalog(tmp_path / "c.db", create=True)
    cat.set_settings({"model": {"name": "offline", "pretrained": None}, "dim": 7})
    cat.set_settings({"dim": 8})
    assert cat.get_setting("dim") == 8
    assert cat.settings()["model"] == {"name": "offline", "pretrained": None}


def test_not_a_catalog_is_a_clear_error(tmp_path):
    bad = tmp_path / "c.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError):
        Catalog(bad)
    with pytest.raises(CatalogError):
        Catalog(tmp_path / "missing.db")
