"""The FAISS file's append-only delta log (retriever.vector_log, retriever.index_log,
retriever.layered): a file plus its log answers as a fresh build from the catalog would; a warm
reader takes in only the new records; queries go on during and after a fold; a checkpoint that
does not commit leaves no record anyone applies; a log that does not reach the catalog is never
trusted."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import event

from retriever import index_log, vector_log
from retriever.encoders.base import ModelSpec
from retriever.index import Index
from retriever.index_vectors import EXACT_MAX_SETTING, INDEX_KIND_SETTING
from retriever.layered import LayeredVectorIndex
from retriever.vectors import VectorIndex, read_info

DIM = 24


def _rows(n: int, start: int, rng) -> list[dict]:
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [{"path": f"/p/{start + i:06d}.jpg", "frame_ms": None, "size": 1, "mtime_ns": 1,
             "fingerprint": f"{start + i:032x}", "status": "indexed", "error": None, "width": 8, "height": 8, "format": "JPEG", "taken_at": None,
             "camera_make": None, "camera_model": None, "gps_lat": None, "gps_lon": None, "vector": vecs[i]}
            for i in range(n)]


def _unit(rng, n):
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _exact(index, queries, k):
    """Brute force over the catalog's stored vectors: the truth."""
    ids, vecs = [], []
    for i, v in index.catalog.iter_vectors(index.dim):
        ids.append(i)
        vecs.append(v)
    ids, vecs = np.concatenate(ids), np.concatenate(vecs)
    scores = queries @ vecs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def _same_as_exact(view, index, rng, k=10):
    queries = _unit(rng, 8)
    want_ids, want_scores = _exact(index, queries, k)
    scores, ids = view.search(queries, k)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert [set(r) for r in ids] == [set(r) for r in want_ids]
    assert len(view) == index.catalog.counts()["stored_vectors"]


def _checkpoint(index, writer, rows=(), remove=()):
    ids = index.catalog.write_batch(list(rows), remove_ids=list(remove), on_commit=writer.on_commit)
    writer.apply(list(remove), np.asarray([i for r, i in zip(rows, ids) if r.get("vector") is not None], np.int64),
                 np.stack([r["vector"] for r in rows if r.get("vector") is not None]) if rows else None)
    return ids


def _logging(index, seed: int, n: int):
    """n photos in the catalog and its FAISS file, then a writer that has logged one checkpoint
    of 4 more. -> (rng, writer)."""
    rng = np.random.default_rng(seed)
    index.catalog.write_batch(_rows(n, 0, rng))
    index.vector_index()
    writer = index.vector_writer()
    _checkpoint(index, writer, _rows(4, 100, rng))
    return rng, writer


def _reader_view(index):
    return Index.open(index.folder.parent, "default", read_only=True).vector_index()


@pytest.fixture
def index(tmp_path):
    idx = Index.create(tmp_path / "home", "default", ModelSpec("synthetic"), "synthetic/log", DIM)
    idx.acquire_lock()
    yield idx
    idx.close()


def _changes(index, rng):
    """Three checkpoints through one writer: additions, replaced vectors and a moved row, removals."""
    writer = index.vector_writer()
    first = _checkpoint(index, writer, _rows(30, 1000, rng))
    replaced = [{"id": i, "vector": v} for i, v in zip(first[:5], _unit(rng, 5))]
    _checkpoint(index, writer, replaced + [{"id": first[5], "path": "/p/moved.jpg"}] + _rows(10, 2000, rng))
    _checkpoint(index, writer, remove=first[10:14] + first[:2])
    return writer


def test_file_plus_log_answers_as_a_fresh_build(index):
    rng = np.random.default_rng(0)
    index.catalog.write_batch(_rows(200, 0, rng))
    base = index.vector_index()  # built and saved with the lock, with an empty log
    token = read_info(index.vectors_path).token
    assert token and vector_log.read(index.vector_log_path, token, DIM) == []
    writer = _changes(index, rng)
    writer.finish()  # 40 vectors logged: far below a fold
    assert read_info(index.vectors_path).token == token  # the FAISS file was not written again
    assert len(vector_log.read(index.vector_log_path, token, DIM)) == 3

    reader = Index.open(index.folder.parent, "default", read_only=True)
    view = reader.vector_index()
    assert isinstance(view, LayeredVectorIndex) and len(view.delta) > 0
    _same_as_exact(view, index, rng)
    fresh = VectorIndex.build(DIM, index.catalog.iter_vectors(DIM))
    for image_id in (int(i) for i in fresh.search(_unit(rng, 1), 20)[1][0]):
        np.testing.assert_allclose(view.reconstruct(image_id), fresh.reconstruct(image_id), atol=1e-6)
    assert len(base) == 200  # a view never changes the index it lays its delta over
    reader.close()


def test_ivf_file_plus_log_and_its_fold_equal_a_refill_of_the_same_training(index):
    rng = np.random.default_rng(1)
    index.catalog.set_settings({INDEX_KIND_SETTING: "ivf-sq8"})
    index.catalog.write_batch(_rows(2000, 0, rng))
    index.vector_index()
    writer = _changes(index, rng)
    view = _reader_view(index)
    assert isinstance(view, LayeredVectorIndex) and view.is_ivf
    writer.fold()  # the log into a new file; a new, empty log
    info = read_info(index.vectors_path)
    assert info.index_type == "ivf-sq8" and vector_log.read(index.vector_log_path, info.token, DIM) == []
    folded, _ = VectorIndex.load(index.vectors_path)
    refill, _ = VectorIndex.load(index.vectors_path)
    refill.clear()
    for ids, vecs in index.catalog.iter_vectors(DIM):
        refill.add(ids, vecs)
    queries = _unit(rng, 8)
    for vi in (folded, view):
        folded.set_nprobe(folded.nlist)
        refill.set_nprobe(refill.nlist)
        view.main.set_nprobe(view.nlist)
        s1, i1 = vi.search(queries, 10)
        s2, i2 = refill.search(queries, 10)
        if vi is folded:
            np.testing.assert_allclose(s1, s2, atol=1e-5)
        else:  # the view's delta is exact, the refill's 8-bit codes
            np.testing.assert_allclose(s1, s2, atol=0.01)
            assert np.mean([len(set(a) & set(b)) for a, b in zip(i1, i2)]) >= 9
        assert len(vi) == len(refill) == index.catalog.counts()["stored_vectors"]


def test_a_warm_reader_reads_only_new_records_and_keeps_answering_through_a_fold(index, monkeypatch):
    rng = np.random.default_rng(2)
    index.catalog.write_batch(_rows(300, 0, rng))
    index.vector_index()
    reader = Index.open(index.folder.parent, "default", read_only=True)
    v0 = reader.vector_index()
    assert isinstance(v0, VectorIndex) and v0.position is not None

    writer = index.vector_writer()
    _checkpoint(index, writer, _rows(20, 1000, rng))
    loads = []
    monkeypatch.setattr(VectorIndex, "load", classmethod(lambda cls, p: loads.append(p) or (_ for _ in ()).throw(
        AssertionError("a warm reader loaded the whole file"))))
    v1 = reader.vector_index(previous=v0)
    assert isinstance(v1, LayeredVectorIndex) and v1.main is v0 and not loads
    _checkpoint(index, writer, _rows(5, 2000, rng), remove=[1, 2, 3])
    v2 = reader.vector_index(previous=v1)
    assert v2.main is v0 and len(v1.delta) == 20 and len(v2.delta) == 25  # v1 as it was
    _same_as_exact(v2, index, rng)
    monkeypatch.undo()

    queries = _unit(rng, 4)
    before = v2.search(queries, 10)
    writer.fold()  # a new file: the old view still answers, as it did
    after_fold = v2.search(queries, 10)
    np.testing.assert_array_equal(before[1], after_fold[1])
    v3 = reader.vector_index(previous=v2)  # another file: loaded whole, once
    assert isinstance(v3, VectorIndex) and v3.position.token == read_info(index.vectors_path).token
    _same_as_exact(v3, index, rng)
    _checkpoint(index, writer, _rows(3, 3000, rng))
    v4 = reader.vector_index(previous=v3)
    assert isinstance(v4, LayeredVectorIndex) and v4.main is v3
    _same_as_exact(v4, index, rng)
    reader.close()


def test_a_warm_collection_reloads_the_delta_only(tmp_path):
    from retriever.api import Collection

    rng = np.random.default_rng(3)
    writer_index = Index.create(tmp_path / "home", "default", ModelSpec("synthetic"), "synthetic/log", DIM)
    writer_index.acquire_lock()
    writer_index.catalog.write_batch(_rows(100, 0, rng))
    writer_index.vector_index()
    collection = Collection(Index.open(tmp_path / "home", "default", read_only=True), encoder=object(),
                            reload_check_s=0.0)
    first = collection.searcher().vectors
    writer = writer_index.vector_writer()
    _checkpoint(writer_index, writer, _rows(7, 500, rng))
    second = collection.searcher().vectors
    assert collection.reloads == 1 and isinstance(second, LayeredVectorIndex) and second.main is first
    _same_as_exact(second, writer_index, rng)
    collection.close()
    writer_index.close()


def test_a_checkpoint_that_does_not_commit_leaves_no_record(index):
    rng, writer = _logging(index, 4, 50)
    size = index.vector_log_path.stat().st_size

    def fails(conn):  # the COMMIT fails, after the record was written inside the transaction
        assert index.vector_log_path.stat().st_size > size
        raise OSError("disk full")

    generation = index.catalog.generation()
    event.listen(index.catalog.engine, "commit", fails)
    with pytest.raises(OSError):
        index.catalog.write_batch(_rows(3, 200, rng), on_commit=writer.on_commit)
    event.remove(index.catalog.engine, "commit", fails)
    assert index.vector_log_path.stat().st_size == size and index.catalog.generation() == generation
    _checkpoint(index, writer, _rows(2, 300, rng))  # the writer goes on where the log ends
    _same_as_exact(_reader_view(index), index, rng)


def test_a_killed_writer_leaves_records_no_reader_applies_and_the_next_writer_cuts(index):
    rng, writer = _logging(index, 5, 50)
    end = index.vector_log_path.stat().st_size
    generation = index.catalog.generation()
    # killed inside the next transaction, after its record: the catalog never reached it
    vector_log.append(index.vector_log_path, end, generation + 1, 999, np.arange(50, dtype=np.int64),
                      np.zeros(0, np.int64), np.zeros((0, DIM), np.float32))
    with open(index.vector_log_path, "ab") as f:  # and a torn record after it
        f.write(b"RVREC001" + b"\x07" * 30)
    view = _reader_view(index)
    _same_as_exact(view, index, rng)  # the phantom removal of 50 vectors is not applied
    again = index.vector_writer()
    assert index.vector_log_path.stat().st_size == end and again.generation == generation
    _checkpoint(index, again, _rows(2, 300, rng))
    _same_as_exact(_reader_view(index), index, rng)


def test_a_commit_the_log_missed_is_never_trusted(index):
    rng, writer = _logging(index, 6, 60)
    index.catalog.write_batch(_rows(5, 200, rng))  # no log: a gap at this generation
    view = _reader_view(index)
    assert not isinstance(view, LayeredVectorIndex)  # rebuilt from the catalog
    _same_as_exact(view, index, rng)
    next_writer = index.vector_writer()  # rebuilds and saves the file, with a new log
    info = read_info(index.vectors_path)
    assert info.generation == index.catalog.generation() and next_writer.offset == vector_log.HEADER_SIZE
    _checkpoint(index, next_writer, _rows(2, 300, rng))
    _same_as_exact(_reader_view(index), index, rng)


def test_the_log_is_folded_once_past_its_measured_size(index, monkeypatch):
    rng = np.random.default_rng(7)
    index.catalog.set_settings({EXACT_MAX_SETTING: 10_000})
    index.catalog.write_batch(_rows(100, 0, rng))
    index.vector_index()
    token = read_info(index.vectors_path).token
    monkeypatch.setattr(index_log, "FOLD_MIN_VECTORS", 30)
    writer = index.vector_writer()
    _checkpoint(index, writer, _rows(20, 1000, rng))
    writer.finish()
    assert read_info(index.vectors_path).token == token  # 20 logged: kept
    writer = index.vector_writer()
    assert writer.logged == 20
    _checkpoint(index, writer, _rows(15, 2000, rng))
    writer.finish()  # 35 > 30: folded
    info = read_info(index.vectors_path)
    assert info.token != token and info.count == 135 and info.generation == index.catalog.generation()
    assert index.vector_log_path.stat().st_size == vector_log.HEADER_SIZE
    _same_as_exact(_reader_view(index), index, rng)


def test_removing_images_logs_the_removal(index):
    rng = np.random.default_rng(8)
    ids = index.catalog.write_batch(_rows(40, 0, rng))
    index.vector_index()
    token = read_info(index.vectors_path).token
    index.remove_images(ids[:3])
    assert read_info(index.vectors_path).token == token
    assert index.status()["vector_log"]["removed"] == 3 and index.status()["vector_index_current"]
    _same_as_exact(_reader_view(index), index, rng)


def test_range_search_over_a_layered_view_leaves_out_what_the_log_removed(index):
    from retriever.layered import range_ids

    rng = np.random.default_rng(9)
    ids = index.catalog.write_batch(_rows(80, 0, rng))
    index.vector_index()
    writer = index.vector_writer()
    _checkpoint(index, writer, _rows(10, 500, rng), remove=ids[:20])
    view = _reader_view(index)
    query = _unit(rng, 1)
    got = range_ids(view, query, 0.0)
    want_ids, want_scores = _exact(index, query, 1000)
    assert set(got.tolist()) == {int(i) for i, s in zip(want_ids[0], want_scores[0]) if s >= 0.0}


def test_indexing_runs_log_their_checkpoints_and_a_new_collection_ends_in_the_file(tmp_path, photos, offline_encoder):
    import shutil

    from retriever.indexer import run_index

    col = tmp_path / "col"
    col.mkdir()
    names = sorted(p.name for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    for name in names[:8]:
        shutil.copy(photos / name, col / name)
    index = Index.create(tmp_path / "home", "default", ModelSpec(name="offline"), offline_encoder.model_id,
                         offline_encoder.dim)
    index.acquire_lock()
    run_index(index, offline_encoder, [str(col)])
    info = read_info(index.vectors_path)  # the run held the index in memory: written whole, the log empty
    assert info.count == 8 and index.status()["vector_log"]["records"] == 0
    for name in names[8:11]:
        shutil.copy(photos / name, col / name)
    (col / names[0]).unlink()
    run_index(index, offline_encoder, [str(col)])
    log = index.status()["vector_log"]
    assert read_info(index.vectors_path).token == info.token  # the file was not written again
    assert log["records"] >= 1 and log["added"] == 3 and log["removed"] == 1 and index.status()["vector_index_current"]
    view = Index.open(tmp_path / "home", "default", read_only=True).vector_index()
    assert isinstance(view, LayeredVectorIndex) and len(view) == 10
    queries = offline_encoder.embed_texts(["a cat", "a cup of coffee"])
    want_ids, _ = _exact(index, queries, 5)
    assert [list(r) for r in view.search(queries, 5)[1]] == [list(r) for r in want_ids]
    index.close()



def test_a_log_that_cannot_be_written_never_stops_a_commit(index):
    rng, writer = _logging(index, 10, 40)
    index.vector_log_path.unlink()  # (or a full disk): the record cannot be appended
    ids = _checkpoint(index, writer, _rows(3, 500, rng))
    assert len(ids) == 3 and writer.broken
    writer.finish()  # the file rebuilt from the catalog, with a new log
    info = read_info(index.vectors_path)
    assert info.generation == index.catalog.generation() and info.count == 47
    _same_as_exact(_reader_view(index), index, rng)


def test_a_reader_maps_the_file_and_cannot_change_it(index):
    from retriever.vectors import VectorIndexError

    rng, _ = _logging(index, 11, 30)
    index.vector_writer().fold()
    view = _reader_view(index)  # a one-query process: the codes are memory-mapped, not read
    assert isinstance(view, VectorIndex) and view.read_only
    _same_as_exact(view, index, rng)
    with pytest.raises(VectorIndexError):
        view.add(np.array([10_000]), _unit(rng, 1))
    with pytest.raises(VectorIndexError):
        view.remove([1])
    assert not index.vector_index().read_only  # the writer's own is read
    warm = Index.open(index.folder.parent, "default")  # a warm process (daemon, serve): read, never paged out
    assert not warm.vector_index().read_only
    warm.close()


def test_a_garbled_record_ends_the_log_there(index):
    rng, writer = _logging(index, 12, 30)
    good = vector_log.read(index.vector_log_path, writer.info.token, DIM)
    end = index.vector_log_path.stat().st_size
    _checkpoint(index, writer, _rows(2, 700, rng))
    raw = bytearray(index.vector_log_path.read_bytes())
    raw[end + 8] ^= 0x01  # one bit of the next record's generation: its CRC covers the head too
    index.vector_log_path.write_bytes(bytes(raw))
    assert [r.generation for r in vector_log.read(index.vector_log_path, writer.info.token, DIM)] == \
        [r.generation for r in good]
    huge = vector_log.RECORD.pack(vector_log.RECORD_MAGIC, 99, 1, 2**40, 2**40, 0)  # counts no file holds
    index.vector_log_path.write_bytes(bytes(raw[:end]) + huge)
    assert len(vector_log.read(index.vector_log_path, writer.info.token, DIM)) == len(good)
    view = _reader_view(index)  # the catalog is ahead of the log now: never trusted, rebuilt
    assert not isinstance(view, LayeredVectorIndex)
    _same_as_exact(view, index, rng)
