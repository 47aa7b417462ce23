"""The SQL of concepts (catalog migration 008_concepts), read and written here for
retriever/concepts.py: the `concepts` table (a name, its model, its fitted scorer) and
`concept_examples` (each example's label, +1 shows it / -1 does not, its own vector, and the
catalog photo it came from, if any).

A concept's examples and its refitted scorer are written in one transaction, so a reader sees
either the old concept or the new one, never examples without their fit.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

_CONCEPT_COLUMNS = "id, name, model_id, dim, vector, fit, version, created_at, updated_at"


def has_concepts_table(catalog) -> bool:
    with catalog.cursor() as cursor:
        return cursor.execute("SELECT 1 FROM sqlite_master WHERE name = 'concepts'").fetchone() is not None


def concept_names(catalog) -> list[str]:
    """The concepts' names, by name ([] before migration 008)."""
    if not has_concepts_table(catalog):
        return []
    with catalog.cursor() as cursor:
        return [r[0] for r in cursor.execute("SELECT name FROM concepts ORDER BY lower(name)").fetchall()]


def concept_row(catalog, name: str) -> dict[str, Any] | None:
    """The concept called `name` (exactly, case-insensitive), without its examples, or None."""
    with catalog.cursor() as cursor:
        row = cursor.execute(f"SELECT {_CONCEPT_COLUMNS} FROM concepts WHERE lower(name) = lower(?)",
                             (name,)).fetchone()
    return _concept(row) if row else None


def concept_rows(catalog) -> list[dict[str, Any]]:
    """Every concept with its example counts, by name."""
    with catalog.cursor() as cursor:
        rows = cursor.execute(f"SELECT {_CONCEPT_COLUMNS} FROM concepts ORDER BY lower(name)").fetchall()
        counts = {(cid, label): n for cid, label, n in cursor.execute(
            "SELECT concept_id, label, count(*) FROM concept_examples GROUP BY concept_id, label").fetchall()}
    out = []
    for row in rows:
        concept = _concept(row)
        concept["positives"] = counts.get((concept["id"], 1), 0)
        concept["negatives"] = counts.get((concept["id"], -1), 0)
        out.append(concept)
    return out


def fitted_concepts(catalog) -> list[dict[str, Any]]:
    """Every fitted concept, without example counts (what each search hit's `concepts` needs)."""
    with catalog.cursor() as cursor:
        rows = cursor.execute(f"SELECT {_CONCEPT_COLUMNS} FROM concepts WHERE vector IS NOT NULL").fetchall()
    return [_concept(row) for row in rows]


def examples_of(catalog, concept_id: int) -> list[dict[str, Any]]:
    """The examples of a concept, oldest first: id, label, image_id (None: from outside the
    catalog, or a photo since removed), source, vector (float32), added_at, and the photo's path."""
    with catalog.cursor() as cursor:
        rows = cursor.execute(
            "SELECT e.id, e.label, e.image_id, e.source, e.vector, e.added_at, i.path FROM concept_examples e "
            "LEFT JOIN images i ON i.id = e.image_id WHERE e.concept_id = ? ORDER BY e.id", (int(concept_id),)
        ).fetchall()
    return [{"id": r[0], "label": r[1], "image_id": r[2], "source": r[3],
             "vector": np.frombuffer(r[4], dtype=np.float32), "added_at": r[5], "path": r[6]} for r in rows]


def save_concept(catalog, name: str, model_id: str, dim: int, now: str,
                 examples: Sequence[tuple[int, int | None, str, np.ndarray]],
                 fitted: tuple[np.ndarray, dict[str, Any]] | None, *, replace_labels: bool = True) -> int:
    """Create the concept if new, add `examples` (label, image_id, source, vector), and store its
    refit (unit vector, JSON of the rest), all in one transaction. An example of a catalog photo
    that the concept already holds is replaced (its label may flip: "not this" after "yes")
    when replace_labels. Returns the concept's id."""
    with catalog.engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            row = cursor.execute("SELECT id FROM concepts WHERE lower(name) = lower(?)", (name,)).fetchone()
            if row is None:
                cursor.execute("INSERT INTO concepts (name, model_id, dim, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                               (name, model_id, int(dim), now, now))
                concept_id = int(cursor.lastrowid)
            else:
                concept_id = int(row[0])
            for label, image_id, source, vector in examples:
                if image_id is not None and replace_labels:
                    cursor.execute("DELETE FROM concept_examples WHERE concept_id = ? AND image_id = ?",
                                   (concept_id, int(image_id)))
                cursor.execute(
                    "INSERT INTO concept_examples (concept_id, label, image_id, source, vector, added_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (concept_id, int(label), None if image_id is None else int(image_id), source,
                     np.ascontiguousarray(vector, dtype=np.float32).tobytes(), now))
            if fitted is not None:
                _store_fit(cursor, concept_id, fitted, now)
        finally:
            cursor.close()
    return concept_id


def store_fit(catalog, concept_id: int, fitted: tuple[np.ndarray, dict[str, Any]], now: str) -> None:
    with catalog.engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            _store_fit(cursor, concept_id, fitted, now)
        finally:
            cursor.close()


def remove_examples(catalog, concept_id: int, example_ids: Sequence[int] = (), image_ids: Sequence[int] = (),
                    fitted: tuple[np.ndarray, dict[str, Any]] | None = None, now: str = "") -> int:
    """Drop examples by their own ids or by their photos' ids, and store the refit made without
    them (same transaction); returns how many went."""
    gone = 0
    with catalog.engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            for example_id in example_ids:
                cursor.execute("DELETE FROM concept_examples WHERE concept_id = ? AND id = ?",
                               (int(concept_id), int(example_id)))
                gone += cursor.rowcount
            for image_id in image_ids:
                cursor.execute("DELETE FROM concept_examples WHERE concept_id = ? AND image_id = ?",
                               (int(concept_id), int(image_id)))
                gone += cursor.rowcount
            if fitted is not None:
                _store_fit(cursor, concept_id, fitted, now)
        finally:
            cursor.close()
    return gone


def delete_concept(catalog, concept_id: int) -> None:
    with catalog.engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute("DELETE FROM concept_examples WHERE concept_id = ?", (int(concept_id),))
            cursor.execute("DELETE FROM concepts WHERE id = ?", (int(concept_id),))
        finally:
            cursor.close()


def _store_fit(cursor, concept_id: int, fitted: tuple[np.ndarray, dict[str, Any]], now: str) -> None:
    vector, fit = fitted
    cursor.execute("UPDATE concepts SET vector = ?, fit = ?, version = version + 1, updated_at = ? WHERE id = ?",
                   (np.ascontiguousarray(vector, dtype=np.float32).tobytes(), json.dumps(fit), now, int(concept_id)))


def _concept(row) -> dict[str, Any]:
    return {"id": row[0], "name": row[1], "model_id": row[2], "dim": row[3],
            "vector": None if row[4] is None else np.frombuffer(row[4], dtype=np.float32),
            "fit": json.loads(row[5] or "{}"), "version": row[6], "created_at": row[7], "updated_at": row[8]}


def id_range(catalog) -> tuple[int, int]:
    """(smallest, largest) id of an indexed photo; (0, -1) when there is none."""
    with catalog.cursor() as cursor:
        low, high = cursor.execute("SELECT min(id), max(id) FROM images WHERE status = 'indexed'").fetchone()
    return (0, -1) if low is None else (int(low), int(high))
