"""Concepts learned from a few examples: "rex", "grandma's house", "our boat".

A concept is a name, the photos that show it (positives) and that do not (negatives: `--not`
images, "not this" marks), kept in the index with their own vectors (so photos from outside the
collection, regions `photo.jpg@x0,y0,x1,y1`, and photos since removed all stay examples), and a
scorer refitted from them after every change (retriever/concept_fit.py: a regularised
least-squares classifier against a background of random collection photos, then refitted once
with the collection's five best-scoring photos as pseudo-positives; milliseconds, no model).

Uses: `concept:NAME` is a query term (the scorer's unit vector, added like a text or image
term), `--concept NAME` a filter (the photos the scorer says yes to: its score above a threshold
fitted on caltech101-train, see benchmarks/adapt.py), and a concept's marks refit it at once.
A concept belongs to its model: an index of another model refuses it with a clear message.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np

from retriever.concept_fit import BACKGROUND_SIZE, Background, fit
from retriever.errors import RetrieverError

PSEUDO_POSITIVES = 5  # the collection's best photos added as positives for the second fit
PSEUDO_MIN_COLLECTION = 50  # ... only in a collection of at least this many other photos
RULE = "lsq-bg-qe/v1"  # the fitted rule's name and version (stored with each fit)
_NAME = re.compile(r"^[\w][\w .'&+-]{0,62}$", re.UNICODE)
EXPORT_FORMAT = 1


class ConceptError(RetrieverError):
    """A bad name, an example that cannot be used, another model's concept."""


class ConceptNotFound(ConceptError):
    """No concept of that name, or no such example of it."""


@dataclass(frozen=True)
class ConceptVector:
    """What a search needs of a concept: its unit query vector and its yes/no threshold on it."""

    name: str
    vector: np.ndarray
    cosine_threshold: float
    version: int


def check_name(name: str) -> str:
    value = (name or "").strip()
    if value.lower().startswith("concept:"):
        value = value[len("concept:"):].strip()
    if not _NAME.match(value):
        raise ConceptError(f"a concept name is 1-63 letters, digits, spaces or . ' & + - _, starting with a letter "
                           f"or digit, not {name!r}")
    return value


def _catalog_for_writes(index):
    """The index's catalog if it can write, else a short-lived writable one (a server's read-only
    index: each concept change is one short transaction, safe next to a running indexer)."""
    if hasattr(index.catalog, "engine"):
        return index.catalog, False
    from retriever.store.catalog import Catalog

    return Catalog(index.catalog.path), True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _require(catalog, name: str) -> dict[str, Any]:
    from retriever.store.concepts import concept_row, has_concepts_table

    row = concept_row(catalog, check_name(name)) if has_concepts_table(catalog) else None
    if row is None:
        raise ConceptNotFound(f"no concept {name!r}: add one with `retriever concept add {name} PHOTO...`")
    return row


def _check_model(row: dict[str, Any], index) -> None:
    if row["model_id"] != index.model_id or row["dim"] != index.dim:
        raise ConceptError(f"concept {row['name']!r} was learned with model {row['model_id']} and this index uses "
                           f"{index.model_id}: its vectors do not compare; add its examples again here")


def add_examples(index, name: str, *, images: Sequence[str] = (), negatives: Sequence[str] = (),
                 ids: Sequence[int] = (), not_ids: Sequence[int] = (), source: str = "cli",
                 image_vector: Callable[[str], tuple[np.ndarray, int | None]] | None = None,
                 vectors=None) -> dict[str, Any]:
    """Add examples to concept `name` (created when new) and refit it; returns `describe`'s dict.
    images / negatives: image paths (inside the collection or not; `path@x0,y0,x1,y1` a part);
    ids / not_ids: catalog ids. image_vector(path) -> (vector, catalog id or None) embeds a path
    (a Searcher's image_vector). Every example is read before anything is stored: an image that
    cannot be decoded raises ConceptError and the concept is left as it was."""
    name = check_name(name)
    if not (images or negatives or ids or not_ids):
        raise ConceptError("give at least one example: photos that show it (or --not photos that do not)")
    from retriever.store.concepts import concept_row, has_concepts_table

    catalog = index.catalog
    existing = concept_row(catalog, name) if has_concepts_table(catalog) else None
    if existing is not None:
        _check_model(existing, index)
    examples = _resolve(index, images, negatives, ids, not_ids, source, image_vector)
    if existing is None and not any(label > 0 for label, *_ in examples):
        raise ConceptError(f"a new concept needs at least one photo that shows {name!r}, not only --not photos")
    return _save_and_refit(index, name, examples, vectors)


def mark(index, name: str, *, yes: Sequence[int] = (), no: Sequence[int] = (), vectors=None) -> dict[str, Any]:
    """Relevance feedback: catalog photos marked "yes, this" / "not this"; the concept (created
    by a first "yes") is refitted at once. A photo marked again takes its latest mark."""
    return add_examples(index, name, ids=yes, not_ids=no, source="feedback", vectors=vectors)


def _resolve(index, images, negatives, ids, not_ids, source, image_vector) -> list[tuple[int, int | None, str, np.ndarray]]:
    from retriever.errors import ImageDecodeError

    out: list[tuple[int, int | None, str, np.ndarray]] = []
    for label, paths in ((1, images), (-1, negatives)):
        for path in paths:
            if image_vector is None:
                raise ConceptError("examples given as image paths need an encoder (open the collection to add them)")
            from retriever.query import split_region

            try:
                vector, own_id = image_vector(str(path))
                if split_region(str(path))[1] is not None:
                    own_id = None  # a part of a photo is an example of its own, not the photo's mark
            except (ImageDecodeError, RetrieverError) as exc:
                reason = str(exc).split(" as a query image: ", 1)[-1]
                raise ConceptError(f"cannot use {path} as an example: {reason}") from None
            out.append((label, own_id, source, _unit(vector)))
    wanted = [(1, int(i)) for i in ids] + [(-1, int(i)) for i in not_ids]
    if wanted:
        stored = index.catalog.vectors_for([i for _, i in wanted], index.dim)
        missing = sorted({i for _, i in wanted if i not in stored})
        if missing:
            raise ConceptError(f"no indexed photo with id {', '.join(map(str, missing[:5]))} in index {index.name!r}")
        out.extend((label, i, source, _unit(stored[i])) for label, i in wanted)
    return out


def _save_and_refit(index, name: str, examples, vectors) -> dict[str, Any]:
    """Refit with the stored examples and the new ones first; store both in one transaction
    only when the refit worked."""
    from retriever.store.concepts import concept_row, examples_of, save_concept

    catalog, close = _catalog_for_writes(index)
    try:
        row = concept_row(catalog, name)
        marked = {image_id for _, image_id, _, _ in examples if image_id is not None}
        kept = [e for e in (examples_of(catalog, row["id"]) if row else []) if e["image_id"] not in marked or
                e["image_id"] is None]
        merged = kept + [{"label": label, "image_id": image_id, "vector": vector} for label, image_id, _, vector in examples]
        fitted = refit_rows(index, merged, name, vectors)
        save_concept(catalog, name, index.model_id, index.dim, _now(), examples, fitted)
        return describe(index, concept_row(catalog, name), catalog=catalog)
    finally:
        if close:
            catalog.close()


def refit_rows(index, examples: list[dict[str, Any]], name: str, vectors=None) -> tuple[np.ndarray, dict[str, Any]]:
    """The concept's fit from its example rows: (unit vector, JSON of the rest)."""
    started = time.perf_counter()
    pos = np.array([e["vector"] for e in examples if e["label"] > 0], dtype=np.float32)
    neg = np.array([e["vector"] for e in examples if e["label"] < 0], dtype=np.float32).reshape(-1, index.dim)
    if len(pos) == 0:
        raise ConceptError(f"concept {name!r} has no photo that shows it left: add one, or remove the concept")
    own = {int(e["image_id"]) for e in examples if e["image_id"] is not None}
    background = background_of(index)
    if background is None:
        raise ConceptError(f"index {index.name!r} has no photos yet to learn {name!r} against: index some first")
    if vectors is None:
        vectors = index.vector_index()

    def best(direction: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
        if len(vectors) - len(own) < PSEUDO_MIN_COLLECTION:
            return [], np.zeros((0, index.dim), np.float32)
        _, found = vectors.search(direction[None, :], k, exclude=sorted(own))
        ids = [int(i) for i in found[0] if i != -1]
        stored = index.catalog.vectors_for(ids, index.dim)
        ids = [i for i in ids if i in stored]
        return ids, np.array([stored[i] for i in ids], dtype=np.float32).reshape(-1, index.dim)

    fitted, pseudo = learn(pos, neg, background, best)
    info = {
        "rule": RULE, "bias": fitted.bias, "threshold": fitted.threshold, "norm": float(np.linalg.norm(fitted.weights)),
        "cosine_threshold": fitted.cosine_threshold, "positives": int(len(pos)), "negatives": int(len(neg)),
        "pseudo_positives": pseudo, "background": background.count,
        "fit_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    return fitted.direction, info


_BACKGROUNDS: dict[tuple, Background] = {}  # by (catalog, generation, size, dim): a refit reuses it


def learn(positives: np.ndarray, negatives: np.ndarray, background: Background,
          best: Callable[[np.ndarray, int], tuple[list[int], np.ndarray]] | None = None, params: dict | None = None,
          pseudo: int = PSEUDO_POSITIVES):
    """The concept's rule (RULE): fit, then fit again with the collection's PSEUDO_POSITIVES best
    photos (`best(direction, k)` -> their ids and vectors, the examples' own photos left out) as
    more positives, as query expansion does. -> (Fitted, the pseudo-positives' ids)."""
    fitted = fit(positives, negatives, background, params=params)
    if best is None or pseudo <= 0:
        return fitted, []
    ids, extra = best(fitted.direction, pseudo)
    if not ids:
        return fitted, []
    return fit(np.vstack([positives, extra]), negatives, background, params=params), ids


def background_of(index) -> Background | None:
    """The background of the index's concepts: BACKGROUND_SIZE random indexed photos (a fixed
    seed: the same for every concept and refit while the catalog does not change), kept in
    memory for the catalog's generation. None: no photo."""
    from retriever.store.concepts import id_range

    key = (str(index.catalog.path), index.catalog.generation(), id_range(index.catalog), index.dim)
    if key not in _BACKGROUNDS:
        sample = background_sample(index.catalog, index.dim)
        if len(sample) == 0:
            return None
        _BACKGROUNDS.clear()
        _BACKGROUNDS[key] = Background.of(sample)
    return _BACKGROUNDS[key]


def background_sample(catalog, dim: int, size: int = BACKGROUND_SIZE, seed: int = 0) -> np.ndarray:
    """Up to `size` stored vectors of random indexed photos (seeded: the same draw from the same
    catalog)."""
    from retriever.store.concepts import id_range

    low, high = id_range(catalog)
    if high < low:
        return np.zeros((0, dim), np.float32)
    rng = np.random.default_rng(seed)
    span = high - low + 1
    if span <= 2 * size:
        wanted = list(range(low, high + 1))
        rng.shuffle(wanted)
    else:
        wanted = [int(i) for i in rng.choice(span, size=min(span, 3 * size), replace=False) + low]
    found: list[np.ndarray] = []
    for start in range(0, len(wanted), 900):
        if sum(len(f) for f in found) >= size:
            break
        chunk = wanted[start:start + 900]
        stored = catalog.vectors_for(chunk, dim)
        found.append(np.array([stored[i] for i in chunk if i in stored], dtype=np.float32).reshape(-1, dim))
    sample = np.concatenate(found) if found else np.zeros((0, dim), np.float32)
    return sample[:size]


def remove(index, name: str) -> None:
    from retriever.store.concepts import delete_concept

    catalog, close = _catalog_for_writes(index)
    try:
        delete_concept(catalog, _require(catalog, name)["id"])
    finally:
        if close:
            catalog.close()


def forget(index, name: str, *, image_ids: Sequence[int] = (), example_ids: Sequence[int] = (), vectors=None) -> dict[str, Any]:
    """Drop some examples (by photo id or example id) and refit."""
    from retriever.store.concepts import concept_row, examples_of, remove_examples

    catalog, close = _catalog_for_writes(index)
    try:
        row = _require(catalog, name)
        _check_model(row, index)
        existing = examples_of(catalog, row["id"])
        drop = {int(i) for i in example_ids}
        photos = {int(i) for i in image_ids}
        kept = [e for e in existing if e["id"] not in drop and (e["image_id"] is None or e["image_id"] not in photos)]
        if len(kept) == len(existing):
            raise ConceptNotFound(f"concept {row['name']!r} has no such example (see `retriever concept show {row['name']}`)")
        fitted = refit_rows(index, kept, row["name"], vectors)
        remove_examples(catalog, row["id"], example_ids=sorted(drop), image_ids=sorted(photos), fitted=fitted, now=_now())
        return describe(index, concept_row(catalog, row["name"]), catalog=catalog)
    finally:
        if close:
            catalog.close()


def list_concepts(index) -> list[dict[str, Any]]:
    from retriever.store.concepts import concept_rows, has_concepts_table

    if not has_concepts_table(index.catalog):
        return []
    return [_summary(row, index) for row in concept_rows(index.catalog)]


def show(index, name: str) -> dict[str, Any]:
    """The concept with its examples (photo id, path, label, source)."""
    return describe(index, _require(index.catalog, name), examples=True)


def describe(index, row: dict[str, Any], *, examples: bool = False, catalog=None) -> dict[str, Any]:
    from retriever.store.concepts import examples_of

    out = _summary(row, index)
    rows = examples_of(catalog or index.catalog, row["id"])
    out["positives"] = sum(1 for e in rows if e["label"] > 0)
    out["negatives"] = sum(1 for e in rows if e["label"] < 0)
    if examples:
        out["examples"] = [{"example": e["id"], "label": "yes" if e["label"] > 0 else "no", "id": e["image_id"],
                            "path": e["path"], "source": e["source"], "added_at": e["added_at"]} for e in rows]
    return out


def _summary(row: dict[str, Any], index) -> dict[str, Any]:
    fit_info = row["fit"]
    return {"name": row["name"], "model": row["model_id"], "usable": row["model_id"] == index.model_id,
            "positives": row.get("positives"), "negatives": row.get("negatives"), "version": row["version"],
            "rule": fit_info.get("rule"), "fit_ms": fit_info.get("fit_ms"),
            "cosine_threshold": fit_info.get("cosine_threshold"), "created_at": row["created_at"],
            "updated_at": row["updated_at"]}


def concept_vector(index, name: str) -> ConceptVector:
    """The query vector and yes/no threshold of concept `name` (for `concept:NAME` and `--concept`)."""
    row = _require(index.catalog, name)
    _check_model(row, index)
    if row["vector"] is None:
        raise ConceptError(f"concept {row['name']!r} has not been fitted: add an example to it")
    return ConceptVector(row["name"], row["vector"].copy(), float(row["fit"]["cosine_threshold"]), int(row["version"]))


def concepts_of(index, ids: Sequence[int]) -> dict[int, list[str]]:
    """The concepts that say yes to each of these photos (only photos with one or more; {} for
    an index without concepts): what search hits carry as `concepts`."""
    from retriever.store.concepts import fitted_concepts, has_concepts_table

    if not ids or not has_concepts_table(index.catalog):
        return {}
    usable = [r for r in fitted_concepts(index.catalog) if r["model_id"] == index.model_id and r["dim"] == index.dim]
    if not usable:
        return {}
    stored = index.catalog.vectors_for(list(ids), index.dim)
    found = [i for i in ids if i in stored]
    if not found:
        return {}
    scores = np.array([stored[i] for i in found], dtype=np.float32) @ np.array([r["vector"] for r in usable]).T
    out: dict[int, list[str]] = {}
    for row, image_id in enumerate(found):
        names = [r["name"] for c, r in enumerate(usable) if scores[row, c] >= float(r["fit"].get("cosine_threshold", np.inf))]
        if names:
            out[int(image_id)] = names
    return out


def accepted_ids(vectors, concept: ConceptVector) -> np.ndarray:
    """Sorted ids of the photos the concept says yes to: those whose vector scores at least its
    threshold along its direction (a FAISS range search, every list of an IVF index scanned; an
    index without range search is ranked whole)."""
    from retriever.layered import range_ids

    query = np.ascontiguousarray(concept.vector[None, :], dtype=np.float32)
    found = range_ids(vectors, query, float(concept.cosine_threshold))
    if found is not None:
        return found
    scores, ids = vectors.search(query, len(vectors))
    keep = (ids[0] != -1) & (scores[0] >= concept.cosine_threshold)
    return np.unique(ids[0][keep].astype(np.int64))


def export_concept(index, name: str) -> dict[str, Any]:
    """A concept as JSON-able data (its model, examples with their vectors): `import_concept`
    reads it into another index of the same model."""
    from retriever.store.concepts import examples_of

    row = _require(index.catalog, name)
    rows = examples_of(index.catalog, row["id"])
    return {"format": EXPORT_FORMAT, "name": row["name"], "model_id": row["model_id"], "dim": row["dim"],
            "examples": [{"label": e["label"], "path": e["path"], "vector": [round(float(v), 7) for v in e["vector"]]}
                         for e in rows]}


def import_concept(index, data: dict[str, Any], name: str | None = None, vectors=None) -> dict[str, Any]:
    """A concept exported from an index of the same model, added (its examples appended) and refitted here."""
    try:
        if int(data.get("format", 0)) != EXPORT_FORMAT:
            raise ConceptError(f"not a concept file of format {EXPORT_FORMAT} (format {data.get('format')!r})")
        model_id, dim = str(data["model_id"]), int(data["dim"])
        name = check_name(name or str(data["name"]))
        rows = [(int(e["label"]), np.asarray(e["vector"], dtype=np.float32)) for e in data["examples"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConceptError(f"not a concept file: {exc.__class__.__name__} {exc}") from None
    if model_id != index.model_id or dim != index.dim:
        raise ConceptError(f"concept {name!r} was learned with model {model_id} and index {index.name!r} uses "
                           f"{index.model_id}: its vectors do not compare; add its examples again here")
    if any(v.shape != (dim,) or not np.isfinite(v).all() for _, v in rows) or not any(label > 0 for label, _ in rows):
        raise ConceptError("the concept file's examples are damaged (wrong length, not finite, or no positive)")
    examples = [(1 if label > 0 else -1, None, "import", _unit(v)) for label, v in rows]
    return _save_and_refit(index, name, examples, vectors)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v
