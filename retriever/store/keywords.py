"""The SQL of keyword search: FTS5 queries over the `keywords` table (catalog migration
003_captions: one row per catalog item, rowid = the item's id, columns `name` and `caption`).
What a query's words are, and the fusion with the vector ranking, are in retriever/keywords.py.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Sequence


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
    keep: Callable[[Sequence[int]], Any] | None = None,
) -> list[tuple[int, float]]:
    """-> [(image_id, score)], best first, at most `limit`: indexed items whose row matches the FTS5
    expression `match`, score = -BM25 with the name column weighing `name_weight` (the caption
    1.0). `allowed` (a set): only these ids; `keep(ids)`: only those of a batch of ids it returns;
    `excluded` (a set): never these. Rows are streamed: when filtering, only read until `limit`
    pass."""
    filtered = allowed is not None or keep is not None or bool(excluded)
    sql = (
        "SELECT k.rowid, bm25(keywords, :name_weight, 1.0) AS rank FROM keywords k "
        "JOIN images i ON i.id = k.rowid "
        "WHERE keywords MATCH :match AND i.status = 'indexed' ORDER BY rank"
        + ("" if filtered else " LIMIT :limit")
    )
    found: list[tuple[int, float]] = []
    with catalog.cursor() as cursor:
        rows = cursor.execute(sql, {"match": match, "name_weight": name_weight, "limit": limit})
        while len(found) < limit:
            batch = [(int(i), float(r)) for i, r in rows.fetchmany(max(limit, 64))]
            if not batch:
                break
            batch = [(i, r) for i, r in batch if (allowed is None or i in allowed) and i not in excluded]
            if keep is not None and batch:
                passing = {int(i) for i in keep([i for i, _ in batch])}
                batch = [(i, r) for i, r in batch if i in passing]
            found.extend((i, -r) for i, r in batch)
    return found[:limit]
