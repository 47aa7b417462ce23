"""Filters on the catalog: which images a query may return.

A `Filters` value is built from the command line (or an API call), turned into one SQL query over
the catalog's `images` table (written in retriever/store/filters.py), and the ids it selects are
handed to the vector search, which returns the best k among them (see `Searcher`). Only
`min_score` acts on the ranked hits.

Dates: an image's date is its EXIF DateTimeOriginal (local time as the camera wrote it), or the
file's mtime in this machine's local time when the photo has none. `after` is inclusive, `before`
exclusive: `--after 2023 --before 2024` is the year 2023.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Sequence

from retriever.errors import RetrieverError
from retriever.store.filters import (
    EARTH_RADIUS_KM,
    filter_ids,
    filter_rows,
    max_item_id,
)

DEFAULT_WITHIN_KM = 1.0

# What users type -> what the catalog stores: Pillow's format names for images, the extension for
# camera RAW (CR2, NEF, ...), PyAV's container name for video frames ("mov" for .mp4 and .mov).
# "video" matches every video frame.
FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF", "MP4": "MOV", "M4V": "MOV", "3GP": "MOV",
                  "MKV": "MATROSKA", "WEBM": "MATROSKA", "VIDEOS": "VIDEO"}


class FilterError(RetrieverError):
    """A filter value that cannot be understood (a date, a size, coordinates)."""


@dataclass(frozen=True)
class Filters:
    after: str | None = None  # ISO date-time, inclusive lower bound on the date taken
    before: str | None = None  # ISO date-time, exclusive upper bound
    folders: tuple[str, ...] = ()  # absolute folders; an image under any of them passes
    cameras: tuple[str, ...] = ()  # case-insensitive substrings of "make model"; any passes
    near: tuple[float, float] | None = None  # (lat, lon) in degrees
    within_km: float = DEFAULT_WITHIN_KM
    formats: tuple[str, ...] = ()  # Pillow format names (JPEG, PNG, HEIF, ...); any passes
    min_size: tuple[int, int] | None = None  # (long side, short side) at least, either orientation
    tags: tuple[str, ...] = ()  # normalised labels; every one must be present
    tags_any: tuple[str, ...] = ()  # normalised labels; at least one must be present
    no_tags: tuple[str, ...] = ()  # normalised labels; none may be present
    texts: tuple[str, ...] = ()  # squashed text (retriever.ocr.squash); the photo's text contains every one
    concepts: tuple[str, ...] = ()  # concept names (retriever.concepts); every one must say yes
    min_score: float | None = None  # on the ranked hits, not in SQL
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # for display only

    def restricts(self) -> bool:
        """True when some catalog condition is set (min_score alone restricts nothing here)."""
        return bool(self.after or self.before or self.folders or self.cameras or self.near is not None
                    or self.formats or self.min_size or self.tags or self.tags_any or self.no_tags or self.texts
                    or self.concepts)

    def describe(self) -> list[str]:
        """Human-readable conditions, for messages and the HTML page."""
        out = []
        if self.after:
            out.append(f"taken on or after {self.after}")
        if self.before:
            out.append(f"taken before {self.before}")
        if self.folders:
            out.append("in " + " or ".join(self.folders))
        if self.cameras:
            out.append("camera " + " or ".join(repr(c) for c in self.cameras))
        if self.near is not None:
            out.append(f"within {self.within_km:g} km of {self.near[0]:.5f},{self.near[1]:.5f}")
        if self.formats:
            out.append("format " + " or ".join(self.formats))
        if self.min_size:
            out.append(f"at least {self.min_size[0]}x{self.min_size[1]}")
        if self.tags:
            out.append("tagged " + " and ".join(self.tags))
        if self.concepts:
            out.append("concept " + " and ".join(self.concepts))
        if self.tags_any:
            out.append("tagged " + " or ".join(self.tags_any))
        if self.no_tags:
            out.append("not tagged " + " or ".join(self.no_tags))
        for shown in self.extra.get("texts", self.texts):
            out.append(f"text contains {shown!r}")
        if self.min_score is not None:
            out.append(f"score >= {self.min_score:g}")
        return out


# -- parsing command-line values --------------------------------------------------------------------


_DATE_FORMATS = (
    ("%Y-%m-%dT%H:%M:%S", "second"), ("%Y-%m-%d %H:%M:%S", "second"), ("%Y-%m-%dT%H:%M", "minute"),
    ("%Y-%m-%d %H:%M", "minute"), ("%Y-%m-%d", "day"), ("%Y:%m:%d", "day"), ("%Y-%m", "month"), ("%Y", "year"),
)
_RELATIVE = re.compile(r"^(\d+)\s*(d|day|days|w|week|weeks|m|month|months|y|year|years)(\s+ago)?$")


def parse_date(text: str, *, today: date | None = None) -> str:
    """'2023', '2023-06', '2023-06-15', '2023-06-15T12:30', 'today', 'yesterday', '30d' (30 days
    ago), '2w', '6m', '1y' -> the ISO start of that period ('2023-06-01T00:00:00' for '2023-06')."""
    value = text.strip().lower()
    today = today or date.today()
    if value in ("today", "now"):
        return _iso(today)
    if value == "yesterday":
        return _iso(today - timedelta(days=1))
    match = _RELATIVE.match(value)
    if match:
        n, unit = int(match.group(1)), match.group(2)[0]
        if unit == "d":
            return _iso(today - timedelta(days=n))
        if unit == "w":
            return _iso(today - timedelta(weeks=n))
        if unit == "m":
            months = today.year * 12 + today.month - 1 - n
            year, month = divmod(months, 12)
            return _iso(date(year, month + 1, min(today.day, 28)))
        return _iso(date(today.year - n, today.month, min(today.day, 28)))
    for fmt, _ in _DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).isoformat()
        except ValueError:
            continue
    raise FilterError(
        f"cannot read the date {text!r}: use YYYY, YYYY-MM, YYYY-MM-DD, YYYY-MM-DDTHH:MM, today, yesterday, "
        "or an age like 30d, 2w, 6m, 1y"
    )


def _iso(day: date) -> str:
    return datetime(day.year, day.month, day.day).isoformat()


def parse_near(text: str) -> tuple[float, float]:
    """'48.8584,2.2945' -> (48.8584, 2.2945)."""
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    try:
        lat, lon = (float(p) for p in parts)
    except ValueError:
        raise FilterError(f"--near takes LAT,LON in decimal degrees (e.g. 48.8584,2.2945), not {text!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or math.isnan(lat) or math.isnan(lon):
        raise FilterError(f"--near {text!r}: latitude must be within ±90 and longitude within ±180")
    return lat, lon


def parse_min_size(text: str) -> tuple[int, int]:
    """'1024' -> both sides at least 1024; '1920x1080' -> long side >= 1920 and short side >= 1080."""
    match = re.fullmatch(r"\s*([0-9]{1,9})\s*(?:[x×X*,]\s*([0-9]{1,9})\s*)?", text)
    sides = [int(g) for g in match.groups() if g is not None] if match else []
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or min(sides) < 1:
        raise FilterError(f"--min-size takes N or WxH in pixels (e.g. 1024 or 1920x1080), not {text!r}")
    return max(sides), min(sides)


def normalize_format(text: str) -> str:
    name = text.strip().lstrip(".").upper()
    return FORMAT_ALIASES.get(name, name)


def build(
    *,
    after: str | None = None,
    before: str | None = None,
    folders: Sequence[str] = (),
    cameras: Sequence[str] = (),
    near: str | None = None,
    within_km: float | None = None,
    formats: Sequence[str] = (),
    min_size: str | None = None,
    tags: Sequence[str] = (),
    tags_any: Sequence[str] = (),
    no_tags: Sequence[str] = (),
    texts: Sequence[str] = (),
    concepts: Sequence[str] = (),
    min_score: float | None = None,
) -> Filters:
    """Filters from command-line strings; raises FilterError with a one-line reason."""
    from retriever.files import absolute

    if within_km is not None and near is None:
        raise FilterError("--within needs --near LAT,LON")
    if within_km is not None and not (within_km > 0 and math.isfinite(within_km)):
        raise FilterError("--within takes a distance in km greater than 0")
    if min_score is not None and not -1.0 <= min_score <= 1.0:  # also NaN
        raise FilterError(f"--min-score takes a cosine similarity between -1 and 1, not {min_score}")
    for name, value in (("--after", after), ("--before", before), ("--near", near), ("--min-size", min_size),
                        *(("--in", f) for f in folders), *(("--format", f) for f in formats)):
        if value is not None and not str(value).strip():
            raise FilterError(f"{name} was given an empty value")
    after_iso = parse_date(after) if after else None
    before_iso = parse_date(before) if before else None
    if after_iso and before_iso and after_iso >= before_iso:
        raise FilterError(f"--after {after} is not before --before {before}: no date can match")
    tag_names, any_names, not_names = _labels(tags), _labels(tags_any), _labels(no_tags)
    both = set(tag_names) & set(not_names)
    if both:
        raise FilterError(f"--tag and --no-tag both name {min(both)!r}: no photo can match")
    needles = _needles(texts)
    return Filters(
        after=after_iso,
        before=before_iso,
        folders=tuple(dict.fromkeys(absolute(f).rstrip("/") or "/" for f in folders)),
        cameras=tuple(c.strip() for c in cameras if c.strip()),
        near=parse_near(near) if near else None,
        within_km=within_km if within_km is not None else DEFAULT_WITHIN_KM,
        formats=tuple(dict.fromkeys(normalize_format(f) for f in formats)),
        min_size=parse_min_size(min_size) if min_size else None,
        tags=tag_names,
        tags_any=any_names,
        no_tags=not_names,
        texts=tuple(needles),
        concepts=_concept_names(concepts),
        min_score=min_score,
        extra={"texts": tuple(needles.values())} if needles else {},
    )


def _needles(values: Sequence[str] | str) -> dict[str, str]:
    """--text values -> {squashed needle: the value as given}, in order. A value without a letter
    or digit can match nothing: FilterError."""
    from retriever.ocr import squash

    if isinstance(values, str):
        values = [values]
    out: dict[str, str] = {}
    for value in values or ():
        needle = squash(str(value))
        if not needle:
            raise FilterError(f"--text {value!r} has no letter or digit: text is matched on letters and digits only")
        out.setdefault(needle, str(value).strip())
    return out


def _concept_names(values: Sequence[str] | str) -> tuple[str, ...]:
    """--concept values -> checked names, in order (each value may list several, comma-separated)."""
    if not values:
        return ()
    from retriever.concepts import ConceptError, check_name

    if isinstance(values, str):
        values = [values]
    names = [item for value in values for item in str(value).split(",") if item.strip()]
    try:
        return tuple(dict.fromkeys(check_name(name) for name in names))
    except ConceptError as exc:
        raise FilterError(f"--concept: {exc}") from None


def _labels(values: Sequence[str] | str) -> tuple[str, ...]:
    """Tag filter values -> normalised labels, each value comma-separated ('dog,cat'), in order."""
    if not values:
        return ()
    from retriever.tags import normalize_label

    if isinstance(values, str):
        values = [values]
    labels = (normalize_label(item) for value in values for item in str(value).split(","))
    return tuple(dict.fromkeys(label for label in labels if label))


# -- the catalog side ------------------------------------------------------------------------------


def matching_ids(catalog, filters: Filters) -> "Any":
    """Sorted int64 array of the ids of indexed items (each has a vector: rows and vectors are
    committed together) that pass the catalog conditions of `filters` (the SQL is in
    retriever/store/filters.py)."""
    import numpy as np

    return np.sort(_passing(filter_rows(catalog, filters), filters))


# A filter that passes more items than this is "broad": a search does not list its ids (reading
# 500,000 ids costs ~100 ms) but checks its candidates against it (see FilterMatch).
BROAD_AT = 5_000


@dataclass
class FilterMatch:
    """What a filter lets through. `ids`: the passing ids (sorted int64) when the filter is
    selective (at most BROAD_AT of them); None when it is broad, and then `keep` asks the
    catalog about given ids only."""

    catalog: Any
    filters: Filters
    ids: "Any"

    @property
    def broad(self) -> bool:
        return self.ids is None

    def keep(self, ids: Sequence[int]) -> "Any":
        """The ids among `ids` that pass, in their given order (int64 array)."""
        import numpy as np

        ids = np.asarray(ids, dtype=np.int64)
        if self.ids is not None:
            return ids[np.isin(ids, self.ids)]
        passing = _passing(filter_rows(self.catalog, self.filters, among=[int(i) for i in ids]), self.filters)
        return ids[np.isin(ids, passing)]

    def share(self, sample: int = 128, seed: int = 0) -> float:
        """About which share of the catalog's items pass: `sample` random ids checked (for a broad
        filter, ~0.7 ms at 1 M items; exact for a listed one)."""
        import numpy as np

        top = max_item_id(self.catalog)
        if self.ids is not None:
            return len(self.ids) / max(1, top)
        if top == 0:
            return 0.0
        ids = np.random.default_rng(seed).integers(1, top + 1, sample)
        return len(self.keep(ids)) / sample

    def all_ids(self) -> "Any":
        """Every passing id, sorted (reads them all for a broad filter)."""
        return self.ids if self.ids is not None else matching_ids(self.catalog, self.filters)


def match_filter(catalog, filters: Filters, broad_at: int | None = None) -> FilterMatch:
    """The filter's FilterMatch. Each condition alone is read from its own index, stopping after
    `broad_at` (BROAD_AT) + 1 rows; the first that passes at most `broad_at` items gives the
    candidates, which the whole filter then checks by id. When every condition alone is broad,
    the filter counts as broad (even if all of them together pass few items: a search then
    checks deeper candidate lists, see search.search_verified)."""
    import numpy as np

    limit = BROAD_AT if broad_at is None else broad_at
    parts = _parts(filters)
    for part in parts:
        found = filter_ids(catalog, part, limit=limit + 1)
        if len(found) > limit:
            continue
        if len(parts) > 1 or len(filters.tags) > 1 or len(filters.texts) > 1:  # candidates of one, checked by all
            found = filter_rows(catalog, filters, among=sorted({r[0] for r in found}))
        return FilterMatch(catalog, filters, np.unique(_passing(found, filters)))
    return FilterMatch(catalog, filters, None)


def _parts(f: Filters) -> list[Filters]:
    """One Filters per kind of condition set in `f`, the usually most selective first."""
    out = []
    for fields in ({"texts": f.texts}, {"tags": f.tags}, {"tags_any": f.tags_any}, {"near": f.near, "within_km": f.within_km},
                   {"folders": f.folders}, {"after": f.after, "before": f.before}, {"cameras": f.cameras},
                   {"min_size": f.min_size}, {"formats": f.formats}, {"no_tags": f.no_tags}):
        part = replace(Filters(), **fields)
        if part.restricts():
            out.append(part)
    return out


def _passing(rows: list[tuple], filters: Filters) -> "Any":
    """The ids of filter_rows' rows (unsorted); with `near`, those within the circle."""
    import numpy as np

    if filters.near is None:
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    lat0, lon0 = filters.near  # the SQL box is a superset: keep what is within the circle
    return np.array([r[0] for r in rows if haversine_km(lat0, lon0, r[1], r[2]) <= filters.within_km],
                    dtype=np.int64)


def haversine_km(lat1: float, lon1: float, lat2: float | None, lon2: float | None) -> float:
    if lat2 is None or lon2 is None:
        return math.inf
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def with_min_score(filters: Filters, min_score: float | None) -> Filters:
    return replace(filters, min_score=min_score)
