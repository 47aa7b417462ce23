"""The SQL of region vectors: the `regions` table and its change log (catalog migration
007_regions), read and written here for retriever/regions.py.

An item's regions are written only if its image still has the fingerprint they were encoded from
(one conditional statement), so an indexing run going on at the same time can never leave stale
regions; triggers drop them when the image is edited or removed. Every write and every deletion
moves `region_log.version`: the region FAISS file records the version it was built at.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Sequence

import numpy as np

from retriever.store.reader import STATUS_INDEXED

_WRITE = (
    "INSERT INTO regions (image_id, scheme, fingerprint, boxes, vectors, dim, version, created_at) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE id = ? AND fingerprint IS ?) "
    "ON CONFLICT (image_id) DO UPDATE SET scheme = excluded.scheme, fingerprint = excluded.fingerprint, "
    "boxes = excluded.boxes, vectors = excluded.vectors, dim = excluded.dim, version = excluded.version, "
    "created_at = excluded.created_at"
)


def write_regions(catalog, rows: Sequence[tuple[int, str | None, list, np.ndarray]], scheme: str, now: str) -> int:
    """Store (image_id, fingerprint, boxes, vectors (n, dim) float) rows in one transaction; a row
    whose image is gone or has other content now is not written. Returns how many were."""
    written = 0
    with catalog.engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute("UPDATE region_log SET version = version + 1 WHERE id = 1")
            version = int(cursor.execute("SELECT version FROM region_log WHERE id = 1").fetchone()[0])
            for image_id, fingerprint, boxes, vectors in rows:
                vectors = np.ascontiguousarray(vectors, dtype=np.float16)
                cursor.execute(_WRITE, (int(image_id), scheme, fingerprint, json.dumps([list(b) for b in boxes]),
                                        vectors.tobytes(), int(vectors.shape[1]) if vectors.ndim == 2 else 0,
                                        version, now, int(image_id), fingerprint))
                written += cursor.rowcount
        finally:
            cursor.close()
    return written


def pending_region_rows(catalog, scheme: str, limit: int | None = None) -> list[tuple[int, str, str | None]]:
    """(id, path, fingerprint) of the indexed still images whose regions need encoding: none yet,
    encoded from other content, or by another scheme or model. By id."""
    sql = ("SELECT i.id, i.path, i.fingerprint FROM images i LEFT JOIN regions r ON r.image_id = i.id "
           "WHERE i.status = ? AND i.frame_ms IS NULL "
           "AND (r.image_id IS NULL OR r.fingerprint IS NOT i.fingerprint OR r.scheme != ?) ORDER BY i.id"
           + ("" if limit is None else f" LIMIT {int(limit)}"))
    with catalog.cursor() as cursor:
        return [tuple(r) for r in cursor.execute(sql, (STATUS_INDEXED, scheme)).fetchall()]


def region_version(catalog) -> int | None:
    """The log's version (None: a catalog without regions at all, before migration 007)."""
    with catalog.cursor() as cursor:
        if not _has_table(cursor, "region_log"):
            return None
        row = cursor.execute("SELECT version FROM region_log WHERE id = 1").fetchone()
        return int(row[0]) if row else 0


def region_counts(catalog) -> dict[str, Any]:
    """{"photos": items with regions, "regions": their count, "bytes": of their vectors in the
    catalog, "schemes": {scheme: photos}}."""
    with catalog.cursor() as cursor:
        if not _has_table(cursor, "regions"):
            return {"photos": 0, "regions": 0, "bytes": 0, "schemes": {}}
        photos, nbytes, count = cursor.execute(
            "SELECT count(*), total(length(vectors)), total(CASE WHEN dim > 0 THEN length(vectors) / (2 * dim) END) "
            "FROM regions").fetchone()
        schemes = dict(cursor.execute("SELECT scheme, count(*) FROM regions GROUP BY scheme").fetchall())
    return {"photos": int(photos), "regions": int(count), "bytes": int(nbytes), "schemes": schemes}


def iter_regions(catalog, dim: int, chunk: int = 512) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image ids, boxes (n, 4) float32, vectors (n, dim) float32) chunks of every stored region
    of this dimension, one row per region (an image's regions in a row), by image id."""
    with catalog.cursor() as cursor:
        if not _has_table(cursor, "regions"):
            return
        rows = cursor.execute("SELECT image_id, boxes, vectors FROM regions WHERE dim = ? ORDER BY image_id",
                              (int(dim),))
        while True:
            batch = rows.fetchmany(chunk)
            if not batch:
                return
            ids, boxes, vectors = [], [], []
            for image_id, box_json, blob in batch:
                vecs = np.frombuffer(blob, dtype=np.float16).reshape(-1, dim)
                these = json.loads(box_json)
                if len(these) != len(vecs):  # never written so; skip rather than misplace boxes
                    continue
                ids.extend([int(image_id)] * len(vecs))
                boxes.extend(these)
                vectors.append(vecs)
            if vectors:
                yield (np.asarray(ids, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4),
                       np.concatenate(vectors).astype(np.float32))


def regions_of(catalog, image_id: int) -> tuple[list, np.ndarray, str] | None:
    """(boxes, vectors (n, dim) float32, scheme) of one item, or None."""
    with catalog.cursor() as cursor:
        if not _has_table(cursor, "regions"):
            return None
        row = cursor.execute("SELECT boxes, vectors, dim, scheme FROM regions WHERE image_id = ?",
                             (int(image_id),)).fetchone()
    if row is None or not row[2]:
        return None
    return json.loads(row[0]), np.frombuffer(row[1], dtype=np.float16).reshape(-1, row[2]).astype(np.float32), row[3]


def _has_table(cursor, name: str) -> bool:
    return cursor.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None
