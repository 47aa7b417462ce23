"""Filters answered from columns in memory, for a warm search process (the daemon, a server).

SQLite answers each filter condition from its own index (retriever/store/filters.py), which is
fast for one selective condition but not for conditions that are each broad and together
selective ("2021, a Pixel, HEIF": each passes 5-80 % of a million photos, all three 0.06 %), nor
for checking thousands of candidates against a broad filter: 16-208 ms at 1 M photos
(benchmarks/scale.py). The plain comparisons (date, camera, format, size, GPS circle) are kept
here as numpy columns of the indexed items instead, one SQL read per catalog generation, and the
tags as one boolean column per label, read on first use; any combination of them costs a few
vectorised passes over the columns (about 1-5 ms at 1 M).

Only filters made of those conditions alone are answered here (`covers`); folders, text in photos
and concepts go to SQL as before. The semantics are SQL's own: the same date_key, camera names
("make model", lower case, matched by substring), format names, sides, circle and tags.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Sequence

import numpy as np

from retriever import filters as _filters
from retriever.filters import EARTH_RADIUS_KM, Filters

MIN_ROWS = 20_000  # below, SQLite answers every filter in about a millisecond: no columns kept
READ_INTERVAL_S = 30.0  # a warm process starts reading a catalog's columns at most this often (see may_start_reading)
LIST_SHARE = 0.05  # a match passing at most this share of the photos is listed (see ColumnMatch)
SAMPLE = 1024  # rows on which the conditions' pass rates are measured, to order them


_last_read: dict[str, float] = {}  # catalog path -> when this process last started reading its columns
_last_read_lock = threading.Lock()


def may_start_reading(catalog_path) -> bool:
    """Whether a searcher may start reading the columns of this catalog now: not if one started
    less than READ_INTERVAL_S ago. While an indexer commits, each checkpoint is a new generation
    (a new searcher in a warm process); without this, filtered searches would read a million rows
    again every few seconds. Until a searcher has its columns, SQL answers."""
    now = time.monotonic()
    key = str(catalog_path)
    with _last_read_lock:
        last = _last_read.get(key)
        if last is not None and now - last < READ_INTERVAL_S:
            return False
        _last_read[key] = now
        return True


class FilterColumns:
    """The columns of one catalog generation's indexed items, sorted by id."""

    def __init__(self, arrays: dict[str, Any], catalog=None):
        """arrays: retriever.store.filters.column_arrays's."""
        self._catalog = catalog  # for the tags, read per label on first use
        self._labels: dict[str, np.ndarray] = {}
        self.ids = arrays["ids"]
        numbers = arrays["numbers"]
        n = len(self.ids)
        seconds = numbers[:, 0]
        self.dates = np.where(np.isnan(seconds), _MISSING, np.nan_to_num(seconds)).astype(np.int64)
        self.frame = numbers[:, 1] > 0
        self.long_side = np.nan_to_num(np.maximum(numbers[:, 2], numbers[:, 3]), nan=-1).astype(np.int64)
        self.short_side = np.nan_to_num(np.minimum(numbers[:, 2], numbers[:, 3]), nan=-1).astype(np.int64)
        self.lat, self.lon = numbers[:, 4].copy(), numbers[:, 5].copy()
        top = int(self.ids[-1]) + 1 if n else 1
        self._position = np.full(top, -1, dtype=np.int64)  # id -> row (-1: not an indexed item)
        self._position[self.ids] = np.arange(n)
        self.cameras, self.formats = arrays["cameras"], arrays["formats"]
        self.camera = self._codes(*arrays["camera_of"], len(self.cameras))
        self.format = self._codes(*arrays["format_of"], len(self.formats))

    def _codes(self, ids: np.ndarray, codes: np.ndarray, count: int) -> np.ndarray:
        """Each row's code from (ids, codes) of every item (failed ones and unknown ids dropped);
        -1 for a row none is given for (the last entry of a look-up table: never wanted)."""
        out = np.full(len(self.ids), -1, dtype=np.int16 if count < 2 ** 15 else np.int32)
        inside = ids < len(self._position)
        rows = self._position[ids[inside]]
        out[rows[rows >= 0]] = codes[inside][rows >= 0]
        return out

    @classmethod
    def load(cls, catalog) -> "FilterColumns":
        from retriever.store.filters import column_arrays

        return cls(column_arrays(catalog), catalog=catalog)

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def covers(filters: Filters) -> bool:
        """True when every condition of `filters` is one the columns answer."""
        return bool(filters.after or filters.before or filters.cameras or filters.formats or filters.min_size
                    or filters.near is not None or filters.tags or filters.tags_any or filters.no_tags) and not (
            filters.folders or filters.texts or filters.concepts)

    def mask(self, f: Filters) -> np.ndarray:
        """Which rows pass `f` (a filter `covers` accepts). Each condition is checked only on
        the rows the ones before it kept, the most selective first (pass rates measured on a
        sample of rows): "2021, a Pixel, HEIF" costs one pass over a million rows, then a few
        thousand."""
        conditions = self._conditions(f)
        if len(conditions) > 1 and len(self.ids) > 4 * SAMPLE:
            sample = np.linspace(0, len(self.ids) - 1, SAMPLE).astype(np.int64)
            conditions.sort(key=lambda cond: float(cond(sample).mean()))
        rows = np.arange(len(self.ids)) if not conditions else None
        for cond in conditions:
            passed = cond(rows)
            rows = np.flatnonzero(passed) if rows is None else rows[passed]
            if len(rows) == 0:
                break
        keep = np.zeros(len(self.ids), dtype=bool)
        keep[rows] = True
        return keep

    def _conditions(self, f: Filters) -> list:
        """One function a condition: rows (int64 array, or None for all) -> whether each passes."""
        def take(column, rows):
            return column if rows is None else column[rows]

        out = []
        if f.after or f.before:  # one range check: a missing date is below every bound
            low = _seconds(f.after) if f.after else _MISSING + 1
            high = _seconds(f.before) if f.before else np.iinfo(np.int64).max
            def dated(rows):
                d = take(self.dates, rows)
                return (d >= low) & (d < high)
            out.append(dated)
        if f.cameras:
            needles = [c.lower() for c in f.cameras]
            cameras = np.array([any(n in name for n in needles) for name in self.cameras] + [False], dtype=bool)
            out.append(_coded(cameras, lambda rows: take(self.camera, rows)))
        if f.formats:
            names = {fmt for fmt in f.formats if fmt != "VIDEO"}
            formats = np.array([name in names for name in self.formats] + [False], dtype=bool)
            video = "VIDEO" in f.formats
            by_format = _coded(formats, lambda rows: take(self.format, rows))
            out.append(lambda rows: by_format(rows) | (take(self.frame, rows) if video else False))
        if f.min_size:
            long_side, short_side = f.min_size
            out.append(lambda rows: (take(self.long_side, rows) >= long_side) & (take(self.short_side, rows) >= short_side))
        for label in f.tags:
            out.append(lambda rows, label=label: take(self._tagged(label), rows))
        if f.tags_any:
            out.append(lambda rows: np.logical_or.reduce([take(self._tagged(label), rows) for label in f.tags_any]))
        for label in f.no_tags:
            out.append(lambda rows, label=label: ~take(self._tagged(label), rows))
        if f.near is not None:
            out.append(lambda rows: self._within(f.near, f.within_km, np.arange(len(self.ids)) if rows is None else rows))
        return out

    def _tagged(self, label: str) -> np.ndarray:
        """Which rows carry tag `label` (read once per label: tags change with the generation)."""
        if label not in self._labels:
            from retriever.store.filters import tagged_ids

            ids = tagged_ids(self._catalog, label)
            rows = self._position[ids[(ids >= 0) & (ids < len(self._position))]]
            mask = np.zeros(len(self.ids), dtype=bool)
            mask[rows[rows >= 0]] = True
            self._labels[label] = mask
        return self._labels[label]

    def _within(self, near: tuple[float, float], within_km: float, rows: np.ndarray) -> np.ndarray:
        """Whether each of `rows` lies within `within_km` of `near` (great-circle; none without GPS)."""
        lat0, lon0 = near
        lat, lon = self.lat[rows], self.lon[rows]
        out = np.zeros(len(rows), dtype=bool)
        has = ~np.isnan(lat) & ~np.isnan(lon)
        p1, p2 = math.radians(lat0), np.radians(lat[has])
        dp, dl = p2 - p1, np.radians(lon[has] - lon0)
        a = np.sin(dp / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
        out[has] = 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(a))) <= within_km
        return out

    def match(self, catalog, filters: Filters) -> "ColumnMatch":
        return ColumnMatch(catalog, filters, self, self.mask(filters))


_MISSING = np.iinfo(np.int64).min  # NaT's value as int64


def _coded(wanted: np.ndarray, codes_of):
    """rows -> whether each row's code is wanted: a comparison a wanted code when there are few
    (each a fast pass over a narrow column), else a table look-up (a gather, slower per row)."""
    codes = np.flatnonzero(wanted[:-1])
    if len(codes) <= 3:
        def few(rows):
            column = codes_of(rows)
            out = np.zeros(len(column), dtype=bool)
            for code in codes:
                out |= column == code
            return out
        return few
    return lambda rows: wanted[codes_of(rows)]


def _seconds(iso: str) -> int:
    return int(np.datetime64(iso, "s").view(np.int64))


class ColumnMatch:
    """A retriever.filters.FilterMatch answered from the columns: the same interface (`ids`,
    `broad`, `keep`, `share`, `all_ids`), each a numpy operation."""

    def __init__(self, catalog, filters: Filters, columns: FilterColumns, mask: np.ndarray):
        self.catalog, self.filters, self._columns, self._mask = catalog, filters, columns, mask
        self._count = int(mask.sum())
        # listing is cheap here (no SQL): a filter is listed up to LIST_SHARE of the photos, and a
        # search then scores its ids alone instead of checking deeper and deeper candidate lists
        listed = max(_filters.BROAD_AT, LIST_SHARE * len(columns))
        self.ids = columns.ids[mask] if self._count <= listed else None

    @property
    def broad(self) -> bool:
        return self.ids is None

    def keep(self, ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        position = self._columns._position
        inside = (ids >= 0) & (ids < len(position))
        rows = np.where(inside, position[np.clip(ids, 0, len(position) - 1)], -1)
        passing = np.zeros(len(ids), dtype=bool)
        known = rows >= 0
        passing[known] = self._mask[rows[known]]
        return ids[passing]

    def share(self, sample: int = 128, seed: int = 0) -> float:
        return self._count / max(1, len(self._columns))

    def all_ids(self) -> Any:
        return self.ids if self.ids is not None else self._columns.ids[self._mask]
