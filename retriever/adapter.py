"""A collection's adapter (`retriever adapt`): a learned linear map that bends text queries toward
what this collection's labels mean (concepts, your tag labels, folder names, captions), applied on
the fly. No photo is re-encoded and the vector index is not rebuilt.

The map acts on the query side only: q' = normalize(q + D q). Scoring q' . x is the bilinear score
q^T (I + D)^T x, the same as mapping every stored image vector by (I + D)^T, so nothing stored
changes and a search costs one more dim x dim product (benchmarks/adapt_adapter.py: speed).

The fit (closed form, milliseconds to seconds). Each label l gives text rows t (its name prompted
"a photo of a {}." and bare; a caption as it is) and photos whose mean is m_l. With m the mean of
the collection, the residual D solves

    min_D  sum_rows ||D t - s_l (m_l - m)||^2  +  mu sum_a ||D a||^2  +  lambda ||D||^2
    D = R^T T G^-1,   G = T^T T + mu A^T A + lambda I,   s_l = strength * n_l / (n_l + shrink)

Anchors a are the built-in tag vocabulary's texts (retriever/tag_vocabulary.py; those within
ANCHOR_COSINE of a label row left out): everyday queries are held where they are, which is what
keeps unrelated queries from getting worse. Centring the targets on the collection's mean keeps
the labels' photos from rising for every query. D has rank at most the number of text rows.

Chosen by measurement (benchmarks/adapt_adapter.py --fit: class-held-out cross-validation within
caltech101-train; reported on caltech101-test): see DEFAULT_PARAMS. Rivals on the same protocol:
plain ridge to the labels' normalised means (no centring, no anchors) cost the held-out classes
0.04-0.20 mAP, residuals (rank 32, or full) trained with InfoNCE and a distillation loss on the
anchors 0.08-0.10; a label lookup that moves only near copies of a label's text lost nothing
(measured while choosing) but does nothing for a query that is not a label: not kept.

Files, beside the catalog: adapter.npz (the residual and, inside it, its description: one
atomic file, so a reader never sees one version's matrix with another's description) and
adapter.json (the same description, for people). An adapter of another model or dimension is
ignored (load_adapter returns None; adapter_status says why) and `retriever adapt --remove`
deletes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from retriever.errors import RetrieverError

FORMAT = 1
ADAPTER_FILE = "adapter.npz"
INFO_FILE = "adapter.json"
SOURCES = ("concepts", "tags", "folders", "captions")
MIN_LABELS = 2  # labels with photos an adapter needs
MIN_FOLDER_PHOTOS = 2  # a folder with fewer photos is no label
MAX_PHOTOS_PER_LABEL = 200  # a label's mean is taken over at most this many of its photos (a seeded draw)
MAX_LABEL_PHOTOS = 100_000  # photos read for all labels together (fewer per label beyond)
MAX_CAPTIONS = 20_000  # captions used as labels, the newest
MEAN_SAMPLE = 20_000  # random photos the collection's mean is taken over
ANCHOR_COSINE = 0.9  # a vocabulary anchor this close to a label row is not held in place
CHECK_POOL = 5_000  # random photos the held-out check ranks (besides the held-out ones)
CHECK_MAX_LABELS = 300  # labels scored per group by the held-out check
CHECK_PHOTOS = 50  # held-out photos per label, at most


class AdapterError(RetrieverError):
    """An adapter that cannot be fitted, saved or read."""


class NoLabelsError(AdapterError):
    """Nothing in the index to fit an adapter from."""


class TooFewLabelsError(AdapterError):
    """Fewer labels with photos than an adapter needs (MIN_LABELS)."""


@dataclass(frozen=True)
class AdapterParams:
    """The fit's constants (module docstring); the defaults are the fitted ones."""

    ridge: float = 0.1  # lambda: pulls D toward zero in every direction
    anchor_weight: float = 3.0  # mu: holds the vocabulary's texts in place
    strength: float = 1.5  # how far a label's text moves toward its photos' (centred) mean
    shrink: float = 1.0  # a label of n photos moves n / (n + shrink) as far: one photo is a weak label

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# benchmarks/adapt_adapter.py --fit: on caltech101-train (3 draws of 51 fitted / 50 held-out
# classes, 20 photos a fitted class, 10 a class ranked among distractors-tune), the grid's best
# fitted-class mAP (0.728; zero-shot 0.486) whose held-out classes lost at most 0.01, asked both as
# "a photo of a {class}" (0.509 vs 0.517) and bare (0.474 vs 0.483). shrink: the same protocol at
# 1-20 photos a label (one photo a label: held-out -0.004 with shrink 1, -0.020 without).
DEFAULT_PARAMS = AdapterParams()


@dataclass(frozen=True)
class Adapter:
    """A fitted map. residual: (dim, dim) float32 D; info: its description (model_id, dim,
    version, sources, params, fitted_at, check)."""

    residual: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return str(self.info.get("model_id"))

    @property
    def dim(self) -> int:
        return int(self.residual.shape[0])

    @property
    def version(self) -> int:
        return int(self.info.get("version", 0))

    def apply(self, vector: np.ndarray) -> np.ndarray:
        """One query vector (dim,) -> the adapted unit vector, float32. einsum, not `@`: BLAS's
        threaded matrix-vector product, between FAISS's OpenMP searches on a busy machine, took
        milliseconds instead of microseconds (benchmarks/adapt_adapter.py); einsum's own loop takes
        ~0.1 ms at 704-d on one core, every time."""
        q = np.asarray(vector, dtype=np.float32)
        out = q + np.einsum("ij,j->i", self.residual, q)
        norm = float(np.linalg.norm(out))
        return (out / norm).astype(np.float32) if norm > 0 else q

    def apply_many(self, vectors: np.ndarray) -> np.ndarray:
        """(n, dim) -> (n, dim) adapted unit rows, float32."""
        q = np.asarray(vectors, dtype=np.float32)
        out = q + q @ self.residual.T
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def adapt_query(adapter: Adapter | None, vector: np.ndarray) -> np.ndarray:
    """A text term's vector through the adapter; without one (none fitted, --no-adapter, another
    model's) the very same array comes back."""
    return vector if adapter is None else adapter.apply(vector)


# -- the fit ---------------------------------------------------------------------------------------


def fit_residual(text_rows: np.ndarray, targets: np.ndarray, anchors: np.ndarray | None,
                 params: AdapterParams = DEFAULT_PARAMS) -> np.ndarray:
    """text_rows (r, d) unit texts, targets (r, d) where each row should move (already scaled),
    anchors (a, d) texts held in place -> D (d, d) float32 (module docstring)."""
    t = np.asarray(text_rows, dtype=np.float64)
    d = t.shape[1]
    gram = t.T @ t + params.ridge * np.eye(d)
    if anchors is not None and len(anchors):
        a = np.asarray(anchors, dtype=np.float64)
        a = a[(a @ t.T).max(axis=1) < ANCHOR_COSINE] if len(t) else a
        gram += params.anchor_weight * (a.T @ a)
    # G symmetric: D^T = G^-1 T^T R
    return np.linalg.solve(gram, t.T @ np.asarray(targets, dtype=np.float64)).T.astype(np.float32)


def fit_labels(text_rows: np.ndarray, row_label: np.ndarray, photos: Sequence[np.ndarray], mean: np.ndarray,
               anchors: np.ndarray | None, params: AdapterParams = DEFAULT_PARAMS) -> np.ndarray:
    """The residual D from labels: text_rows (r, d), row_label (r,) the label of each row,
    photos[l] (n_l, d) label l's photo vectors, mean (d,) the collection's mean vector."""
    counts = np.array([len(p) for p in photos], dtype=np.float64)
    means = np.stack([np.asarray(p, dtype=np.float64).mean(axis=0) for p in photos])
    scale = params.strength * counts / (counts + params.shrink)
    residuals = scale[:, None] * (means - np.asarray(mean, dtype=np.float64)[None, :])
    return fit_residual(text_rows, residuals[np.asarray(row_label)], anchors, params)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one ranking: scores (n,), relevant (n,) bool; ties broken by position."""
    hits = relevant[np.argsort(-scores, kind="stable")]
    ranks = np.flatnonzero(hits) + 1
    return float((np.arange(1, len(ranks) + 1) / ranks).mean()) if len(ranks) else 0.0


def held_out_check(texts: Sequence[str], text_rows: np.ndarray, row_label: np.ndarray, queries: np.ndarray,
                   photos: Sequence[np.ndarray], keys: Sequence[np.ndarray], pool_keys: np.ndarray,
                   pool: np.ndarray, mean: np.ndarray, anchors: np.ndarray | None,
                   params: AdapterParams = DEFAULT_PARAMS) -> dict[str, Any]:
    """How the adapter changes the labels' own queries, measured on photos it was not fitted on:
    every fourth label (by a hash of its text; with at least 4 labels) is left out of the fit
    ("held_out": unrelated queries must not get worse), and of each other label with 3 or more
    photos a third is kept back ("fitted": its query should find them better). Each label's
    query (queries[l]: its bare text) ranks the kept-back photos among `pool` (random collection
    photos, those fitted on left out); mAP before and after. keys: photo ids (-1: from outside)."""
    n = len(texts)
    order = sorted(range(n), key=lambda i: _hash(texts[i]))
    held = set(order[3::4]) if n >= 4 else set()
    fit_photos: list[np.ndarray] = []
    fit_keys: list[np.ndarray] = []
    fitted_ids: list[int] = []
    evaluated: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # label -> (keys, vectors) to find
    for i in range(n):
        if i in held:
            evaluated[i] = (keys[i][:CHECK_PHOTOS], photos[i][:CHECK_PHOTOS])
            continue
        back = len(photos[i]) // 3 if len(photos[i]) >= 3 else 0
        rank = np.argsort([_hash(f"{texts[i]}/{j}") for j in range(len(photos[i]))])
        kept, used = rank[:back], rank[back:]
        if back:
            evaluated[i] = (keys[i][kept][:CHECK_PHOTOS], photos[i][kept][:CHECK_PHOTOS])
        fit_photos.append(photos[i][used])
        fitted_ids.append(i)
        fit_keys.append(keys[i][used])
    if not evaluated or not fitted_ids:
        return {"fitted": None, "held_out": None, "pool": 0}
    fitted_on = np.concatenate(fit_keys)
    pool_keep = ~np.isin(pool_keys, fitted_on[fitted_on >= 0])
    pool_keys, pool = pool_keys[pool_keep], pool[pool_keep]
    remap = {old: new for new, old in enumerate(fitted_ids)}
    use = np.isin(row_label, fitted_ids)
    residual = fit_labels(text_rows[use], np.array([remap[int(r)] for r in row_label[use]], dtype=np.int64),
                          fit_photos, mean, anchors, params)
    adapter = Adapter(residual)
    # the ranked set: the pool and every photo to find, each photo once (outside ones by label)
    all_keys, all_vectors = [pool_keys], [pool]
    for i, (k, v) in evaluated.items():
        all_keys.append(np.where(k >= 0, k, -(i + 1) * 1_000_000 - np.arange(len(k))))
        all_vectors.append(v)
    ranked_keys = np.concatenate(all_keys)
    ranked_keys, first = np.unique(ranked_keys, return_index=True)
    ranked = np.concatenate(all_vectors)[first].astype(np.float32)
    out: dict[str, Any] = {"pool": len(ranked)}
    for group, members in (("fitted", [i for i in evaluated if i not in held]), ("held_out", sorted(held))):
        members = sorted(members, key=lambda i: _hash(texts[i]))[:CHECK_MAX_LABELS]
        if not members:
            out[group] = None
            continue
        before, after = [], []
        plain = np.asarray(queries, dtype=np.float32)[members]
        for q_plain, q_adapted, i in zip(plain, adapter.apply_many(plain), members):
            k = evaluated[i][0]
            wanted = np.where(k >= 0, k, -(i + 1) * 1_000_000 - np.arange(len(k)))
            relevant = np.isin(ranked_keys, wanted)
            before.append(average_precision(ranked @ q_plain, relevant))
            after.append(average_precision(ranked @ q_adapted, relevant))
        out[group] = {"labels": len(members), "photos": int(sum(len(evaluated[i][0]) for i in members)),
                      "map_before": round(float(np.mean(before)), 4), "map_after": round(float(np.mean(after)), 4)}
    return out


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


# -- files -----------------------------------------------------------------------------------------


def adapter_path(index) -> Path:
    return Path(index.folder) / ADAPTER_FILE


def save_adapter(index, residual: np.ndarray, info: dict[str, Any]) -> Adapter:
    """Write the adapter beside the index's catalog (atomically: a search sees the old one or
    the new one), its version one more than the one it replaces. Returns it."""
    from retriever.durable import atomic_write

    previous = _read_info(Path(index.folder) / INFO_FILE)
    info = {**info, "format": FORMAT, "version": int(previous.get("version", 0)) + 1}
    residual = np.ascontiguousarray(residual, dtype=np.float32)
    blob = np.frombuffer(json.dumps(info).encode("utf-8"), dtype=np.uint8)

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, residual=residual, info=blob)

    atomic_write(adapter_path(index), write_npz)
    atomic_write(Path(index.folder) / INFO_FILE, lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
    _CACHE.pop(str(index.folder), None)
    return Adapter(residual, info)


def read_adapter(path: Path) -> Adapter:
    """The adapter in an adapter.npz; AdapterError when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            residual = np.asarray(data["residual"], dtype=np.float32)
            info = json.loads(bytes(data["info"]).decode("utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"no adapter at {path}") from None
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise AdapterError(f"unreadable adapter {path}: {exc}") from None
    if residual.ndim != 2 or residual.shape[0] != residual.shape[1] or not np.isfinite(residual).all():
        raise AdapterError(f"unreadable adapter {path}: its matrix is {residual.shape}, or not finite")
    return Adapter(residual, info)


def _check_fits(adapter: Adapter, index) -> str | None:
    """Why the adapter cannot serve this index, or None."""
    if adapter.info.get("format") != FORMAT:
        return f"it has format {adapter.info.get('format')}, this retriever reads {FORMAT}: run `retriever adapt` again"
    if adapter.model_id != index.model_id or adapter.dim != index.dim:
        return (f"it was fitted for {adapter.model_id} ({adapter.dim}-d), the index holds {index.model_id} "
                f"({index.dim}-d) vectors: run `retriever adapt` again, or `retriever adapt --remove`")
    return None


def load_adapter(index) -> Adapter | None:
    """The index's adapter, or None: none fitted, unreadable, or another model's (see
    adapter_status for why)."""
    try:
        adapter = read_adapter(adapter_path(index))
    except AdapterError:
        return None
    return None if _check_fits(adapter, index) else adapter


def adapter_status(index) -> dict[str, Any]:
    """{"state": "none" | "active" | "ignored", "reason": why not active (None when it is),
    "path", and the adapter's description when there is one}."""
    path = adapter_path(index)
    if not path.exists():
        return {"state": "none", "reason": "no adapter: run `retriever adapt` to fit one", "path": str(path)}
    try:
        adapter = read_adapter(path)
    except AdapterError as exc:
        return {"state": "ignored", "reason": f"{exc} (`retriever adapt` fits a new one)", "path": str(path)}
    why = _check_fits(adapter, index)
    return {"state": "ignored" if why else "active", "reason": f"ignored: {why}" if why else None,
            "path": str(path), **adapter.info}


def remove_adapter(index) -> bool:
    """Delete the index's adapter files; False when there were none."""
    from retriever.durable import fsync_folder

    removed = False
    for name in (ADAPTER_FILE, INFO_FILE):
        try:
            (Path(index.folder) / name).unlink()
            removed = True
        except FileNotFoundError:
            pass
    if removed:
        fsync_folder(Path(index.folder))
    _CACHE.pop(str(index.folder), None)
    return removed


# folder -> (file signature, adapter or None): a long-lived process stats the file per query and
# reads it again only when it changed (a new `retriever adapt`, a --remove)
_CACHE: dict[str, tuple[tuple[int, int, int], Adapter | None]] = {}


def adapter_for(index) -> Adapter | None:
    """The adapter a search of this index applies (None: none, or ignored): one stat() a call,
    the file read again only when it changed."""
    key = str(index.folder)
    try:
        st = os.stat(adapter_path(index))
    except OSError:
        _CACHE.pop(key, None)
        return None
    signature = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _CACHE.get(key)
    if cached is None or cached[0] != signature:
        cached = (signature, load_adapter(index))
        _CACHE[key] = cached
    return cached[1]


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


# -- from an index ---------------------------------------------------------------------------------


@dataclass
class FitReport:
    """What `retriever adapt` fitted: the adapter, its labels per source, what was left out and
    why, the held-out check (held_out_check) and the seconds it took."""

    adapter: Adapter
    sources: dict[str, int]
    skipped: dict[str, int]
    labels: int
    photos: int
    check: dict[str, Any]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.adapter.version, "model_id": self.adapter.model_id, "dim": self.adapter.dim,
                "labels": self.labels, "photos": self.photos, "sources": self.sources, "skipped": self.skipped,
                "params": self.adapter.info.get("params"), "check": self.check, "seconds": round(self.seconds, 2),
                "fitted_at": self.adapter.info.get("fitted_at")}


def fit_index(index, encoder: Any | Callable[[], Any], *, sources: Sequence[str] = ("concepts", "tags", "captions"),
              params: AdapterParams = DEFAULT_PARAMS, check: bool = True,
              say: Callable[[str], None] | None = None, cache_dir: str | os.PathLike | None = None) -> FitReport:
    """Fit the index's adapter from its labels (collect_labels) and save it. encoder: the index's
    encoder, or a callable that loads it (called only once there are labels). Raises
    NoLabelsError / TooFewLabelsError, saving nothing."""
    from retriever.store.adapter import sample_vectors

    started = time.monotonic()
    say = say or (lambda message: None)
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise AdapterError(f"unknown label source {unknown[0]!r}: use {', '.join(SOURCES)}")
    labels, counts, skipped = collect_labels(index, sources)
    labels, keys, photos = label_vectors(index, labels)
    if not labels:
        raise NoLabelsError(_nothing_to_fit(sources, skipped))
    if len(labels) < MIN_LABELS:
        raise TooFewLabelsError(
            f"only 1 label with photos ({labels[0].source[:-1]} {labels[0].text!r}); an adapter needs at least "
            f"{MIN_LABELS}: add concepts (`retriever concept add`), tag with your own labels "
            f"(`retriever tag --labels ...`), or use --folders-as-labels")
    texts = [label.text for label in labels]
    encoder = encoder if hasattr(encoder, "embed_texts") else encoder()
    say(f"embedding {len(texts)} label texts ...")
    text_rows, row_label, queries = label_text_rows(encoder, texts, [label.prompted for label in labels])
    anchors = anchor_texts(index.model_id, encoder, cache_dir)
    say("reading a sample of the collection ...")
    pool_keys, pool = sample_vectors(index.catalog, index.dim, MEAN_SAMPLE)
    mean = pool.astype(np.float64).mean(axis=0) if len(pool) else np.zeros(index.dim)
    result: dict[str, Any] = {}
    if check:
        say("checking on held-out labels and photos ...")
        result = held_out_check(texts, text_rows, row_label, queries, photos, keys, pool_keys[:CHECK_POOL],
                                pool[:CHECK_POOL], mean, anchors, params)
    residual = fit_labels(text_rows, row_label, photos, mean, anchors, params)
    info = {"model_id": index.model_id, "dim": index.dim, "sources": counts, "skipped": skipped,
            "labels": len(texts), "photos": int(sum(len(p) for p in photos)), "params": params.as_dict(),
            "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "check": result}
    adapter = save_adapter(index, residual, info)
    return FitReport(adapter, counts, skipped, len(texts), info["photos"], result, time.monotonic() - started)


def label_text_rows(encoder, texts: Sequence[str], prompted: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (text rows (r, d), the label of each row (r,), each label's bare query (n, d)): a prompted
    label gives two rows, "a photo of a {label}." (the tags' template) and its bare text; a
    caption one, its text. Fitting both forms serves a query typed either way (measured:
    benchmarks/adapt_adapter.py)."""
    from retriever.encoders.base import l2_normalize
    from retriever.tags import DEFAULT_TEMPLATES, label_embeddings

    bare = l2_normalize(encoder.embed_texts(list(texts)))
    which = [i for i, p in enumerate(prompted) if p]
    rows, row_label = [bare], [np.arange(len(texts))]
    if which:
        rows.append(label_embeddings(encoder, [texts[i] for i in which], DEFAULT_TEMPLATES))
        row_label.append(np.asarray(which, dtype=np.int64))
    return np.concatenate(rows), np.concatenate(row_label).astype(np.int64), bare


def anchor_texts(model_id: str, encoder, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The built-in vocabulary's texts, prompted and bare (both cached per model, shared with
    `retriever tag`): a query typed either way is held in place."""
    from retriever.tag_vocabulary import vocabulary_embeddings
    from retriever.tags import DEFAULT_TEMPLATES, WORD_TEMPLATE, label_embeddings

    return np.concatenate([vocabulary_embeddings(model_id, templates, lambda c, t=templates: label_embeddings(encoder, c, t),
                                                 cache_dir) for templates in (DEFAULT_TEMPLATES, WORD_TEMPLATE)])


# -- labels ----------------------------------------------------------------------------------------


@dataclass
class Label:
    text: str
    source: str  # one of SOURCES
    image_ids: list[int] = field(default_factory=list)  # catalog photos
    vectors: np.ndarray | None = None  # a concept's own example vectors (photos from outside too)
    prompted: bool = True  # a name ("a photo of a {}." and bare), not a sentence (a caption)


# camera and download folders: no meaning to learn (DCF "100CANON", "DCIM", ...)
_DULL_FOLDER = re.compile(r"^(\d{3}[a-z0-9_]{5}|dcim|camera|camera roll|images?|pictures?|photos?|img|misc|"
                          r"new folder|untitled|unsorted|te?mp|downloads?|desktop|export|import)$")


def folder_label(name: str) -> str | None:
    """A folder's name as a label ("Beach_Trip-2019" -> "beach trip 2019"), or None for a name
    without meaning (fewer than 3 letters, a camera's or a download folder)."""
    raw = name.strip().lower()
    text = " ".join(re.sub(r"[_\-.]+", " ", raw).split())
    if sum(c.isalpha() for c in text) < 3 or _DULL_FOLDER.match(raw) or _DULL_FOLDER.match(text):
        return None
    return text


def collect_labels(index, sources: Sequence[str]) -> tuple[list[Label], dict[str, int], dict[str, int]]:
    """The labels of the index from `sources` (SOURCES), labels of the same text merged ->
    (labels, labels found per source, {what was left out: how many})."""
    from retriever.store import adapter as sql

    catalog, found, skipped = index.catalog, [], {}

    def skip(reason: str, n: int = 1) -> None:
        if n:
            skipped[reason] = skipped.get(reason, 0) + n

    if "concepts" in sources:
        from retriever.store.concepts import (
            concept_rows,
            examples_of,
            has_concepts_table,
        )

        for row in concept_rows(catalog) if has_concepts_table(catalog) else []:
            if row["model_id"] != index.model_id or int(row["dim"]) != index.dim:
                skip("concepts of another model")
                continue
            positives = [e["vector"] for e in examples_of(catalog, row["id"]) if e["label"] > 0]
            if not positives:
                skip("concepts without a photo that shows them")
                continue
            found.append(Label(row["name"], "concepts", vectors=np.stack(positives).astype(np.float32)))
    if "tags" in sources:
        from retriever.tag_vocabulary import vocabulary

        tag_set = catalog.tag_set() or {}
        vocab = set(vocabulary()) if tag_set.get("vocabulary") else set()
        removed = sql.rejection_counts(catalog)
        own = (set(tag_set.get("labels") or []) - vocab) | set(removed)
        tagged = sql.tag_photo_ids(catalog)
        skip("built-in vocabulary tags (not your labels)", len(set(tagged) - own))
        found += [Label(label, "tags", ids) for label, ids in tagged.items() if label in own]
    if "folders" in sources:
        folders: dict[str, list[int]] = {}
        dull: set[str] = set()
        for image_id, path in sql.indexed_paths(catalog):
            name = os.path.basename(os.path.dirname(path))
            text = folder_label(name)
            if text is None:
                dull.add(name)
            else:
                folders.setdefault(text, []).append(image_id)
        skip("folders whose name means nothing (a camera's, digits)", len(dull))
        small = [text for text, ids in folders.items() if len(ids) < MIN_FOLDER_PHOTOS]
        skip(f"folders with fewer than {MIN_FOLDER_PHOTOS} photos", len(small))
        found += [Label(text, "folders", ids) for text, ids in folders.items() if len(ids) >= MIN_FOLDER_PHOTOS]
    if "captions" in sources:
        found += [Label(" ".join(text.split()), "captions", [image_id], prompted=False)
                  for image_id, text in sql.caption_texts(catalog, MAX_CAPTIONS) if text.strip()]
    counts = {source: sum(1 for label in found if label.source == source) for source in sources}
    merged: dict[tuple[str, bool], Label] = {}
    for label in found:
        key = (label.text.lower(), label.prompted)
        if key not in merged:
            merged[key] = Label(label.text, label.source, list(label.image_ids), label.vectors, label.prompted)
            continue
        into = merged[key]
        into.image_ids = sorted(set(into.image_ids) | set(label.image_ids))
        if label.vectors is not None:
            into.vectors = label.vectors if into.vectors is None else np.concatenate([into.vectors, label.vectors])
    return list(merged.values()), counts, skipped


def label_vectors(index, labels: Sequence[Label]) -> tuple[list[Label], list[np.ndarray], list[np.ndarray]]:
    """-> (the labels that have photos, each one's photo keys (catalog ids; -1: a concept's own
    example), each one's photo vectors (n, dim) float32). A label's photos beyond
    MAX_PHOTOS_PER_LABEL (fewer when MAX_LABEL_PHOTOS would be passed) are a seeded draw."""
    cap = MAX_PHOTOS_PER_LABEL
    total = sum(min(len(label.image_ids), cap) for label in labels)
    if total > MAX_LABEL_PHOTOS:
        cap = max(5, cap * MAX_LABEL_PHOTOS // total)
    chosen = [sorted(label.image_ids, key=lambda i: (i * 2654435761) % 2**32)[:cap] for label in labels]
    stored = index.catalog.vectors_for(sorted({i for ids in chosen for i in ids}), index.dim)
    kept, keys, photos = [], [], []
    for label, ids in zip(labels, chosen):
        ids = [i for i in ids if i in stored]  # a photo removed meanwhile
        vectors = [stored[i] for i in ids]
        key = list(ids)
        if label.vectors is not None:
            vectors += list(label.vectors)
            key += [-1] * len(label.vectors)
        if vectors:
            kept.append(label)
            keys.append(np.asarray(key, dtype=np.int64))
            photos.append(np.asarray(vectors, dtype=np.float32).reshape(-1, index.dim))
    return kept, keys, photos


def _nothing_to_fit(sources: Sequence[str], skipped: dict[str, int]) -> str:
    names = {"concepts": "no concepts with photos", "tags": "no tags of your own labels",
             "folders": "no folder with a usable name", "captions": "no captions"}
    left = "; left out: " + ", ".join(f"{n} {why}" for why, n in skipped.items()) if skipped else ""
    hint = "add concepts (`retriever concept add NAME PHOTO...`), tag with your labels (`retriever tag --labels ...`)"
    if "folders" not in sources:
        hint += ", or use --folders-as-labels"
    return f"nothing to fit an adapter from: {', '.join(names[s] for s in sources)}{left}; {hint}"
