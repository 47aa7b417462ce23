"""The SQL of VLM captions: the `captions` table (schema.py; catalog migration 003_captions), read
and written here for the caption run of retriever/vlm/captions.py.

A caption is written only if its image still has the fingerprint it was made from (one
conditional statement), so an indexing run going on at the same time can never leave a stale or
orphaned caption; SQLite triggers drop a caption when its image is edited or removed.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from sqlalchemy import and_, func, or_, select, text

from retriever.store.catalog import utcnow
from retriever.store.schema import STATUS_INDEXED, captions, images


def pending_rows(catalog, model: str, *, replace: bool = False, frames: bool = False,
                 limit: int | None = None) -> list[tuple[int, str, int | None, str | None]]:
    """(id, path, frame_ms, fingerprint) of the indexed items that need a caption, by id: none yet,
    or one made from other content (kept only if a trigger was bypassed), or (replace) one made
    by another model. Still images only, unless `frames`."""
    c, i = captions, images
    needs = [c.c.image_id.is_(None), c.c.fingerprint.is_not(i.c.fingerprint)]
    if replace:
        needs.append(c.c.model != model)
    query = (
        select(i.c.id, i.c.path, i.c.frame_ms, i.c.fingerprint)
        .select_from(i.outerjoin(c, c.c.image_id == i.c.id))
        .where(i.c.status == STATUS_INDEXED, or_(*needs))
        .order_by(i.c.id)
    )
    if not frames:
        query = query.where(i.c.frame_ms.is_(None))
    if limit is not None:
        query = query.limit(limit)
    with catalog.engine.connect() as conn:
        return [(int(r.id), r.path, r.frame_ms, r.fingerprint) for r in conn.execute(query)]


_WRITE = text(
    "INSERT INTO captions (image_id, caption, model, fingerprint, created_at) "
    "SELECT :image_id, :caption, :model, :fingerprint, :created_at "
    "WHERE EXISTS (SELECT 1 FROM images WHERE id = :image_id AND fingerprint IS :fingerprint) "
    "ON CONFLICT (image_id) DO UPDATE SET caption = excluded.caption, model = excluded.model, "
    "fingerprint = excluded.fingerprint, created_at = excluded.created_at"
)


def write_captions(catalog, rows: Sequence[tuple[int, str, str | None]], model: str) -> int:
    """Store (image_id, caption, fingerprint) rows in one transaction. A row whose image is gone
    or no longer has that fingerprint is not written. Returns how many were written."""
    now = utcnow()
    written = 0
    with catalog.engine.begin() as conn:
        for image_id, caption, fingerprint in rows:
            written += conn.execute(_WRITE, {"image_id": int(image_id), "caption": caption, "model": model,
                                             "fingerprint": fingerprint, "created_at": now}).rowcount
    return written


def captions_for(catalog, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """image_id -> {"caption", "model", "created_at"} for the ids that have one."""
    out: dict[int, dict[str, Any]] = {}
    ids = [int(i) for i in ids]
    with catalog.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            rows = conn.execute(select(captions).where(captions.c.image_id.in_(ids[start:start + 500])))
            for r in rows.mappings():
                out[int(r["image_id"])] = {"caption": r["caption"], "model": r["model"], "created_at": r["created_at"]}
    return out


def caption_rows(catalog) -> Iterator[tuple[int, str, int | None, str, str, str]]:
    """Every stored caption with its item: (id, path, frame_ms, caption, model, created_at), by
    path then time in the video (streamed)."""
    query = (select(images.c.id, images.c.path, images.c.frame_ms, captions.c.caption, captions.c.model,
                    captions.c.created_at)
             .select_from(images.join(captions, captions.c.image_id == images.c.id))
             .order_by(images.c.path, images.c.frame_ms))
    with catalog.engine.connect() as conn:
        for r in conn.execute(query).mappings():
            yield int(r["id"]), r["path"], r["frame_ms"], r["caption"], r["model"], r["created_at"]


def caption_counts(catalog, frames: bool = False) -> dict[str, int]:
    """{"items": indexed items a run would caption, "with_caption": of them, those with one}."""
    i, c = images, captions
    where = [i.c.status == STATUS_INDEXED] + ([] if frames else [i.c.frame_ms.is_(None)])
    with catalog.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(i).where(*where)).scalar_one()
        done = conn.execute(
            select(func.count()).select_from(i.join(c, and_(c.c.image_id == i.c.id))).where(*where)
        ).scalar_one()
    return {"items": int(total), "with_caption": int(done)}
