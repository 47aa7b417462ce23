"""The SQL of catalog filters: one query over the `images` table for a `retriever.filters.Filters`
value (read by attribute: after, before, folders, cameras, near, within_km, formats, min_size,
tags, texts), whose parsing and validation are in retriever/filters.py.

Dates: an image's date is its EXIF DateTimeOriginal (local time as the camera wrote it), or the
file's mtime in local time when the photo has none, stored in `images.date_key` when the row is
written (migration 005_filter_columns), so that an index answers. GPS: the SQL selects a
latitude/longitude box around the circle (a superset); the caller keeps what is within the circle.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from retriever.store.reader import CAMERA_SQL, FORMAT_SQL, LONG_SIDE_SQL, SHORT_SIDE_SQL

EARTH_RADIUS_KM = 6371.0088

_IN_CHUNK = 500  # ids per IN (...)
def filter_rows(catalog, filters, *, limit: int | None = None, among: Sequence[int] | None = None) -> list[tuple]:
    """The rows of the catalog's items that pass the SQL conditions of `filters` (failed items
    included: they have no vector, so a search never returns them), in no particular order: (id,), or (id, gps_lat,
    gps_lon) when `filters.near` is set (the box around the circle, not yet the circle itself).

    `limit`: at most this many (the first found: the caller learns whether a filter is broad
    without reading every row it passes). `among`: only these ids (checking a search's
    candidates against a broad filter)."""
    # The DB-API cursor, not SQLAlchemy's result rows: a broad filter passes every image, and
    # row objects cost ~1 us each (200 ms at 200,000 images, against ~40 ms).
    with catalog.cursor() as cursor:
        query, params = filter_query(filters, cursor, by_id=among is not None)
        if among is None:
            if limit is not None:
                query += f" LIMIT {int(limit)}"
            return cursor.execute(query, params).fetchall()
        out: list[tuple] = []
        ids = [int(i) for i in among]
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join(f":among{i}" for i in range(len(chunk)))
            out.extend(cursor.execute(f"{query} AND images.id IN ({marks})",
                                      {**params, **{f"among{i}": v for i, v in enumerate(chunk)}}).fetchall())
        return out


def filter_ids(catalog, filters, *, limit: int) -> list[tuple]:
    """filter_rows(catalog, filters, limit=limit), but a filter on tags alone reads only the tags
    table's label index (the same ids: an item with a tag has a vector)."""
    only_tags = (filters.tags or filters.tags_any) and not (
        filters.after or filters.before or filters.folders or filters.cameras or filters.near is not None
        or filters.formats or filters.min_size or filters.no_tags or filters.texts)
    if not only_tags:
        return filter_rows(catalog, filters, limit=limit)
    labels = filters.tags[:1] or filters.tags_any  # with several --tag, the first: a superset
    marks = ", ".join("?" * len(labels))
    with catalog.cursor() as cursor:
        return cursor.execute(f"SELECT DISTINCT image_id FROM tags WHERE label IN ({marks}) LIMIT {int(limit)}",
                              list(labels)).fetchall()


def max_item_id(catalog) -> int:
    """The largest item id (0 for an empty catalog): ids run from 1 to it, with gaps."""
    with catalog.cursor() as cursor:
        return int(cursor.execute("SELECT max(id) FROM images").fetchone()[0] or 0)


def filter_query(filters, cursor=None, by_id: bool = False) -> tuple[str, dict[str, Any]]:
    """filter_rows' SQL (without its limit or id list) and parameters. `by_id`: for checking given
    ids (a tag condition is then one key look-up per id, not the list of every tagged item)."""
    columns = "images.id, images.gps_lat, images.gps_lon" if filters.near is not None else "images.id"
    where, params = where_clauses(filters, cursor, by_id)
    # Every condition is answered by a covering index (ids only, no table row read). So no
    # status condition: a failed item's id may pass, but it has no vector, so no search returns it.
    return f"SELECT {columns} FROM images WHERE " + (" AND ".join(f"({w})" for w in where) or "1"), params


def where_clauses(f, cursor=None, by_id: bool = False) -> tuple[list[str], dict[str, Any]]:
    """The conditions of `f` on `images` (to be AND-ed) and their named parameters. Each is
    answered from an index of migration 005_filter_columns (tests/test_scale.py reads the plans).
    `cursor`: to look up which cameras of the catalog match (without it, a scan matches them)."""
    from retriever.files import path_to_text

    where: list[str] = []
    params: dict[str, Any] = {}
    if f.after:
        where.append("images.date_key >= :after")
        params["after"] = f.after
    if f.before:
        where.append("images.date_key < :before")
        params["before"] = f.before
    if f.folders:
        from retriever.files import text_prefixes

        parts = []
        for i, folder in enumerate(f.folders):
            # a range of the path index (byte order, case-sensitive like file names): every path
            # that starts with "folder/" sorts from "folder/" up to, not including, "folder0"
            parts.append(f"images.path = :dir{i}")
            params[f"dir{i}"] = path_to_text(folder)
            for j, stored in enumerate(text_prefixes(folder.rstrip("/") + "/")):
                parts.append(f"(images.path >= :lo{i}_{j} AND images.path < :hi{i}_{j})")
                params[f"lo{i}_{j}"], params[f"hi{i}_{j}"] = stored, stored[:-1] + chr(ord(stored[-1]) + 1)
        where.append(" OR ".join(parts))
    if f.cameras:
        names = camera_values(cursor, f.cameras) if cursor is not None else None
        if names is None:  # too many distinct cameras to list: substring match on every row
            parts = []
            for i, camera in enumerate(f.cameras):
                parts.append(f"instr({CAMERA_SQL}, :cam{i}) > 0")
                params[f"cam{i}"] = camera.lower()
            where.append(" OR ".join(parts))
        else:
            marks = ", ".join(f":cam{i}" for i in range(len(names)))
            where.append(f"{CAMERA_SQL} IN ({marks})" if names else "0")
            params.update({f"cam{i}": name for i, name in enumerate(names)})
    if f.formats:
        names = []
        for i, fmt in enumerate(f.formats):
            if fmt == "VIDEO":
                names.append("images.frame_ms IS NOT NULL")
                continue
            names.append(f"{FORMAT_SQL} = :fmt{i}")
            params[f"fmt{i}"] = fmt
        where.append(" OR ".join(names))
    if f.min_size:
        long_side, short_side = f.min_size
        where.append(f"{LONG_SIDE_SQL} >= :long_side AND {SHORT_SIDE_SQL} >= :short_side")
        params["long_side"], params["short_side"] = long_side, short_side
    if f.near is not None:
        lat0, lon0 = f.near
        dlat = math.degrees(f.within_km / EARTH_RADIUS_KM)
        where.append("images.gps_lat BETWEEN :lat_lo AND :lat_hi")
        params["lat_lo"], params["lat_hi"] = lat0 - dlat, lat0 + dlat
        cos_lat = math.cos(math.radians(min(89.9, abs(lat0) + dlat)))
        dlon = math.degrees(f.within_km / (EARTH_RADIUS_KM * max(cos_lat, 1e-6)))
        if dlon < 180 and -180 <= lon0 - dlon and lon0 + dlon <= 180:
            where.append("images.gps_lon BETWEEN :lon_lo AND :lon_hi")
            params["lon_lo"], params["lon_hi"] = lon0 - dlon, lon0 + dlon
        else:  # the box crosses the antimeridian (or a pole): longitude is checked in Python only
            where.append("images.gps_lon IS NOT NULL")
    # Listing: the ids of a label's index range. Checking ids: a key look-up of (image_id, label).
    tagged = ("EXISTS (SELECT 1 FROM tags WHERE tags.image_id = images.id AND tags.label {})" if by_id
              else "images.id IN (SELECT tags.image_id FROM tags WHERE tags.label {})")
    for i, tag in enumerate(f.tags):
        where.append(tagged.format(f"= :tag{i}"))
        params[f"tag{i}"] = tag
    for name, labels, negate in (("tag_any", f.tags_any, ""), ("no_tag", f.no_tags, "NOT ")):
        if labels:
            marks = ", ".join(f":{name}{i}" for i in range(len(labels)))
            where.append(negate + tagged.format(f"IN ({marks})"))
            params.update({f"{name}{i}": label for i, label in enumerate(labels)})
    for i, needle in enumerate(f.texts):
        where.append(_text_condition(needle, f"text{i}", cursor, by_id))
        params[f"text{i}"] = f'"{needle}"' if _uses_trigrams(needle, cursor, by_id) else needle
    return where, params


def _uses_trigrams(needle: str, cursor, by_id: bool) -> bool:
    from retriever.store.ocr import has_trigram_index

    return not by_id and len(needle) >= 3 and cursor is not None and has_trigram_index(cursor)


def _text_condition(needle: str, name: str, cursor, by_id: bool) -> str:
    """The photo's squashed text (ocr.squashed) contains the squashed `needle`. Listing: the ids
    of the trigram index's phrase match (a needle of 3 characters or more), else a scan of the
    read texts; checking ids: one key look-up of the text per id."""
    if by_id:
        return f"EXISTS (SELECT 1 FROM ocr WHERE ocr.image_id = images.id AND instr(ocr.squashed, :{name}) > 0)"
    if _uses_trigrams(needle, cursor, by_id):
        return f"images.id IN (SELECT rowid FROM ocr_squash WHERE ocr_squash MATCH :{name})"
    return f"images.id IN (SELECT image_id FROM ocr WHERE instr(squashed, :{name}) > 0)"


MAX_CAMERAS = 5000  # distinct camera names listed from the index; beyond, cameras match by a scan


def camera_values(cursor, needles: Sequence[str]) -> list[str] | None:
    """The catalog's camera names ("make model", lower case) containing any of `needles`: the
    distinct names are read by skipping through ix_images_camera (one step per name, not per
    row). None when there are more than MAX_CAMERAS names."""
    step = f"SELECT {CAMERA_SQL} FROM images WHERE {CAMERA_SQL} > ? ORDER BY {CAMERA_SQL} LIMIT 1"
    lowered = [n.lower() for n in needles]
    found: list[str] = []
    last = ""
    for _ in range(MAX_CAMERAS + 1):
        row = cursor.execute(step, (last,)).fetchone()
        if row is None:
            return found
        last = row[0]
        if any(n in last for n in lowered):
            found.append(last)
    return None


def column_arrays(catalog, chunk: int = 65_536) -> dict[str, Any]:
    """What retriever.filter_columns keeps in memory, read without a Python object per value
    where it can: "ids" (the indexed items, sorted), "numbers" (float64, one row an id: date_key
    as seconds (NaN: none), is a video frame, width, height, gps_lat, gps_lon; NaN for NULL),
    "cameras" / "formats" (the distinct names, lower / upper case) and "camera_of" / "format_of"
    ((ids, code) of every item, read in the order of the camera and format indexes)."""
    import numpy as np

    def grouped(cursor, expression: str):
        names, counts = [], []
        for name, count in cursor.execute(f"SELECT {expression}, count(*) FROM images GROUP BY 1 ORDER BY 1"):
            names.append(name)
            counts.append(count)
        ids = cursor.execute(f"SELECT id FROM images ORDER BY {expression}").fetchall()
        codes = np.repeat(np.arange(len(names), dtype=np.int32), counts)
        return names, (np.array(ids, dtype=np.int64).reshape(-1), codes[: len(ids)])

    with catalog.cursor() as cursor:
        cursor.execute("BEGIN")  # one snapshot: a writer committing between the reads cannot shift the codes
        try:
            cameras, camera_of = grouped(cursor, CAMERA_SQL)
            formats, format_of = grouped(cursor, FORMAT_SQL)
            rows = cursor.execute(
                "SELECT id, CAST(strftime('%s', date_key) AS INTEGER), frame_ms IS NOT NULL, width, height, gps_lat, "
                "gps_lon FROM images WHERE status = 'indexed' ORDER BY id")
            parts = []
            while True:
                batch = rows.fetchmany(chunk)
                if not batch:
                    break
                parts.append(np.array(batch, dtype=np.float64))
        finally:
            cursor.execute("ROLLBACK")
    numbers = np.concatenate(parts) if parts else np.zeros((0, 7))
    return {"ids": numbers[:, 0].astype(np.int64), "numbers": numbers[:, 1:], "cameras": cameras,
            "camera_of": camera_of, "formats": formats, "format_of": format_of}


def tagged_ids(catalog, label: str) -> "Any":
    """The ids of the items tagged `label` (its index range of the tags table), as int64."""
    import numpy as np

    with catalog.cursor() as cursor:
        rows = cursor.execute("SELECT image_id FROM tags WHERE label = ?", (label,)).fetchall()
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
