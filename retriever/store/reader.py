"""The catalog, read only, through the standard library's sqlite3: the one-shot query path.

`retriever search` without a daemon spends most of its time starting up, and SQLAlchemy's
import alone is about 0.17 s of CPU here (a third of the imports a search needs). A search only
reads, so `Index.open(..., read_only=True)` gives this reader instead of `Catalog`: the same
read methods over the same SQLite file, with the same values (paths decoded as
`files.path_from_text` does for the `PathText` column), and no schema work. The schema itself is
SQLAlchemy's (catalog.py): this module names its migrations, and a catalog that is not exactly at
that schema (older: needs migrating; newer: another version) is refused with `SchemaMismatch`,
on which the caller opens the full `Catalog` (which migrates, or explains).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from retriever.errors import CatalogError
from retriever.files import path_from_text, path_to_text

# catalog.MIGRATIONS, by name (catalog.py checks that the two agree)
SCHEMA_MIGRATIONS = ("001_initial", "002_tags", "003_captions", "004_tag_upkeep", "005_filter_columns",
                     "006_ocr", "007_regions", "008_concepts")
STATUS_INDEXED, STATUS_FAILED = "indexed", "failed"
METADATA_FIELDS = (  # image columns a search hit carries (catalog.py checks them against its table)
    "width", "height", "format", "taken_at", "camera_make", "camera_model", "gps_lat", "gps_lon", "frame_ms",
)
# The expressions of migration 005's filter indexes (schema.py): a filter must spell them exactly
# so SQLite uses the index. Here, not in schema.py: a search's filters must not import SQLAlchemy.
CAMERA_SQL = "lower(COALESCE(camera_make, '') || ' ' || COALESCE(camera_model, ''))"  # ix_images_camera
FORMAT_SQL = "upper(format)"  # ix_images_format
LONG_SIDE_SQL, SHORT_SIDE_SQL = "max(width, height)", "min(width, height)"  # ix_images_size
_CHUNK = 500  # ids per IN (...) list
# The images columns a row carries (not date_key: a filter column, see schema._m005_filter_columns)
_IMAGE_COLUMNS = ("id, path, frame_ms, size, mtime_ns, fingerprint, status, error, width, height, format, taken_at, "
                  "camera_make, camera_model, gps_lat, gps_lon, indexed_at")


class SchemaMismatch(CatalogError):
    """The catalog is not at this version's schema: open it with catalog.Catalog instead."""


class CatalogReader:
    """Read-only access to one index's SQLite file (see the module's docstring)."""

    read_only = True

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CatalogError(f"no catalog at {self.path}")
        self._conn = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False)
        try:
            names = {row[0] for row in self._conn.execute("SELECT name FROM migrations")}
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise SchemaMismatch(f"{self.path}: {exc}") from None
        if names != set(SCHEMA_MIGRATIONS):
            self._conn.close()
            raise SchemaMismatch(f"{self.path} has migrations {sorted(names)}, not {list(SCHEMA_MIGRATIONS)}")

    def close(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def cursor(self) -> Iterator[sqlite3.Cursor]:
        """A DB-API cursor (what filters.py and vlm/keywords.py run their SQL on)."""
        cursor = self._conn.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    # -- settings -------------------------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def settings(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._conn.execute("SELECT key, value FROM settings")}

    def generation(self) -> int:
        return int(self.get_setting("generation", 0))

    def tag_set(self) -> dict[str, Any] | None:
        return self.get_setting("tag_set")

    # -- rows -----------------------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        cursor = self._conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        out = []
        for values in cursor:
            row = dict(zip(names, values))
            if row.get("path") is not None:
                row["path"] = path_from_text(row["path"])
            out.append(row)
        return out

    def image_rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            for row in self._rows(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id IN ({marks})", chunk):
                out[int(row["id"])] = row
        return out

    def find_by_path(self, path: str) -> dict[str, Any] | None:
        """The row of a file: the image, or the first frame of a video."""
        rows = self._rows(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE path = ? ORDER BY frame_ms LIMIT 1", (path_to_text(path),))
        return rows[0] if rows else None

    def counts(self) -> dict[str, int]:
        by_status = dict(self._conn.execute("SELECT status, count(*) FROM images GROUP BY status").fetchall())
        n_vectors = self._conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
        return {"images": int(by_status.get(STATUS_INDEXED, 0)), "failed": int(by_status.get(STATUS_FAILED, 0)),
                "stored_vectors": int(n_vectors)}

    def scored_tags_for(self, ids: Sequence[int]) -> dict[int, list[tuple[str, float]]]:
        """Each item's tags as (label, score), best first; items without tags are absent."""
        out: dict[int, list[tuple[str, float]]] = {}
        for chunk in _chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT image_id, label, score FROM tags WHERE image_id IN ({marks}) "
                "ORDER BY image_id, score DESC, label", chunk)
            for image_id, label, score in rows:
                out.setdefault(int(image_id), []).append((label, float(score)))
        return out

    def tags_for(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """The labels of several items, each list best first; items without tags are absent."""
        out: dict[int, list[str]] = {}
        for chunk in _chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT image_id, label FROM tags WHERE image_id IN ({marks}) ORDER BY image_id, score DESC, label",
                chunk)
            for image_id, label in rows:
                out.setdefault(int(image_id), []).append(label)
        return out

    # -- vectors --------------------------------------------------------------------------------

    def vectors_for(self, ids: Sequence[int], dim: int) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for chunk in _chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            for image_id, blob in self._conn.execute(
                    f"SELECT image_id, vector FROM vectors WHERE image_id IN ({marks})", chunk):
                out[int(image_id)] = np.frombuffer(blob, dtype="<f4").reshape(dim).astype(np.float32)
        return out

    def iter_vectors(self, dim: int, chunk: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored vector in id order, `chunk` at a time: (ids int64, vectors float32)."""
        last = -1
        while True:
            rows = self._conn.execute(
                "SELECT image_id, vector FROM vectors WHERE image_id > ? ORDER BY image_id LIMIT ?", (last, chunk)
            ).fetchall()
            if not rows:
                return
            ids, vecs = vector_arrays(rows, dim)
            yield ids, vecs
            last = int(ids[-1])


def vector_arrays(rows: Sequence[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the vectors table, (image_id, blob) -> (ids int64, vectors float32 (n, dim))."""
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
    return ids, vecs.astype(np.float32, copy=False)


def _chunks(items: list[int], size: int = _CHUNK) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
