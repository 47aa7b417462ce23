"""The indexer's checkpoint write: many image rows with their vectors in one transaction, through
the DB-API cursor of the transaction's connection (SQLAlchemy's per-statement cost, ~100 us, made
one writer commit ~1,500 rows/s; the raw statements here commit >10,000).

What is written is exactly what `Catalog.write_batch` documents: removals first (vectors, tags and
the image rows: triggers drop captions, keywords and tag upkeep), then each row updated or inserted
in order, then the vectors. A replaced vector drops the item's tags and its "scored" mark.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from retriever.files import path_to_text
from retriever.store.schema import IMAGE_FIELDS

_IN_CHUNK = 500  # bound parameters per IN (...): well under SQLite's limit


def write_rows(dbapi_connection, rows: Sequence[dict[str, Any]], remove_ids: Iterable[int], now: str) -> list[int]:
    """Write one checkpoint on `dbapi_connection` (inside the caller's transaction). Returns the
    id of each row, in order."""
    cur = dbapi_connection.cursor()
    try:
        removes = [(int(i),) for i in remove_ids]
        if removes:
            for table in ("tags", "tag_scored", "vectors", "images"):
                key = "id" if table == "images" else "image_id"
                cur.executemany(f"DELETE FROM {table} WHERE {key} = ?", removes)
        existing = _existing_ids(cur, rows)
        ids: list[int | None] = []
        cleared: list[tuple[int]] = []  # items that existed before: drop their tags and vector
        new_vectors: dict[int, bytes | None] = {}
        created: dict[int, str] = {}  # new item id -> its stored path
        run: list[tuple[int, tuple, dict]] = []  # consecutive new rows: (position, key, values), one INSERT
        run_keys: set[tuple] = set()

        def insert_run() -> None:
            if not run:
                return
            columns = tuple(run[0][2])
            cur.executemany(_insert_sql(columns), [tuple(v.values()) for _, _, v in run])
            # AUTOINCREMENT in one writer's transaction: the run's ids are consecutive, ending at seq
            last = cur.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone()[0]
            for offset, (position, key, values) in enumerate(run):
                image_id = int(last) - len(run) + 1 + offset
                ids[position] = existing[key] = image_id
                created[image_id] = values["path"]
                _vector_of(rows[position], image_id)
            run.clear()
            run_keys.clear()

        def _vector_of(row: dict[str, Any], image_id: int) -> None:
            if "vector" in row:
                if image_id not in created and image_id not in new_vectors:
                    cleared.append((image_id,))
                vector = row["vector"]
                new_vectors[image_id] = None if vector is None else np.asarray(vector, dtype="<f4").tobytes()

        for position, row in enumerate(rows):
            values = {k: row[k] for k in IMAGE_FIELDS if k in row}
            values["indexed_at"] = now
            if "path" in values:
                values["path"] = path_to_text(values["path"])
            image_id = row.get("id")
            ids.append(None)
            if image_id is None:
                key = (values["path"], _frame_key(row.get("frame_ms")))
                if key in run_keys:
                    insert_run()  # the same item twice in one checkpoint: the second updates it
                image_id = existing.get(key)
                if image_id is None:
                    values["date_key"] = date_key(values.get("taken_at"), values["mtime_ns"])
                    if run and tuple(run[0][2]) != tuple(values):
                        insert_run()
                    run.append((position, key, values))
                    run_keys.add(key)
                    continue
            insert_run()
            image_id = int(image_id)
            cur.execute(_update_sql(tuple(values)), (*values.values(), image_id))
            ids[position] = image_id
            _vector_of(row, image_id)
        insert_run()
        if cleared:
            for table in ("tags", "tag_scored", "vectors"):
                cur.executemany(f"DELETE FROM {table} WHERE image_id = ?", cleared)
        if created and cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keywords'").fetchone():
            # the keyword index's row of each new item: its file name (the path after the last "/")
            cur.executemany("INSERT INTO keywords (rowid, name, caption) VALUES (?, ?, '')",
                            [(i, path.rsplit("/", 1)[-1]) for i, path in created.items()])
        cur.executemany("INSERT OR REPLACE INTO vectors (image_id, vector) VALUES (?, ?)",
                        [(i, blob) for i, blob in new_vectors.items() if blob is not None])
        return [int(i) for i in ids]
    finally:
        cur.close()


def date_key(taken_at: str | None, mtime_ns: int) -> str:
    """An item's date for the date filters: its EXIF date taken, else its file's mtime in local
    time (what migration 005's triggers compute in SQL, to the second)."""
    if taken_at is not None:
        return taken_at
    from datetime import datetime

    return datetime.fromtimestamp(int(mtime_ns) // 1_000_000_000).strftime("%Y-%m-%dT%H:%M:%S")


def _existing_ids(cur, rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int], int]:
    """(stored path, frame key) -> id, for the rows matched by path (those without an "id")."""
    paths = sorted({path_to_text(r["path"]) for r in rows if r.get("id") is None})
    found: dict[tuple[str, int], int] = {}
    for chunk in _chunks(paths, _IN_CHUNK):
        marks = ",".join("?" * len(chunk))
        for image_id, path, frame in cur.execute(
            f"SELECT id, path, IFNULL(frame_ms, -1) FROM images WHERE path IN ({marks})", chunk
        ):
            found[(path, int(frame))] = int(image_id)
    return found


def _frame_key(frame_ms) -> int:
    return -1 if frame_ms is None else int(frame_ms)


@functools.lru_cache(maxsize=64)
def _insert_sql(columns: tuple[str, ...]) -> str:
    return f"INSERT INTO images ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


@functools.lru_cache(maxsize=64)
def _update_sql(columns: tuple[str, ...]) -> str:
    return f"UPDATE images SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?"


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
