"""The SQL that `retriever adapt` (retriever/adapter.py) reads its labels with: each tag label
with its photos, how often the user removed each tag, captions, every indexed photo's path (for
folder names as labels), and a seeded random sample of stored vectors. Read only: the adapter
lives in files beside the catalog, not in it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def tag_photo_ids(catalog) -> dict[str, list[int]]:
    """{label: the ids of the photos tagged with it, by id}. Tags the user removed (`untag`)
    are gone from the tags table, so they are not among them."""
    out: dict[str, list[int]] = {}
    with catalog.cursor() as cursor:
        for label, image_id in cursor.execute("SELECT label, image_id FROM tags ORDER BY label, image_id"):
            out.setdefault(label, []).append(int(image_id))
    return out


def rejection_counts(catalog) -> dict[str, int]:
    """{label: photos it was removed from with `retriever untag`}."""
    with catalog.cursor() as cursor:
        if cursor.execute("SELECT 1 FROM sqlite_master WHERE name = 'tag_rejections'").fetchone() is None:
            return {}
        return {label: int(n) for label, n in
                cursor.execute("SELECT label, count(*) FROM tag_rejections GROUP BY label").fetchall()}


def caption_texts(catalog, limit: int) -> list[tuple[int, str]]:
    """(image_id, caption) of up to `limit` captioned photos that hold a vector, the newest ids
    first (a long caption run is cut, not sampled)."""
    with catalog.cursor() as cursor:
        if cursor.execute("SELECT 1 FROM sqlite_master WHERE name = 'captions'").fetchone() is None:
            return []
        rows = cursor.execute(
            "SELECT c.image_id, c.caption FROM captions c JOIN vectors v ON v.image_id = c.image_id "
            "ORDER BY c.image_id DESC LIMIT ?", (int(limit),)).fetchall()
    return [(int(i), str(text)) for i, text in rows]


def indexed_paths(catalog) -> Iterator[tuple[int, str]]:
    """(id, path) of every item that holds a vector, by id (a video's frames each)."""
    last = -1
    while True:
        with catalog.cursor() as cursor:
            rows = cursor.execute(
                "SELECT i.id, i.path FROM images i JOIN vectors v ON v.image_id = i.id WHERE i.id > ? "
                "ORDER BY i.id LIMIT 20000", (last,)).fetchall()
        if not rows:
            return
        for image_id, path in rows:
            yield int(image_id), path
        last = int(rows[-1][0])


def vector_count(catalog) -> int:
    with catalog.cursor() as cursor:
        return int(cursor.execute("SELECT count(*) FROM vectors").fetchone()[0])


def sample_vectors(catalog, dim: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (m,), vectors float32 (m, dim)): up to `size` stored vectors of random photos
    (seeded: the same draw from the same catalog), all of them when there are no more. Ids are
    drawn from the id range, so no scan of the whole catalog."""
    with catalog.cursor() as cursor:
        low, high = cursor.execute("SELECT min(image_id), max(image_id) FROM vectors").fetchone()
    if low is None:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    span = int(high) - int(low) + 1
    rng = np.random.default_rng(seed)
    ids_found: list[int] = []
    seen: set[int] = set()
    vectors_found: list[np.ndarray] = []
    order = rng.permutation(span) + int(low) if span <= 4 * size else None
    drawn = 0
    while len(ids_found) < size and drawn < span:
        if order is not None:
            chunk = order[drawn:drawn + 2000]
        else:  # a large range: draw with replacement, duplicates dropped below
            chunk = rng.integers(int(low), int(high) + 1, size=2000)
        drawn += len(chunk)
        stored = catalog.vectors_for([int(i) for i in chunk if int(i) not in seen], dim)
        for image_id in chunk:
            image_id = int(image_id)
            if image_id in stored and image_id not in seen:  # a repeated draw counts once
                seen.add(image_id)
                ids_found.append(image_id)
                vectors_found.append(stored[image_id])
    ids = np.asarray(ids_found[:size], dtype=np.int64)
    vectors = np.asarray(vectors_found[:size], dtype=np.float32).reshape(-1, dim)
    return ids, vectors
