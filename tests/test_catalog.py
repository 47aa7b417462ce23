"""Catalog schema, migrations and storage."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import insert

from retriever.store import catalog as catalog_mod
from retriever.store.catalog import Catalog, migrations_table, utcnow
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


# ---- the read-only reader of the one-shot query path (catalog_reader.py) ---------------------


def test_reader_reads_what_the_catalog_reads(tmp_path):
    from retriever.store.reader import CatalogReader

    cat = Catalog(tmp_path / "c.db", create=True)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(5, 8)).astype(np.float32)
    odd = "/photos/caf\udce9.jpg"  # a file name that is not UTF-8 (bytes 0xe9), as os.walk gives it
    ids = cat.write_batch([
        row("/photos/a.jpg", vector=vecs[0], width=640, height=480, format="JPEG", taken_at="2023-06-15T18:30:00",
            gps_lat=48.85, gps_lon=2.35, camera_make="Canon"),
        row(odd, vector=vecs[1]),
        row("/photos/clip.mp4", frame_ms=5000, vector=vecs[2]),
        row("/photos/clip.mp4", frame_ms=0, vector=vecs[3]),
        row("/photos/broken.jpg", status="failed", error="truncated", vector=None),
        row("/photos/e.png", vector=vecs[4]),
    ])
    cat.write_tags([ids[0], ids[1]], [(ids[0], "dog", 0.9), (ids[0], "beach", 0.4), (ids[1], "cat", 0.7)])
    cat.set_settings({"generation_note": {"x": [1, 2]}})
    reader = CatalogReader(tmp_path / "c.db")
    try:
        assert reader.settings() == cat.settings()
        assert reader.get_setting("generation_note") == {"x": [1, 2]} and reader.get_setting("nope", 7) == 7
        assert reader.generation() == cat.generation() and reader.counts() == cat.counts()
        assert reader.image_rows(ids) == cat.image_rows(ids)
        assert reader.image_rows(ids)[ids[1]]["path"] == odd
        for path in ("/photos/a.jpg", odd, "/photos/clip.mp4", "/photos/none.jpg"):
            assert reader.find_by_path(path) == cat.find_by_path(path)
        assert reader.find_by_path("/photos/clip.mp4")["frame_ms"] == 0
        assert reader.tags_for(ids) == cat.tags_for(ids) == {ids[0]: ["dog", "beach"], ids[1]: ["cat"]}
        got, want = reader.vectors_for(ids, 8), cat.vectors_for(ids, 8)
        assert set(got) == set(want) and all(np.array_equal(got[i], want[i]) for i in got)
        for (a_ids, a_vecs), (b_ids, b_vecs) in zip(reader.iter_vectors(8, chunk=2), cat.iter_vectors(8, chunk=2),
                                                    strict=True):
            np.testing.assert_array_equal(a_ids, b_ids)
            np.testing.assert_array_equal(a_vecs, b_vecs)
    finally:
        reader.close()
        cat.close()


def test_reader_refuses_a_catalog_at_another_schema(tmp_path):
    from sqlalchemy import delete

    from retriever.store.reader import CatalogReader, SchemaMismatch

    cat = Catalog(tmp_path / "c.db", create=True)
    with cat.engine.begin() as conn:  # as if written before the last migration
        conn.execute(delete(migrations_table).where(migrations_table.c.name == catalog_mod.MIGRATIONS[-1][0]))
    cat.close()
    with pytest.raises(SchemaMismatch):
        CatalogReader(tmp_path / "c.db")
    (tmp_path / "empty.db").write_bytes(b"")  # an SQLite file with no tables at all
    with pytest.raises(SchemaMismatch):
        CatalogReader(tmp_path / "empty.db")


def test_a_read_only_index_falls_back_to_the_catalog_and_never_writes(tmp_path, monkeypatch):
    from retriever.store import reader as catalog_reader
    from retriever.encoders import ModelSpec
    from retriever.errors import RetrieverError
    from retriever.index import Index

    Index.create(tmp_path, "i", ModelSpec(name="offline"), "m/1", 4).close()
    index = Index.open(tmp_path, "i", read_only=True)
    try:
        assert type(index.catalog).__name__ == "CatalogReader" and index.model_id == "m/1"
        with pytest.raises(RetrieverError, match="read-only"):
            index.acquire_lock()
    finally:
        index.close()
    # a retriever with one more migration than this catalog has: opened (and migrated) as usual
    calls = []
    monkeypatch.setattr(catalog_mod, "MIGRATIONS", catalog_mod.MIGRATIONS + [("999_test", calls.append)])
    monkeypatch.setattr(catalog_reader, "SCHEMA_MIGRATIONS", catalog_reader.SCHEMA_MIGRATIONS + ("999_test",))
    index = Index.open(tmp_path, "i", read_only=True)
    try:
        assert type(index.catalog).__name__ == "Catalog" and len(calls) == 1
        assert index.catalog.applied_migrations()[-1] == "999_test"
    finally:
        index.close()
