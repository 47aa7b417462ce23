"""The catalog reads of `retriever duplicates` (retriever/duplicates.py): which indexed files share
a fingerprint, and which items take part in the near-duplicate range search. Each generator holds
one connection while it is read.
"""

from __future__ import annotations

from typing import Any, Iterator

from sqlalchemy import func, select

from retriever.store.schema import STATUS_INDEXED, images, vectors


def count_files(catalog) -> int:
    """Indexed files (a video counts once)."""
    with catalog.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count(func.distinct(images.c.path))).where(images.c.status == STATUS_INDEXED)
            ).scalar_one()
        )


def shared_fingerprint_rows(catalog) -> Iterator[Any]:
    """The image rows (mappings of every column) of the indexed items whose fingerprint more than
    one indexed file has, by id (a video: each of its frames)."""
    shared = (
        select(images.c.fingerprint)
        .where(images.c.status == STATUS_INDEXED, images.c.fingerprint.is_not(None))
        .group_by(images.c.fingerprint)
        .having(func.count(func.distinct(images.c.path)) > 1)
    )
    with catalog.engine.connect() as conn:
        yield from conn.execute(
            select(images)
            .where(images.c.status == STATUS_INDEXED, images.c.fingerprint.in_(shared))
            .order_by(images.c.id)
        ).mappings()


def vector_item_rows(catalog) -> Iterator[tuple[int, str, int | None, str | None]]:
    """(id, path, frame_ms, fingerprint) of the indexed items that have a stored vector, by id."""
    cols = (images.c.id, images.c.path, images.c.frame_ms, images.c.fingerprint)
    with catalog.engine.connect() as conn:
        yield from conn.execute(
            select(*cols)
            .join(vectors, vectors.c.image_id == images.c.id)
            .where(images.c.status == STATUS_INDEXED)
            .order_by(images.c.id)
        )
