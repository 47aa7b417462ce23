"""Zero-shot tags: each image gets the labels it shows, stored in the catalog.

    retriever tag                                 the built-in vocabulary (a few hundred concepts)
    retriever tag --labels "cat, dog, receipt"    the vocabulary and these labels
    retriever tag --labels "cat, dog" --only      these labels alone
    retriever tag                                 later, after `retriever index`: the new images
    retriever search "..." --tag beach / retriever tags / retriever untag PATH LABEL

Labels are stored normalised (`normalize_label`): lower-case, surrounding whitespace stripped,
inner runs of whitespace made one space. "Beach ", "beach" and "BEACH" are one label.

A label's text vector is the normalised mean of its prompt embeddings over DEFAULT_TEMPLATES
("a photo of a {}."). Image vectors are the catalog's
stored vectors: no image is read again. The decision is open-world and per label
(retriever/tag_rule.py): a label is kept when it describes the photo better than a fixed
background of everyday concepts (the built-in vocabulary, retriever/tag_vocabulary.py), so a
photo may get no tag, one label alone works, and neither other labels nor other photos change a
photo's tags.

The label set, its text vectors and the background's, templates, threshold, calibration and
model id are stored together (settings key catalog.TAG_SET_KEY); changing the labels, the
threshold or the model scores every image again (tags of unchanged labels come out the same).
Tags a user removed (`untag`) are remembered and never written again.
"""

from __future__ import annotations

import base64
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from retriever.errors import RetrieverError
from retriever.tag_rule import (
    FITTED,
    Calibration,
    background_mask,
    calibration_for,
    confidence,
    decision_scores,
)
from retriever.tag_vocabulary import vocabulary, vocabulary_embeddings

# One prompt: CLIP's 12-prompt photo ensemble measured the same for the offline encoder (test
# precision 0.710 / recall 0.502 against 0.697 / 0.509, benchmarks/tags.py) at 12 times the text
# encoding, and the background alone is 384 texts a model.
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
WORD_TEMPLATE = ("{}",)  # near-synonyms are judged on the bare words (tag_rule.py)
DEFAULT_THRESHOLD = 0.5  # on the stored confidence: 0.5 is the fitted decision (tag_rule.py)
MAX_LABEL_CHARS = 100
CHUNK = 10_000  # image vectors scored per transaction: 28 MB of float32 at dim 704


class TagError(RetrieverError):
    """A label set that cannot be used (empty, duplicated, unreadable), or nothing to tag."""


# -- labels -----------------------------------------------------------------------------------------


def normalize_label(text: str) -> str:
    """How a label is stored and matched: lower-case, stripped, inner whitespace made one space."""
    return " ".join(str(text).split()).lower()


def parse_labels(text: str) -> list[str]:
    """'cat, Dog ,beach' -> ['cat', 'dog', 'beach']: commas or newlines separate labels, empty
    items (a trailing comma) are skipped. TagError when none is left; the set as a whole is
    checked by check_labels when it is used (with --add, together with the stored labels)."""
    labels = [label for line in text.splitlines() for item in line.split(",") if (label := normalize_label(item))]
    if not labels:
        raise TagError("no labels given: name them, e.g. --labels 'cat, dog, beach'")
    return labels


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """Labels from a text file: one a line (or comma-separated); blank lines and lines starting
    with '#' are skipped."""
    try:
        content = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TagError(f"labels file not found: {path}") from None
    except IsADirectoryError:
        raise TagError(f"labels file is a folder: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TagError(f"cannot read labels file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    lines = [line for line in content.splitlines() if not line.lstrip().startswith("#")]
    try:
        return parse_labels("\n".join(lines))
    except TagError as exc:
        raise TagError(f"{path}: {exc}") from None


def check_labels(labels: Sequence[str]) -> list[str]:
    """Normalised, non-empty labels -> the same list, or TagError saying what is wrong."""
    labels = [label for label in labels if label]
    if not labels:
        raise TagError("no labels given: name them, e.g. --labels 'cat, dog, beach'")
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    duplicates = [label for label, n in counts.items() if n > 1]
    if duplicates:
        raise TagError(f"duplicate labels: {', '.join(duplicates)} (labels are compared lower-case)")
    too_long = [label for label in labels if len(label) > MAX_LABEL_CHARS]
    if too_long:
        raise TagError(f"label longer than {MAX_LABEL_CHARS} characters: {too_long[0][:40]}...")
    return list(labels)


# -- the label set ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagSet:
    """A label set and everything its tags were computed with."""

    labels: tuple[str, ...]  # normalised, in the order given (the vocabulary's after the user's)
    background: tuple[str, ...]  # the concepts each label is judged against (the vocabulary)
    templates: tuple[str, ...]  # prompts, "{}" standing for the label
    threshold: float  # keep a label when its confidence is at least this
    calibration: Calibration  # the decision rule's constants (tag_rule.py)
    model_id: str  # the encoder the text vectors come from
    texts: tuple[str, ...] = field(repr=False)  # labels, then background concepts not among them
    embeddings: np.ndarray = field(repr=False)  # (len(texts), dim) float32, rows L2-normalised
    synonyms: tuple[tuple[str, ...], ...] = field(repr=False, default=())  # per label: background left out
    vocabulary: bool = False  # the built-in vocabulary is among the labels
    created_at: str = ""  # UTC ISO

    @property
    def mask(self) -> np.ndarray:
        """(len(background), len(labels)) float32: 1 where a concept counts against a label."""
        row = {concept: i for i, concept in enumerate(self.background)}
        out = np.ones((len(self.background), len(self.labels)), np.float32)
        for j, left_out in enumerate(self.synonyms):
            out[[row[c] for c in left_out], j] = 0.0
        return out

    @property
    def label_vectors(self) -> np.ndarray:
        return self.embeddings[: len(self.labels)]

    @property
    def background_vectors(self) -> np.ndarray:
        row = {text: i for i, text in enumerate(self.texts)}
        return self.embeddings[[row[b] for b in self.background]]

    def describe(self) -> dict[str, Any]:
        """Everything but the vectors (for `retriever tags` and JSON)."""
        return {
            "labels": list(self.labels), "templates": list(self.templates), "threshold": self.threshold,
            "calibration": asdict(self.calibration), "model_id": self.model_id, "vocabulary": self.vocabulary,
            "background_size": len(self.background), "created_at": self.created_at,
        }

    def to_json(self) -> dict[str, Any]:
        blob = np.ascontiguousarray(self.embeddings, dtype="<f4").tobytes()
        return {**self.describe(), "background": list(self.background), "texts": list(self.texts),
                "synonyms": [list(s) for s in self.synonyms],
                "dim": int(self.embeddings.shape[1]), "embeddings": base64.b64encode(blob).decode()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TagSet | None:
        """None for a set stored by the old closed-world rule (it is replaced on the next run)."""
        if "background" not in data:
            return None
        texts = tuple(data["texts"])
        vectors = np.frombuffer(base64.b64decode(data["embeddings"]), dtype="<f4").reshape(len(texts), data["dim"])
        return cls(
            labels=tuple(data["labels"]),
            background=tuple(data["background"]),
            templates=tuple(data["templates"]),
            threshold=float(data["threshold"]),
            calibration=Calibration(**data["calibration"]),
            model_id=data["model_id"],
            texts=texts,
            synonyms=tuple(tuple(s) for s in data["synonyms"]),
            embeddings=vectors.astype(np.float32),
            vocabulary=bool(data.get("vocabulary", False)),
            created_at=data.get("created_at", ""),
        )


def learned_logit_scale(encoder) -> float | None:
    """The model's learned logit scale (open_clip keeps its log as `model.logit_scale`), or None."""
    learned = getattr(getattr(encoder, "model", None), "logit_scale", None)
    if learned is None:
        return None
    try:
        if hasattr(learned, "detach"):  # a torch parameter
            learned = learned.detach()
        value = float(learned.exp()) if hasattr(learned, "exp") else math.exp(float(learned))
    except (TypeError, ValueError, RuntimeError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def label_embeddings(encoder, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(len(labels), dim) float32: each label's prompts embedded (unit rows), averaged, normalised."""
    from retriever.encoders.base import l2_normalize

    # str.replace, not format: a label may hold braces.
    prompts = [template.replace("{}", label) for label in labels for template in templates]
    per_prompt = encoder.embed_texts(prompts).reshape(len(labels), len(templates), -1)
    return l2_normalize(per_prompt.mean(axis=1))


def score_tags(vectors: np.ndarray, tag_set: TagSet, mask: np.ndarray | None = None) -> np.ndarray:
    """(n, dim) image vectors -> (n, len(labels)) confidences; a label is kept where >= threshold.
    `mask`: the set's mask, when the caller scores many chunks."""
    mask = tag_set.mask if mask is None else mask
    return confidence(decision_scores(vectors, tag_set.label_vectors, tag_set.background_vectors, mask,
                                      tag_set.calibration))


def kept_labels(confidences: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """-> (rows, label indices) of the kept tags: confidence >= threshold. No label is forced."""
    return np.nonzero(confidences >= threshold)


# -- a run ------------------------------------------------------------------------------------------


@dataclass
class TagRun:
    labels: list[str]
    threshold: float
    scored: int  # images scored by this run
    # None: the stored set, incremental. Else why every image was scored again:
    # "new" (first set) | "labels" | "added" | "threshold" | "templates" | "model"
    # | "calibration" (a set decided by an earlier rule of the model)
    change: str | None
    previous_labels: list[str] | None  # the set this run replaced
    counts: dict[str, int]  # images per label, whole index (labels with none left out)
    tagged: int  # images scored under the set, whole index (with or without tags)
    with_tags: int  # images that have at least one tag
    untagged: int  # images with a vector not scored yet
    vocabulary: bool
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tag_index(
    index,
    *,
    labels: Sequence[str] | None = None,
    only: bool = False,
    add: bool = False,
    threshold: float | None = None,
    encoder=None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    on_progress: Callable[[int, int], None] | None = None,
    chunk: int = CHUNK,
    cache_dir: str | os.PathLike | None = None,
) -> TagRun:
    """Tag the images of an opened Index not yet scored under the label set. Needs the writer lock
    (a vector must not change between its scoring and its tags' commit).

    labels None: the stored set (the built-in vocabulary when there is none); []: the vocabulary
    alone, replacing the stored set. labels given: the vocabulary and these labels (only=True: these alone), replacing the stored set; add=True adds
    them to the stored set. threshold: None keeps the stored one (DEFAULT_THRESHOLD for a new
    set). encoder: an Encoder, or a callable that loads one, called only when a text needs its
    vector; None: the index's own encoder. A changed set drops every tag first (same transaction)
    and scores every image again; removed tags (`untag`) stay removed. Work is committed every
    `chunk` images: an interrupted run is finished by the next one."""
    started = time.monotonic()
    catalog = index.catalog
    if catalog.counts()["stored_vectors"] == 0:
        raise TagError(f"index {index.name!r} has no images yet: run `retriever index PATH` first")
    raw = catalog.tag_set()
    stored = TagSet.from_json(raw) if raw else None
    if raw and stored is None and labels is None and not add:  # a set of the old closed-world rule
        labels, only = list(raw.get("labels", [])), True  # keeps its labels, tagged anew
    load = _encoder_loader(index, encoder)
    wanted, change = _wanted_tag_set(stored, labels, only, add, threshold, tuple(templates), index.model_id, load,
                                     cache_dir)
    if change is not None:
        catalog.replace_tag_set(wanted.to_json())

    coverage = catalog.tag_coverage()
    total = coverage["untagged"]
    done = 0
    mask = wanted.mask
    for ids, vecs in catalog.iter_untagged_vectors(index.dim, chunk) if total else ():
        p = score_tags(vecs, wanted, mask)
        rows, cols = kept_labels(p, wanted.threshold)
        catalog.write_tags(
            ids.tolist(), [(int(ids[r]), wanted.labels[c], float(p[r, c])) for r, c in zip(rows, cols)]
        )
        done += len(ids)
        if on_progress is not None:
            on_progress(done, total)

    after = catalog.tag_coverage()
    return TagRun(
        labels=list(wanted.labels),
        threshold=wanted.threshold,
        scored=done,
        change=change,
        previous_labels=list(stored.labels) if change is not None and stored is not None else None,
        counts=catalog.tag_counts(),
        tagged=after["tagged"],
        with_tags=after["with_tags"],
        untagged=after["untagged"],
        vocabulary=wanted.vocabulary,
        seconds=round(time.monotonic() - started, 3),
    )


def make_tag_set(encoder, labels: Sequence[str] = (), *, only: bool = True, threshold: float | None = None,
                 templates: Sequence[str] = DEFAULT_TEMPLATES, cache_dir: str | os.PathLike | None = None) -> TagSet:
    """A label set for `encoder` without an index (benchmarks, previews): the one `tag_index`
    would store for these arguments. Score vectors with score_tags."""
    return _wanted_tag_set(None, list(labels) if labels or only else None, only, False, threshold, tuple(templates),
                           encoder.model_id, lambda: encoder, cache_dir)[0]


def _encoder_loader(index, encoder) -> Callable[[], Any]:
    if encoder is None:
        return index.load_encoder
    if hasattr(encoder, "embed_texts"):
        return lambda: encoder
    return encoder


def _wanted_tag_set(
    stored: TagSet | None,
    labels: Sequence[str] | None,
    only: bool,
    add: bool,
    threshold: float | None,
    templates: tuple[str, ...],
    model_id: str,
    load_encoder: Callable[[], Any],
    cache_dir=None,
) -> tuple[TagSet, str | None]:
    """-> (the label set to tag with, why it differs from the stored one or None)."""
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise TagError(f"--threshold must be between 0 and 1 (exclusive), not {threshold}")
    if labels is None and (add or only):
        raise TagError(f"{'--add' if add else '--only'} needs labels: --labels 'a, b'")
    use_vocabulary = not only
    # A stored set decided by an earlier rule of this model: the same labels, decided anew.
    outdated = (stored is not None and stored.model_id == model_id and model_id in FITTED
                and stored.calibration != FITTED[model_id])
    if labels is None and outdated and not add:
        labels, use_vocabulary, templates = _user_labels(stored), stored.vocabulary, stored.templates
        if not labels and not use_vocabulary:
            labels = list(stored.labels)
    if labels is None:
        if stored is None:
            labels = []  # the built-in vocabulary alone
        elif stored.model_id != model_id:
            labels, use_vocabulary, templates = _user_labels(stored), stored.vocabulary, stored.templates
        elif threshold is None or threshold == stored.threshold:
            return stored, None
        else:
            return replace(stored, threshold=threshold, created_at=_utcnow()), "threshold"
    elif not labels:  # an empty list: the built-in vocabulary alone
        if only or add:
            raise TagError(f"{'--add' if add else '--only'} needs labels: --labels 'a, b'")
    else:
        labels = check_labels([normalize_label(label) for label in labels])
        if add:
            if stored is None:
                raise TagError("--add extends the stored label set, and there is none yet: use --labels alone")
            already = [label for label in labels if label in stored.labels]
            if already:
                raise TagError(f"already in the label set: {', '.join(already)}")
            labels, use_vocabulary, templates = _user_labels(stored) + labels, stored.vocabulary, stored.templates
    vocab = vocabulary()
    all_labels = list(dict.fromkeys(list(labels) + (list(vocab) if use_vocabulary else [])))
    chosen_threshold = threshold if threshold is not None else (stored.threshold if stored else DEFAULT_THRESHOLD)

    reusable = stored is not None and stored.model_id == model_id and stored.templates == templates
    if reusable and not outdated and all_labels == list(stored.labels) and stored.vocabulary == use_vocabulary:
        if chosen_threshold == stored.threshold:
            return stored, None
        return replace(stored, threshold=chosen_threshold, created_at=_utcnow()), "threshold"

    # Text vectors already stored for these templates and this model are kept; only the rest
    # needs the encoder (the vocabulary's come from the per-model cache).
    known = dict(zip(stored.texts, stored.embeddings)) if reusable else {}
    left_out = dict(zip(stored.labels, stored.synonyms)) if reusable and not outdated else {}
    calibration = stored.calibration if reusable and not outdated else None
    missing = [label for label in all_labels if label not in known or label not in left_out]
    if missing or calibration is None or not all(text in known for text in vocab):
        encoder = load_encoder()
        _check_model(encoder, model_id)
        calibration = calibration or calibration_for(model_id, learned_logit_scale(encoder))

        def cached(chosen):
            return vocabulary_embeddings(model_id, chosen, lambda texts: label_embeddings(encoder, texts, chosen),
                                         cache_dir)

        known.update(zip(vocab, cached(templates)))
        if missing:
            known.update(zip(missing, label_embeddings(encoder, missing, templates)))
            words = label_embeddings(encoder, missing, WORD_TEMPLATE)
            mask = background_mask(words, cached(WORD_TEMPLATE), calibration.synonym_cosine)
            for j, label in enumerate(missing):
                left_out[label] = tuple(vocab[i] for i in np.nonzero(mask[:, j] == 0)[0])
    texts = tuple(dict.fromkeys(all_labels + list(vocab)))
    tag_set = TagSet(
        labels=tuple(all_labels),
        background=vocab,
        templates=templates,
        threshold=chosen_threshold,
        calibration=calibration,
        model_id=model_id,
        texts=texts,
        synonyms=tuple(left_out[label] for label in all_labels),
        embeddings=np.stack([known[text] for text in texts]).astype(np.float32),
        vocabulary=use_vocabulary,
        created_at=_utcnow(),
    )
    if stored is None:
        change = "new"
    elif stored.model_id != model_id:
        change = "model"
    elif outdated:
        change = "calibration"
    elif add:
        change = "added"
    else:
        change = "labels" if set(all_labels) != set(stored.labels) or not reusable else "templates"
    return tag_set, change


def _user_labels(stored: TagSet) -> list[str]:
    """The stored labels that are not the vocabulary's own (the user's)."""
    vocab = set(vocabulary()) if stored.vocabulary else set()
    return [label for label in stored.labels if label not in vocab]


def _check_model(encoder, model_id: str) -> None:
    if encoder.model_id != model_id:
        raise TagError(f"the encoder gives {encoder.model_id}, the index holds {model_id} vectors")


# -- reading and removing tags ----------------------------------------------------------------------


def tags_overview(catalog) -> dict[str, Any]:
    """For `retriever tags`: the label set (without its vectors), per label the images that have
    it and their mean and best confidence (most used first; labels with no image left out), and
    how many images are scored / not yet / have a tag."""
    from retriever.store.tags import label_stats

    raw = catalog.tag_set()
    tag_set = TagSet.from_json(raw) if raw else None
    stats = label_stats(catalog)
    return {
        "tag_set": tag_set.describe() if tag_set else None,
        "labels": [{"label": label, **row} for label, row in stats.items()],
        **catalog.tag_coverage(),
    }


def _file_rows(catalog, path: str) -> list[dict[str, Any]]:
    from retriever.files import absolute

    full = absolute(path)
    rows = [r for r in catalog.image_rows(catalog.ids_under(full)).values() if r["path"] == full]
    if not rows:
        raise TagError(f"not in the index: {path}")
    rows.sort(key=lambda r: -1 if r["frame_ms"] is None else r["frame_ms"])
    return rows


def tags_of_file(catalog, path: str) -> list[dict[str, Any]]:
    """The tags of one indexed file: one entry per item (an image; a video's frames), each
    {"id", "path", "frame_ms", "status", "scored", "tags": [{"label", "score"}, ...] best first};
    "scored": tagged under the stored label set (it may still have no tag)."""
    from retriever.store.tags import scored_ids

    rows = _file_rows(catalog, path)
    scored = scored_ids(catalog, [r["id"] for r in rows])
    return [
        {
            "id": int(r["id"]),
            "path": r["path"],
            "frame_ms": r["frame_ms"],
            "status": r["status"],
            "scored": int(r["id"]) in scored,
            "tags": [{"label": label, "score": round(score, 6)} for label, score in catalog.image_tags(r["id"])],
        }
        for r in rows
    ]


def untag(catalog, path: str | None, label: str, *, image_id: int | None = None) -> int:
    """Remove `label` from a file (every frame of a video) or one item by id, and remember the
    removal: later runs never tag it again. Returns how many tags were removed (0 when it had
    none: the removal is still remembered)."""
    from retriever.store.tags import reject_tag

    label = normalize_label(label)
    if not label:
        raise TagError("no label given")
    if image_id is not None:
        if not catalog.image_rows([image_id]):
            raise TagError(f"no item with id {image_id}")
        ids = [int(image_id)]
    elif path is not None:
        ids = [int(r["id"]) for r in _file_rows(catalog, path)]
    else:
        raise TagError("untag needs a path or an item id")
    return reject_tag(catalog, ids, label)


def untag_in_index(index, path: str | None, label: str, *, image_id: int | None = None) -> int:
    """untag on an opened Index, read-only ones included (a server's): the removal is one short
    transaction of its own, safe next to a running indexer, so it needs no writer lock."""
    catalog = index.catalog
    if hasattr(catalog, "engine"):
        return untag(catalog, path, label, image_id=image_id)
    from retriever.store.catalog import Catalog

    writable = Catalog(catalog.path)
    try:
        return untag(writable, path, label, image_id=image_id)
    finally:
        writable.close()


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
