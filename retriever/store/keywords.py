"""The SQL of keyword search: FTS5 queries over the `keywords` table (catalog migration
003_captions: one row per catalog item, rowid = the item's id, columns `name` and `caption`).
What a query's words are, and the fusion with the vector ranking, are in retriever/keywords.py.
"""

from __future__ import annotations

from typing import Collection


def has_keyword_index(catalog) -> bool:
    """Whether the catalog has the FTS table (not when its SQLite was built without FTS5)."""
    with catalog.cursor() as cursor:
        return cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keywords'").fetchone() \
            is not None


def keyword_matches(
    catalog,
    match: str,
    limit: int,
    *,
    name_weight: float,
    allowed: Collection[int] | None = None,
    excluded: Collection[int] = (),
) -> list[tuple[int, float]]:
    """-> [(image_id, score)], best first, at most `limit`: indexed items whose row matches the FTS5
    expression `match`, score = -BM25 with the name column weighing `name_weight` (the caption
    1.0). `allowed` (a set): only these ids; `excluded` (a set): never these. Rows are streamed:
    when filtering, only read until `limit` pass."""
    filtered = allowed is not None or bool(excluded)
    sql = (
        "SELECT k.rowid, bm25(keywords, :name_weight, 1.0) AS rank FROM keywords k "
        "JOIN images i ON i.id = k.rowid "
        "WHERE keywords MATCH :match AND i.status = 'indexed' ORDER BY rank"
        + ("" if filtered else " LIMIT :limit")
    )
    found: list[tuple[int, float]] = []
    with catalog.cursor() as cursor:
        rows = cursor.execute(sql, {"match": match, "name_weight": name_weight, "limit": limit})
        for image_id, rank in rows:
            if (allowed is not None and int(image_id) not in allowed) or int(image_id) in excluded:
                continue
            found.append((int(image_id), -float(rank)))
            if len(found) >= limit:
                break
    return found
