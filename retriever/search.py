"""query -> encode -> vectors -> catalog -> hits.

A query is one or more weighted terms (see `retriever.query`), optionally restricted by catalog
filters (see `retriever.filters`). A filtered query returns k hits whenever at least k images
pass the filters: a selective filter hands FAISS the matching ids (an IDSelector: only they are
scored), a broad one searches the whole index for more than k and keeps those that pass
(over-fetch), and falls back to the IDSelector when fewer pass. SELECTOR_MAX_FRACTION is where
one becomes faster than the other (benchmarks/filters.py)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from retriever.store.reader import METADATA_FIELDS, STATUS_INDEXED
from retriever.errors import ImageDecodeError, RetrieverError
from retriever.files import absolute
from retriever.filters import Filters
from retriever.query import CONCEPT, IMAGE, TEXT, QueryError, Term, concepts_only, keyword_text_of  # noqa: F401  (re-exported)
from retriever.video import format_timestamp

DEFAULT_K = 10
# Exact index: filters passing at most this share of the index use the IDSelector, broader ones
# over-fetch (10-20 % faster from 50 % on, when the filter is unrelated to the content).
SELECTOR_MAX_FRACTION = 0.5
TEXT_CANDIDATES = 10_000  # photos a --text search without a query ranks, at most


@dataclass
class Hit:
    rank: int  # 1-based
    score: float  # cosine similarity in the encoder's space
    id: int  # catalog id
    path: str
    meta: dict[str, Any] = field(default_factory=dict)  # size, mtime, and the image metadata

    @property
    def label(self) -> str:
        """The path, and for a video frame its timestamp: `clip.mp4@00:01:23`."""
        frame_ms = self.meta.get("frame_ms")
        return self.path if frame_ms is None else f"{self.path}@{format_timestamp(frame_ms)}"

    def as_dict(self) -> dict[str, Any]:
        out = {"rank": self.rank, "score": round(self.score, 6), "id": self.id, "path": self.path, **self.meta}
        if self.meta.get("frame_ms") is not None:
            out["timestamp"] = format_timestamp(self.meta["frame_ms"])
        return out


class Searcher:
    """Answers text and image queries over one opened Index. The encoder and the FAISS index are
    loaded on first use and kept, so a long-lived Searcher answers many queries cheaply."""

    def __init__(self, index, *, encoder=None, device: str = "auto", one_shot: bool = False,
                 onnx_threads: int | None = None):
        """one_shot: this Searcher answers one query and goes (a CLI search without a daemon):
        its ONNX sessions start faster and run a little slower (see onnx.make_session).
        onnx_threads: intra-op threads of those sessions (None: onnxruntime's default)."""
        self.index = index
        self.device = device
        self.one_shot = one_shot
        self.onnx_threads = onnx_threads
        self._encoder = encoder
        self._query_encoder = None
        self._vectors = None
        self.previous_vectors = None  # a warm predecessor's index: only the delta log's new records are read
        self._regions: Any = False  # not looked for yet
        self.use_regions = True  # score photos by their regions too, where the index has them
        self.last_strategy: str | None = None  # how the last filtered search ran: "selector" | "overfetch"
        self._accepted: dict[tuple, np.ndarray] = {}
        self._columns: Any = None  # filter_columns.FilterColumns of a warm searcher; a Thread while read; False: none
        self._columns_lock = threading.Lock()  # --concept: accepted ids by (name, version, size)

    @property
    def loaded_query_encoder(self):
        """The query encoder if a query has needed one so far (for messages), else None."""
        return self._query_encoder

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = self.index.load_encoder(self.device)
        return self._encoder

    @property
    def query_encoder(self):
        """What embeds query terms: the index's ONNX export when it holds a verified one and
        onnxruntime is installed (no torch import: see retriever.onnx), unless an encoder was given
        or a GPU asked for; else `encoder`. Images from outside the collection fall back to
        `encoder` when the export has no torch-free preprocessing."""
        if self._query_encoder is None:
            if self._encoder is None and self.device in ("auto", "cpu"):
                from retriever.onnx import onnx_encoder_for

                self._query_encoder = onnx_encoder_for(self.index, threads=self.onnx_threads, one_shot=self.one_shot)
            if self._query_encoder is None:
                self._query_encoder = self.encoder
        return self._query_encoder

    @property
    def vectors(self):
        if self._vectors is None:
            self._vectors = self.index.vector_index(previous=self.previous_vectors)
            self.previous_vectors = None
        return self._vectors

    @property
    def regions(self):
        """The index's region vectors (retriever.regions.RegionIndex), or None without any."""
        from retriever.store.regions import region_version

        version = region_version(self.index.catalog)  # one small read: regions added by another process
        if self._regions is False or getattr(self._regions, "version", None) != version:
            from retriever.regions import region_index_for

            self._regions = region_index_for(self.index) if version else None
        return self._regions

    def concept(self, name: str):
        """The concept's query vector and threshold (retriever.concepts.ConceptVector), read anew
        when it was refitted since (one small read)."""
        from retriever.concepts import concept_vector

        return concept_vector(self.index, name)

    def match(self, filters: Filters):
        """The filters' FilterMatch: the catalog conditions (retriever.filters.match_filter, or
        the columns in memory of a warm searcher: retriever.filter_columns), and the photos each
        `--concept` says yes to (listed: a FAISS range search each)."""
        from retriever.filters import FilterMatch

        if not filters.concepts:
            return self._match_catalog(filters)
        from dataclasses import replace

        from retriever.concepts import accepted_ids

        ids = None
        for name in filters.concepts:
            concept = self.concept(name)
            key = (concept.name.lower(), concept.version, len(self.vectors))
            if key not in self._accepted:
                self._accepted = {k: v for k, v in self._accepted.items() if k[0] != key[0]}
                self._accepted[key] = accepted_ids(self.vectors, concept)
            found = self._accepted[key]
            ids = found if ids is None else np.intersect1d(ids, found)
        rest = replace(filters, concepts=())
        if rest.restricts() and len(ids):
            ids = np.unique(self._match_catalog(rest).keep(ids))
        return FilterMatch(self.index.catalog, filters, ids)

    def _match_catalog(self, filters: Filters):
        from retriever.filter_columns import FilterColumns
        from retriever.filters import match_filter

        if self.one_shot or not FilterColumns.covers(filters):
            return match_filter(self.index.catalog, filters)
        columns = self.filter_columns(wait=False)
        return columns.match(self.index.catalog, filters) if columns else match_filter(self.index.catalog, filters)

    def filter_columns(self, wait: bool = True):
        """The filter columns of this warm searcher (retriever.filter_columns), or None: a
        collection too small to need them, or (wait=False) still being read. The first call
        starts reading them in a thread (seconds at 1 M photos); until they are read, filters
        go to SQL."""
        from retriever.filter_columns import MIN_ROWS, FilterColumns, may_start_reading

        with self._columns_lock:
            if self._columns is None:
                if len(self.vectors) < MIN_ROWS:
                    self._columns = False
                elif not may_start_reading(self.index.catalog.path) and not wait:
                    return None  # read for another generation moments ago (an indexer is committing): SQL for now
                else:
                    def load():
                        try:
                            self._columns = FilterColumns.load(self.index.catalog)
                        except Exception:  # noqa: BLE001  (a catalog that cannot be read: SQL answers)
                            self._columns = False
                    self._columns = threading.Thread(target=load, name="filter-columns", daemon=True)
                    self._columns.start()
            pending = self._columns
        if isinstance(pending, threading.Thread):
            if not wait:
                return None
            pending.join()
        return self._columns or None

    def text(self, query: str, k: int = DEFAULT_K, filters: Filters | None = None, adapter: bool = True) -> list[Hit]:
        query = query.strip()
        if not query:
            raise RetrieverError("empty query: say what to look for, e.g. retriever search \"a dog on the beach\"")
        return self.by_vector(self._adapted(self.query_encoder.embed_texts([query])[0], adapter), k, filters=filters)

    def _adapted(self, vector: np.ndarray, adapter: bool) -> np.ndarray:
        """A text's vector through the index's adapter (`retriever adapt`), when it has one and
        `adapter` is true; else the very same vector."""
        if not adapter:
            return vector
        from retriever.adapter import adapt_query, adapter_for

        return adapt_query(adapter_for(self.index), vector)

    def image(self, path: str, k: int = DEFAULT_K, filters: Filters | None = None) -> list[Hit]:
        """Photos like the image at `path`, inside the collection or not. An image of the
        collection is left out of its own results and reuses its stored vector."""
        vector, own_id = self.image_vector(path)
        return self.by_vector(vector, k, exclude=[own_id] if own_id is not None else [], filters=filters)

    def query(self, terms: list[Term], k: int = DEFAULT_K, filters: Filters | None = None,
              adapter: bool = True) -> list[Hit]:
        """A combined query: the normalised sum of the terms' weighted embeddings. Images of the
        collection given as positive terms are left out of the results. adapter: text terms go
        through the index's adapter (`retriever adapt`) when it has one."""
        vector, own_ids = self.query_vector(terms, adapter)
        return self.by_vector(vector, k, exclude=own_ids, filters=filters, neighbours=concepts_only(terms))

    def hybrid(self, terms: list[Term], k: int = DEFAULT_K, filters: Filters | None = None,
               adapter: bool = True) -> list[Hit]:
        """`query` fused with keyword matches of the positive text terms in file names and
        captions (retriever.keywords: FTS5, reciprocal rank fusion). With no keyword match
        the result is exactly `query`'s."""
        from retriever.keywords import HYBRID_POOL, fuse_hits, keyword_search

        vector, own_ids = self.query_vector(terms, adapter)
        keyword_text = keyword_text_of(terms)
        pool = max(k, HYBRID_POOL)
        candidates = self.by_vector(vector, pool, exclude=own_ids, filters=filters, neighbours=concepts_only(terms))
        if not keyword_text:
            return candidates[:k]
        allowed = keep = None
        if filters is not None and filters.restricts():
            match = self.match(filters)
            allowed, keep = (None, match.keep) if match.broad else (match.ids, None)
        matches = keyword_search(self.index.catalog, keyword_text, pool, allowed=allowed, exclude=own_ids, keep=keep)
        if not matches:
            return candidates[:k]
        query = np.asarray(vector, dtype=np.float32)

        def fetch(ids: list[int]) -> list[Hit]:
            stored = self.index.catalog.vectors_for(ids, self.index.dim)
            return self._hits([(float(stored[i] @ query), i) for i in ids if i in stored])

        return fuse_hits(candidates, matches, k, fetch, min_score=filters.min_score if filters else None)

    def text_matches(self, filters: Filters, k: int = DEFAULT_K) -> list[Hit]:
        """The photos whose text contains every `--text` needle of `filters` (and that pass its
        other conditions), with no query to rank by: the best match first, scored by the share of
        its text line that the needle covers (1.0: the line is the needle; "0471" in "2023-0471"
        scores 0.5), ties by the trigram index's BM25. `min_score` applies to that score."""
        from retriever.store.ocr import substring_matches

        if not filters.texts:
            raise QueryError("empty query: say what to look for, or give --text TEXT")
        needle = max(filters.texts, key=len)
        found = substring_matches(self.index.catalog, needle, TEXT_CANDIDATES)
        from dataclasses import replace

        if len(filters.texts) > 1 or replace(filters, texts=()).restricts():  # the other conditions
            passing = {int(i) for i in self.match(filters).keep([i for i, _ in found])}
            found = [(i, text) for i, text in found if i in passing]
        scored = [(max((len(needle) / len(line) for line in text.split("\n") if needle in line), default=0.0), i)
                  for i, text in found]
        if filters.min_score is not None:  # here the match score, not a cosine
            scored = [(score, i) for score, i in scored if score >= filters.min_score]
        order = sorted(range(len(scored)), key=lambda n: (-scored[n][0], n))
        return self._hits([scored[n] for n in order[:k]])

    def query_vector(self, terms: list[Term], adapter: bool = True) -> tuple[np.ndarray, list[int]]:
        if not terms:
            raise QueryError("empty query: say what to look for")
        total = np.zeros(self.index.dim, dtype=np.float64)
        own_ids: list[int] = []
        texts = [t for t in terms if t.kind == TEXT]
        if texts:
            for term, emb in zip(texts, self.query_encoder.embed_texts([t.value for t in texts])):
                total += term.weight * _unit(self._adapted(emb, adapter))
        for term in terms:
            if term.kind == IMAGE:
                emb, own_id = self.image_vector(term.value)
                total += term.weight * _unit(emb)
                if own_id is not None and term.weight > 0:
                    own_ids.append(own_id)
            elif term.kind == CONCEPT:
                total += term.weight * _unit(self.concept(term.value).vector)
        norm = float(np.linalg.norm(total))
        if len(terms) > 1 and norm < 1e-6:
            raise QueryError("the terms cancel out: the query points nowhere (check the signs and weights)")
        return (total / norm).astype(np.float32), own_ids

    def image_vector(self, path: str) -> tuple[np.ndarray, int | None]:
        """The vector of the image at `path` (its stored one when the collection holds it
        unchanged), or of a part of it, `path@x0,y0,x1,y1`; and its catalog id, if any."""
        from retriever.query import split_region

        path, box = split_region(path)
        if box is not None:
            return self._region_vector(path, box)
        full = absolute(path)
        row = self.index.catalog.find_by_path(full)
        if row is not None and row["status"] == STATUS_INDEXED:
            stat = _stat(full)
            if stat is None or (stat.st_size == row["size"] and stat.st_mtime_ns == row["mtime_ns"]):
                stored = self.index.catalog.vectors_for([row["id"]], self.index.dim)
                if row["id"] in stored:
                    return stored[row["id"]], int(row["id"])
        if not os.path.exists(full):
            raise RetrieverError(f"no such image: {path}")
        if os.path.isdir(full):
            raise RetrieverError(f"{path} is a folder, not an image")
        from retriever.images import load

        try:
            decoded = load(full)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"cannot use {path} as a query image: {exc}") from None
        encoder = self.query_encoder if getattr(self.query_encoder, "embeds_images", True) else self.encoder
        vector = encoder.embed_images([decoded.image])[0]
        return vector, (int(row["id"]) if row is not None else None)

    def _region_vector(self, path: str, box: tuple[float, float, float, float]) -> tuple[np.ndarray, int | None]:
        """The vector of a part of an image, the box in its pixels after EXIF orientation."""
        from retriever.images import load

        full = absolute(path)
        if os.path.isdir(full):
            raise RetrieverError(f"{path} is a folder, not an image")
        if not os.path.isfile(full):
            raise RetrieverError(f"no such image: {path}")
        try:
            decoded = load(full)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"cannot use {path} as a query image: {exc}") from None
        image = decoded.image
        width, height = int(decoded.meta.get("width") or image.size[0]), int(decoded.meta.get("height") or image.size[1])
        x0, y0, x1, y1 = max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3])
        if x1 - x0 < 8 or y1 - y0 < 8:
            raise QueryError(f"the region @{','.join(f'{v:g}' for v in box)} is outside {path} ({width}x{height}) "
                             "or smaller than 8 pixels")
        sx, sy = image.size[0] / width, image.size[1] / height
        crop = image.crop((round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)))
        encoder = self.query_encoder if getattr(self.query_encoder, "embeds_images", True) else self.encoder
        row = self.index.catalog.find_by_path(full)
        return encoder.embed_images([crop])[0], (int(row["id"]) if row is not None else None)

    def by_vector(
        self, vector: np.ndarray, k: int = DEFAULT_K, exclude: Iterable[int] = (), filters: Filters | None = None,
        neighbours: bool = False,
    ) -> list[Hit]:
        """The k photos nearest `vector`. neighbours: a concept ranking, whose best photos are
        re-scored by their neighbours' scores (retriever.concept_fit.smooth_by_neighbours)."""
        if k <= 0:
            raise RetrieverError("-k/--top must be at least 1")
        wanted = k
        if neighbours:  # the pool to re-score, then the k best of it
            from retriever.concept_fit import NEIGHBOURS

            k = max(k, int(NEIGHBOURS["pool"]))
        query = np.asarray(vector, dtype=np.float32)[None, :]
        exclude = list(exclude)
        match = None
        if filters is not None and filters.restricts():
            match = self.match(filters)  # once: the regions use it too
            found = self._filtered(query, k, exclude, filters, match)
        else:
            scores, ids = self.vectors.search(query, k, exclude=exclude)
            found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i != -1]
        boxes: dict[int, list[float]] = {}
        if self.use_regions and self.regions is not None and len(self.regions):
            found, boxes = self._with_regions(query, k, exclude, match, found)
        if neighbours:
            found = self._by_neighbours(found)[:wanted]
        if filters is not None and filters.min_score is not None:
            found = [(s, i) for s, i in found if s >= filters.min_score]
        return self._hits(found, boxes)

    def _by_neighbours(self, found: list[tuple[float, int]]) -> list[tuple[float, int]]:
        """(score, id) pairs re-scored by their neighbours among them, best first."""
        from retriever.concept_fit import smooth_by_neighbours

        stored = self.index.catalog.vectors_for([i for _, i in found], self.index.dim)
        kept = [(s, i) for s, i in found if i in stored]
        if len(kept) < 2:
            return found
        scores = smooth_by_neighbours(np.array([s for s, _ in kept]), np.stack([stored[i] for _, i in kept]))
        return [(float(scores[n]), kept[n][1]) for n in np.argsort(-scores, kind="stable")]

    def _with_regions(self, query: np.ndarray, k: int, exclude: list[int], match,
                      found: list[tuple[float, int]]) -> tuple[list[tuple[float, int]], dict[int, list[float]]]:
        """The whole-photo results merged with the best regions (retriever.regions.merge): each
        photo once, by its best region or its whole vector; the winning regions' boxes. match: the
        filters' FilterMatch (None: no filter)."""
        from retriever.regions import merge

        allowed = match.ids if match is not None and not match.broad else None
        best = self.regions.best(query[0], k, allowed=allowed, exclude=exclude)
        if match is not None and match.broad and best:
            passed = set(match.keep(np.fromiter(best, dtype=np.int64)).tolist())
            best = {i: v for i, v in best.items() if i in passed}
        whole = {i: s for s, i in found}
        missing = [i for i in best if i not in whole]
        if missing:
            stored = self.index.catalog.vectors_for(missing, self.index.dim)
            whole.update({i: float(stored[i] @ query[0]) for i in missing if i in stored})
        merged = merge(whole, best, k, self.regions.margin)
        return [(s, i) for s, i, _ in merged], {i: box for _, i, box in merged if box}

    def _filtered(self, query: np.ndarray, k: int, exclude: list[int], filters: Filters,
                  match=None) -> list[tuple[float, int]]:
        total = len(self.vectors)
        self.last_strategy = None
        if total == 0:
            return []
        if match is None:
            match = self.match(filters)
        if match.broad:  # most items pass: rank, then check the best candidates against the filter
            self.last_strategy = "verify"
            return search_verified(self.vectors, query, k, exclude, match)
        allowed = match.ids
        if exclude:
            allowed = allowed[~np.isin(allowed, np.asarray(exclude, dtype=np.int64))]
        if len(allowed) == 0:
            return []
        # On IVF the selector also scans more lists for a selective filter, so it is both the
        # faster and the more exact path at every fraction (benchmarks/filters.py).
        if getattr(self.vectors, "is_ivf", False) or len(allowed) <= SELECTOR_MAX_FRACTION * total:
            self.last_strategy = "selector"
            return search_selector(self.vectors, query, k, allowed)
        self.last_strategy = "overfetch"
        return search_overfetch(self.vectors, query, k, allowed)

    def _hits(self, found: list[tuple[float, int]], boxes: dict[int, list[float]] | None = None) -> list[Hit]:
        """Hits of (score, id) pairs; each says where it matched: `box` [x0, y0, x1, y1] in the
        photo's pixels, the winning region's (`region` true) or the whole photo."""
        catalog = self.index.catalog
        rows = catalog.image_rows([i for _, i in found])
        tags = _tags_for(catalog, [i for _, i in found])
        from retriever.store.ocr import texts_for

        texts = texts_for(catalog, [i for _, i in found])
        from retriever.concepts import concepts_of

        concepts = concepts_of(self.index, [i for _, i in found])
        hits: list[Hit] = []
        for score, image_id in found:
            row = rows.get(image_id)
            if row is None:  # removed by a concurrent writer since the FAISS file was read
                continue
            meta = {"size": row["size"], "mtime": row["mtime_ns"] / 1e9, "fingerprint": row["fingerprint"]}
            meta.update({name: row[name] for name in METADATA_FIELDS})
            meta["date"] = row["taken_at"] or _local_iso(row["mtime_ns"])
            scored = tags.get(image_id, [])
            meta["tags"] = [label for label, _ in scored]
            meta["tag_scores"] = [{"label": label, "score": round(s, 4)} for label, s in scored]
            box = (boxes or {}).get(image_id)
            if box:
                meta["box"], meta["region"] = [round(v, 1) for v in box], True
            elif row["width"] and row["height"]:
                meta["box"], meta["region"] = [0.0, 0.0, float(row["width"]), float(row["height"])], False
            if image_id in texts:  # read by `retriever ocr`: its lines (none: no text found)
                meta["ocr"] = texts[image_id]["lines"]
            if image_id in concepts:  # the concepts that say yes to it (retriever concept)
                meta["concepts"] = concepts[image_id]
            hits.append(Hit(rank=len(hits) + 1, score=score, id=image_id, path=row["path"], meta=meta))
        return hits


def search_selector(vectors, query: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[float, int]]:
    """The best k among `allowed` (sorted int64 ids): FAISS scores only those (an IDSelector)."""
    scores, ids = vectors.search(query, k, allowed=allowed)
    return [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i != -1]


def search_overfetch(vectors, query: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[float, int]]:
    """The best k among `allowed` (sorted int64 ids): one unfiltered search deep enough that
    about k results pass when the filter is unrelated to the content (k / fraction, +50 %), the
    ones allowed kept. A filter that runs against the query (the allowed photos rank low) leaves
    fewer than k: the selector search then answers, so the worst case costs two scans, never a
    deeper and deeper ranking of the whole index."""
    total = len(vectors)
    fetch = min(total, int(k * total / max(len(allowed), 1) * 1.5) + 8)
    scores, ids = vectors.search(query, fetch)
    keep = np.isin(ids[0], allowed)
    found = [(float(s), int(i)) for s, i in zip(scores[0][keep], ids[0][keep])]
    if len(found) >= k or fetch >= total:
        return found[:k]
    return search_selector(vectors, query, k, allowed)


VERIFY_SAMPLE = 128  # random items checked to size the first candidate list of a broad filter
VERIFY_MAX_FETCH = 8192  # candidates checked against a broad filter before listing its ids instead


def search_verified(vectors, query: np.ndarray, k: int, exclude: list[int], match) -> list[tuple[float, int]]:
    """The best k that pass a broad filter (`match`: a filters.FilterMatch): unfiltered searches
    deep enough for k to pass, each deeper one sized by the share that passed so far; only the
    candidates are checked in the catalog. A filter that runs against the query (fewer than k
    pass among VERIFY_MAX_FETCH candidates) lists its ids and searches among them."""
    total = len(vectors)
    # deep enough at once for the share that passes, estimated on a random sample of the catalog
    # (a deeper search and more candidates to check both cost: at 1 M, 400 of each ~2 ms)
    share = match.share(VERIFY_SAMPLE)
    fetch = min(total, VERIFY_MAX_FETCH, max(2 * k, int(k / max(share, 0.5 / VERIFY_SAMPLE) * 1.5) + 8))
    while True:
        scores, ids = vectors.search(query, fetch, exclude=exclude)
        valid = ids[0] != -1
        scores, ids = scores[0][valid], ids[0][valid]
        passed = set(match.keep(ids).tolist())
        found = [(float(s), int(i)) for s, i in zip(scores, ids) if int(i) in passed]
        if len(found) >= k or fetch >= total:
            return found[:k]
        if fetch >= VERIFY_MAX_FETCH:
            allowed = match.all_ids()
            if exclude:
                allowed = allowed[~np.isin(allowed, np.asarray(exclude, dtype=np.int64))]
            return search_selector(vectors, query, k, allowed) if len(allowed) else []
        share = max(len(found), 1) / max(len(ids), 1)
        fetch = min(total, VERIFY_MAX_FETCH, max(4 * fetch, int(k / share * 1.5) + 8))


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _local_iso(mtime_ns: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(mtime_ns // 1_000_000_000).isoformat()


def _tags_for(catalog, ids: list[int]) -> dict[int, list[tuple[str, float]]]:
    """Each image's zero-shot tags as (label, confidence), best first (none before `retriever tag`)."""
    if not ids:
        return {}
    return catalog.scored_tags_for(ids)


def _stat(path: str):
    try:
        return os.stat(path)
    except OSError:
        return None
