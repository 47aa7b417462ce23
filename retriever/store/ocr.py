"""The SQL of text read in photos: the `ocr` table and the `ocr_squash` trigram index (catalog
migration 006_ocr), read and written here for retriever/ocr/.

A photo's text is written only if its image still has the fingerprint it was read from (one
conditional statement), so an indexing run going on at the same time can never leave stale or
orphaned text; triggers drop it when its image is edited or removed, and keep the keyword index's
`text` column and `ocr_squash` in step.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Sequence

from retriever.store.reader import STATUS_INDEXED

_CHUNK = 500

_WRITE = (
    "INSERT INTO ocr (image_id, engine, fingerprint, lines, text, squashed, created_at) "
    "SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE id = ? AND fingerprint IS ?) "
    "ON CONFLICT (image_id) DO UPDATE SET engine = excluded.engine, fingerprint = excluded.fingerprint, "
    "lines = excluded.lines, text = excluded.text, squashed = excluded.squashed, created_at = excluded.created_at"
)


def write_text_rows(cursor, rows: Sequence[tuple[int, str | None, list[dict[str, Any]], str, str]],
                    engine: str, now: str) -> int:
    """Store (image_id, fingerprint, lines, text, squashed) rows with `cursor` (inside the caller's
    transaction). A row whose image is gone or no longer has that fingerprint is not written.
    Returns how many were written."""
    written = 0
    for image_id, fingerprint, lines, text, squashed in rows:
        cursor.execute(_WRITE, (int(image_id), engine, fingerprint, json.dumps(lines, ensure_ascii=False), text,
                                squashed, now, int(image_id), fingerprint))
        written += cursor.rowcount
    return written


def write_texts(catalog, rows, engine: str, now: str) -> int:
    """write_text_rows in a transaction of its own."""
    with catalog.engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            return write_text_rows(cursor, rows, engine, now)
        finally:
            cursor.close()


def pending_text_rows(catalog, engine: str, *, frames: bool = False,
                      limit: int | None = None) -> list[tuple[int, str, int | None, str | None, int | None, int | None]]:
    """(id, path, frame_ms, fingerprint, width, height) of the indexed items whose text needs
    reading, by id: never read, read from other content (kept only if a trigger was bypassed), or
    read by another engine or model. Still images only, unless `frames`."""
    sql = ("SELECT i.id, i.path, i.frame_ms, i.fingerprint, i.width, i.height FROM images i "
           "LEFT JOIN ocr o ON o.image_id = i.id WHERE i.status = ? "
           "AND (o.image_id IS NULL OR o.fingerprint IS NOT i.fingerprint OR o.engine != ?)"
           + ("" if frames else " AND i.frame_ms IS NULL") + " ORDER BY i.id"
           + ("" if limit is None else f" LIMIT {int(limit)}"))
    with catalog.cursor() as cursor:
        return [tuple(r) for r in cursor.execute(sql, (STATUS_INDEXED, engine)).fetchall()]


def known_texts(catalog, fingerprints: Sequence[str | None], engine: str) -> dict[str, tuple[list, str, str]]:
    """fingerprint -> (lines, text, squashed) of content already read by `engine` in another item
    (a copy of a photo): its text is copied, not read again."""
    out: dict[str, tuple[list, str, str]] = {}
    with catalog.cursor() as cursor:
        for fingerprint in dict.fromkeys(f for f in fingerprints if f):
            row = cursor.execute(
                "SELECT o.lines, o.text, o.squashed FROM images j JOIN ocr o ON o.image_id = j.id "
                "WHERE j.fingerprint = ? AND o.fingerprint = j.fingerprint AND o.engine = ? LIMIT 1",
                (fingerprint, engine)).fetchone()
            if row is not None:
                out[fingerprint] = (json.loads(row[0]), row[1], row[2])
    return out


def texts_for(catalog, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """image_id -> {"lines": [...], "engine", "created_at"} for the ids whose text was read
    (lines may be empty: read, no text found)."""
    out: dict[int, dict[str, Any]] = {}
    ids = [int(i) for i in ids]
    with catalog.cursor() as cursor:
        if not _has_table(cursor, "ocr"):
            return out
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            for image_id, engine, lines, created_at in cursor.execute(
                    f"SELECT image_id, engine, lines, created_at FROM ocr WHERE image_id IN ({marks})", chunk):
                out[int(image_id)] = {"lines": json.loads(lines), "engine": engine, "created_at": created_at}
    return out


def text_counts(catalog, frames: bool = False) -> dict[str, int]:
    """{"items": indexed items a run reads, "items_read": of them, those read, "items_with_text":
    of those, the ones with some text}."""
    where = "i.status = 'indexed'" + ("" if frames else " AND i.frame_ms IS NULL")
    with catalog.cursor() as cursor:
        total = cursor.execute(f"SELECT count(*) FROM images i WHERE {where}").fetchone()[0]
        read, with_text = cursor.execute(
            f"SELECT count(*), total(o.text != '') FROM images i JOIN ocr o ON o.image_id = i.id WHERE {where}"
        ).fetchone()
    return {"items": int(total), "items_read": int(read), "items_with_text": int(with_text)}


def read_counts(catalog) -> dict[str, int]:
    """{"read": items whose text was read, "with_text": of them, those with some}, from the ocr
    table alone (status: no scan of the images)."""
    with catalog.cursor() as cursor:
        if not _has_table(cursor, "ocr"):
            return {"read": 0, "with_text": 0}
        read, with_text = cursor.execute("SELECT count(*), total(text != '') FROM ocr").fetchone()
    return {"read": int(read), "with_text": int(with_text)}


def text_rows(catalog) -> Iterator[tuple[int, str, int | None, str, str]]:
    """Every item with some text: (id, path, frame_ms, lines JSON, engine), by path (streamed)."""
    with catalog.cursor() as cursor:
        rows = cursor.execute("SELECT i.id, i.path, i.frame_ms, o.lines, o.engine FROM images i "
                              "JOIN ocr o ON o.image_id = i.id WHERE o.text != '' ORDER BY i.path, i.frame_ms")
        while True:
            batch = rows.fetchmany(256)
            if not batch:
                return
            yield from (tuple(r) for r in batch)


def has_trigram_index(cursor) -> bool:
    return _has_table(cursor, "ocr_squash")


def substring_matches(catalog, needle: str, limit: int) -> list[tuple[int, str]]:
    """[(image_id, squashed text)] of at most `limit` items whose squashed text contains `needle`
    (already squashed: letters and digits, case-folded), the trigram index's best (BM25) first
    for a needle of 3 characters or more; shorter ones scan the read texts, shortest first."""
    with catalog.cursor() as cursor:
        if not _has_table(cursor, "ocr"):
            return []
        if len(needle) >= 3 and has_trigram_index(cursor):
            sql = ("SELECT o.image_id, o.squashed FROM ocr_squash s JOIN ocr o ON o.image_id = s.rowid "
                   "WHERE ocr_squash MATCH ? ORDER BY s.rank LIMIT ?")
            args = (f'"{needle}"', int(limit))  # a phrase of the needle's trigrams; it has no quotes
        else:
            sql = "SELECT image_id, squashed FROM ocr WHERE instr(squashed, ?) > 0 ORDER BY length(squashed) LIMIT ?"
            args = (needle, int(limit))
        return [(int(i), text) for i, text in cursor.execute(sql, args).fetchall()]


def _has_table(cursor, name: str) -> bool:
    return cursor.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None
