"""The SQL of tag upkeep beyond catalog.py's basics: removed tags (`retriever untag`), per-label
statistics for `retriever tags --json`, and tags with their scores for search hits.

A removal is a row of `tag_rejections` (migration 004_tag_upkeep): the tag is deleted and
Catalog.write_tags never writes that (image, label) again, so it survives re-tagging, a new
label set and a new threshold. It goes with the image (a trigger)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, select, text

from retriever.store.schema import tag_rejections, tag_scored, tags


def reject_tag(catalog, image_ids: Sequence[int], label: str) -> int:
    """Remove `label` from the items and remember it; returns how many tags were removed."""
    with catalog.engine.begin() as conn:
        removed = 0
        for image_id in image_ids:
            removed += conn.execute(
                delete(tags).where(tags.c.image_id == int(image_id), tags.c.label == label)
            ).rowcount
            conn.execute(
                text("INSERT OR IGNORE INTO tag_rejections (image_id, label, created_at) "
                     "VALUES (:image_id, :label, :created_at)"),
                {"image_id": int(image_id), "label": label, "created_at": _utcnow()},
            )
    return int(removed)


def scored_ids(catalog, ids: Sequence[int]) -> set[int]:
    """The items among `ids` scored under the stored label set (with or without tags)."""
    ids = [int(i) for i in ids]
    with catalog.engine.connect() as conn:
        return {int(i) for i in conn.execute(select(tag_scored.c.image_id).where(tag_scored.c.image_id.in_(ids))).scalars()}


def rejections(catalog) -> list[tuple[int, str]]:
    """Every removed (image_id, label), by image then label."""
    with catalog.engine.connect() as conn:
        rows = conn.execute(select(tag_rejections.c.image_id, tag_rejections.c.label)
                            .order_by(tag_rejections.c.image_id, tag_rejections.c.label))
        return [(int(i), label) for i, label in rows]


def label_stats(catalog) -> dict[str, dict[str, Any]]:
    """{label: {"images", "mean_score", "max_score"}}, most used first: counts and score sums from
    tag_label_stats (kept by triggers), each label's best score one seek of ix_tags_label_score."""
    with catalog.cursor() as cursor:
        rows = cursor.execute("SELECT label, n, score_sum FROM tag_label_stats ORDER BY n DESC, label").fetchall()
        out = {}
        for label, count, total in rows:
            top = cursor.execute("SELECT max(score) FROM tags WHERE label = ?", (label,)).fetchone()[0]
            out[label] = {"images": int(count), "mean_score": round(float(total) / max(int(count), 1), 4),
                          "max_score": round(float(top), 4)}
        return out


def scored_tags_for(catalog, ids: Sequence[int]) -> dict[int, list[tuple[str, float]]]:
    """Each item's tags as (label, score), best first; items without tags are absent."""
    out: dict[int, list[tuple[str, float]]] = {}
    ids = [int(i) for i in ids]
    with catalog.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            rows = conn.execute(
                select(tags.c.image_id, tags.c.label, tags.c.score)
                .where(tags.c.image_id.in_(ids[start:start + 500]))
                .order_by(tags.c.image_id, tags.c.score.desc(), tags.c.label)
            )
            for image_id, label, score in rows:
                out.setdefault(int(image_id), []).append((label, float(score)))
    return out


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
