"""Zero-shot tags: each image gets the labels of a label set that it shows, stored in the catalog.

    retriever tag --labels "cat, dog, beach, receipt"   score every image, store its tags
    retriever tag                                         after `retriever index`: tag the new images
    retriever search "..." --tag beach / retriever tags  use them

Labels are stored normalised (`normalize_label`): lower-case, surrounding whitespace stripped,
inner runs of whitespace made one space. "Beach ", "beach" and "BEACH" are one label.

Scoring
-------
A label's text vector is the normalised mean of its prompt embeddings over a template ensemble
(DEFAULT_TEMPLATES, "a photo of a {}.", "a blurry photo of a {}.", ...): CLIP's prompt
ensembling, with templates that describe photographs rather than ImageNet's renditions
(origami, video games). Each prompt embedding is unit length; their mean is normalised again,
as open_clip's zero-shot classifier does. (For the offline encoder the ensemble is neutral:
Caltech-101 top-1 over its 101 classes is 0.527 with "a photo of a {}." alone, 0.521 with the
ensemble, its image side being built on that one prompt; ensembles are for CLIP, where they pay.)
Image vectors are the catalog's stored vectors: no image is read or encoded again, only the
label texts go through the encoder, and their vectors are stored with the label set, so a run
after `retriever index` loads no model at all.

Calibration
-----------
An image's probability for label l is the softmax over the label set of its cosines at the
model's logit scale s:

    p_l = exp(s * cos(image, l)) / sum_k exp(s * cos(image, k))

A label is kept when p_l >= threshold (default 0.25), and the image's top label always. p_l is
the stored score. Why:

* It is the classifier the model was trained as. CLIP's contrastive loss is a softmax over texts
  at its learned scale: open_clip models carry it (`logit_scale`, 100 for the OpenAI and LAION
  weights), so it is read from the model, not guessed. Cosines of different encoders live on
  different scales (CLIP's matching pairs around 0.3; the offline encoder's text-image cosines
  are 0.4 times a MiniLM cosine); probabilities do not, so one threshold means the same thing
  for every encoder. p_l is "the chance that l is the best description among those given".
* The offline encoder has no learned scale. Its s = 60 was fitted by temperature scaling
  (minimum negative log-likelihood, Guo et al. 2017) on Caltech-101 (2,893 images, 101 classes,
  the classes as labels). It carries over to small label sets: on 300 random subsets of 2 / 5 /
  10 / 20 classes, the mean top probability is 0.92 / 0.81 / 0.73 / 0.66 for a top-1 accuracy
  of 0.90 / 0.81 / 0.73 / 0.68 (expected calibration error 0.02 for each size).
* An image's tags depend on its vector and the label set only. An incremental run tags new
  images exactly as a full run would, and a photo's tags do not move when others are added.
  Thresholds drawn from the collection's score distribution were measured and set aside:
  subtracting each label's median score over the collection (a cure for "hub" labels that score
  high on everything) gained 1-5 points of top-1 on balanced Caltech collections, but where one
  label dominates the collection - the normal state of a photo library - it collapsed (2 labels,
  80 % of the photos one of them: top-1 0.88 -> 0.58).
* threshold 0.25 keeps a second label only when the model is unsure between them: with two
  labels, when their cosines are within ln(3) / s (0.018 for s = 60, 0.011 for CLIP's 100).
  On Caltech subsets of 5 labels it keeps 1.2 labels an image and the right one for 83 % of
  them (top-1 alone: 81 %); 0.1 keeps 1.8 labels for 92 %; 0.4 keeps 1.02 for 78 %.

On examples/photos (offline encoder) with "cat, coffee, rocket, flower, coins": the cat,
coffee, rocket and flower photos get their label alone at p >= 0.98; the eleven others, which
show none of these (coins.png included: ImageNet, hence the offline encoder, has no coin class),
get a top label at p 0.41-0.73.

Label sets of one label are refused: a softmax over one label is 1 for every image, so it would
tag the whole collection. Two labels are a choice between them. The softmax is closed-world: a
photo that shows none of the labels still gets its closest one, with a low probability (the
stored score says so). The label set's embeddings, templates, threshold, scale and model id
are stored together (settings key catalog.TAG_SET_KEY); changing any of them drops every tag
in the same transaction and the run tags every image again.
"""

from __future__ import annotations

import base64
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from retriever.errors import RetrieverError

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a blurry photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a good photo of a {}.",
    "a bad photo of a {}.",
    "a black and white photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
)
DEFAULT_THRESHOLD = 0.25
# Fitted scales for encoders that have no learned one, by exact model id (see the module doc).
MEASURED_LOGIT_SCALES = {"offline/conse-effnetlite0-minilm/v1": 60.0}
DEFAULT_LOGIT_SCALE = 100.0  # CLIP's, for an encoder that has none and was never measured
CALIBRATION = "softmax/v1"  # softmax over the label set at the logit scale; p >= threshold, and the top label
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
    if len(labels) == 1:
        raise TagError(
            f"one label ({labels[0]!r}) would tag every image: each image gets the best of the labels "
            "given, so name the alternatives too, e.g. --labels 'cat, dog, landscape'"
        )
    return list(labels)


# -- the label set ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagSet:
    """A label set and everything its tags were computed with."""

    labels: tuple[str, ...]  # normalised, in the order given
    templates: tuple[str, ...]  # prompts, "{}" standing for the label
    threshold: float  # keep a label when its probability is at least this (the top label always)
    logit_scale: float  # s in softmax(s * cosine)
    model_id: str  # the encoder the label vectors come from
    embeddings: np.ndarray = field(repr=False)  # (len(labels), dim) float32, rows L2-normalised
    created_at: str = ""  # UTC ISO
    calibration: str = CALIBRATION

    def describe(self) -> dict[str, Any]:
        """Everything but the vectors (for `retriever tags` and JSON)."""
        out = {k: v for k, v in asdict(self).items() if k != "embeddings"}
        out["labels"], out["templates"] = list(self.labels), list(self.templates)
        return out

    def to_json(self) -> dict[str, Any]:
        blob = np.ascontiguousarray(self.embeddings, dtype="<f4").tobytes()
        return {**self.describe(), "dim": int(self.embeddings.shape[1]), "embeddings": base64.b64encode(blob).decode()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TagSet":
        labels = tuple(data["labels"])
        vectors = np.frombuffer(base64.b64decode(data["embeddings"]), dtype="<f4").reshape(len(labels), data["dim"])
        return cls(
            labels=labels,
            templates=tuple(data["templates"]),
            threshold=float(data["threshold"]),
            logit_scale=float(data["logit_scale"]),
            model_id=data["model_id"],
            embeddings=vectors.astype(np.float32),
            created_at=data.get("created_at", ""),
            calibration=data.get("calibration", CALIBRATION),
        )


def logit_scale(encoder) -> float:
    """s for the softmax: the scale fitted for this model id, else the model's learned scale
    (open_clip keeps its log as `model.logit_scale`), else CLIP's 100."""
    measured = MEASURED_LOGIT_SCALES.get(encoder.model_id)
    if measured is not None:
        return measured
    learned = getattr(getattr(encoder, "model", None), "logit_scale", None)
    if learned is not None:
        try:
            if hasattr(learned, "detach"):  # a torch parameter
                learned = learned.detach()
            value = float(learned.exp()) if hasattr(learned, "exp") else math.exp(float(learned))
        except (TypeError, ValueError, RuntimeError):
            value = float("nan")
        if math.isfinite(value) and value > 0:
            return value
    return DEFAULT_LOGIT_SCALE


def label_embeddings(encoder, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(len(labels), dim) float32: each label's prompts embedded (unit rows), averaged, normalised."""
    from retriever.encoders.base import l2_normalize

    # str.replace, not format: a label may hold braces.
    prompts = [template.replace("{}", label) for label in labels for template in templates]
    per_prompt = encoder.embed_texts(prompts).reshape(len(labels), len(templates), -1)
    return l2_normalize(per_prompt.mean(axis=1))


def label_probabilities(vectors: np.ndarray, tag_set: TagSet) -> np.ndarray:
    """(n, dim) image vectors -> (n, len(labels)) softmax probabilities over the label set."""
    logits = tag_set.logit_scale * (np.asarray(vectors, dtype=np.float32) @ tag_set.embeddings.T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits, dtype=np.float64)
    return p / p.sum(axis=1, keepdims=True)


def kept_labels(probabilities: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """-> (rows, label indices) of the kept tags: p >= threshold, and each row's top label."""
    keep = probabilities >= threshold
    keep[np.arange(len(probabilities)), probabilities.argmax(axis=1)] = True
    return np.nonzero(keep)


# -- a run ------------------------------------------------------------------------------------------


@dataclass
class TagRun:
    labels: list[str]
    threshold: float
    scored: int  # images scored by this run
    # None: the stored set, incremental. Else why every image was tagged again:
    # "new" (first set) | "labels" | "added" | "threshold" | "templates" | "model"
    change: str | None
    previous_labels: list[str] | None  # the set this run replaced
    counts: dict[str, int]  # images per label, whole index, every label of the set
    tagged: int  # images with tags, whole index
    untagged: int  # images with a vector and no tags yet
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tag_index(
    index,
    *,
    labels: Sequence[str] | None = None,
    add: bool = False,
    threshold: float | None = None,
    encoder=None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    on_progress: Callable[[int, int], None] | None = None,
    chunk: int = CHUNK,
) -> TagRun:
    """Tag the images of an opened Index that have no tags under the label set. Needs the writer
    lock (a vector must not change between its scoring and its tags' commit).

    labels: a new set (normalised here; replaces the stored one), or with add=True labels added to
    it; None: the stored set. threshold: None keeps the stored one (DEFAULT_THRESHOLD for a new
    set). encoder: an Encoder, or a callable that loads one, called only when a label needs its
    text vector; None: the index's own encoder. A changed set drops every tag first (same
    transaction) and then tags every image. Work is committed every `chunk` images: an
    interrupted run is finished by the next one. on_progress(done, total) after each chunk."""
    started = time.monotonic()
    catalog = index.catalog
    if catalog.counts()["stored_vectors"] == 0:
        raise TagError(f"index {index.name!r} has no images yet: run `retriever index PATH` first")
    raw = catalog.tag_set()
    stored = TagSet.from_json(raw) if raw else None
    load = _encoder_loader(index, encoder)
    wanted, change = _wanted_tag_set(stored, labels, add, threshold, tuple(templates), index.model_id, load)
    if change is not None:
        catalog.replace_tag_set(wanted.to_json())

    coverage = catalog.tag_coverage()
    total = coverage["untagged"]
    done = 0
    for ids, vecs in catalog.iter_untagged_vectors(index.dim, chunk) if total else ():
        p = label_probabilities(vecs, wanted)
        rows, cols = kept_labels(p, wanted.threshold)
        catalog.write_tags(
            ids.tolist(), [(int(ids[r]), wanted.labels[c], float(p[r, c])) for r, c in zip(rows, cols)]
        )
        done += len(ids)
        if on_progress is not None:
            on_progress(done, total)

    counts = catalog.tag_counts()
    return TagRun(
        labels=list(wanted.labels),
        threshold=wanted.threshold,
        scored=done,
        change=change,
        previous_labels=list(stored.labels) if change is not None and stored is not None else None,
        counts={**counts, **{label: 0 for label in wanted.labels if label not in counts}},
        tagged=coverage["tagged"] + done,  # exact: the writer lock keeps the vectors still
        untagged=coverage["untagged"] - done,
        seconds=round(time.monotonic() - started, 3),
    )


def _encoder_loader(index, encoder) -> Callable[[], Any]:
    if encoder is None:
        return index.load_encoder
    if hasattr(encoder, "embed_texts"):
        return lambda: encoder
    return encoder


def _wanted_tag_set(
    stored: TagSet | None,
    labels: Sequence[str] | None,
    add: bool,
    threshold: float | None,
    templates: tuple[str, ...],
    model_id: str,
    load_encoder: Callable[[], Any],
) -> tuple[TagSet, str | None]:
    """-> (the label set to tag with, why it differs from the stored one or None)."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise TagError(f"--threshold must be between 0 and 1, not {threshold}")
    if labels is None:
        if add:
            raise TagError("--add needs labels: --add --labels 'a, b'")
        if stored is None:
            raise TagError("no label set yet: give one, e.g. retriever tag --labels 'cat, dog, beach'")
        if stored.model_id != model_id:
            labels = list(stored.labels)
        elif threshold is None or threshold == stored.threshold:
            return stored, None
        else:
            return replace(stored, threshold=threshold, created_at=_utcnow()), "threshold"
    labels = [normalize_label(label) for label in labels]
    if add:
        if stored is None:
            raise TagError("--add extends the stored label set, and there is none yet: use --labels alone")
        already = [label for label in labels if label in stored.labels]
        if already:
            raise TagError(f"already in the label set: {', '.join(already)}")
        labels = list(stored.labels) + labels
        templates = stored.templates
    labels = check_labels(labels)
    chosen_threshold = threshold if threshold is not None else (stored.threshold if stored else DEFAULT_THRESHOLD)

    reusable = stored is not None and stored.model_id == model_id and stored.templates == templates
    if reusable and set(labels) == set(stored.labels):
        if chosen_threshold == stored.threshold:
            return stored, None
        return replace(stored, threshold=chosen_threshold, created_at=_utcnow()), "threshold"

    # Label vectors already stored for these templates and this model are kept; only the rest
    # needs the encoder.
    known = {label: vec for label, vec in zip(stored.labels, stored.embeddings)} if reusable else {}
    missing = [label for label in labels if label not in known]
    scale = stored.logit_scale if reusable else None
    if missing:
        encoder = load_encoder()
        if encoder.model_id != model_id:
            raise TagError(f"the encoder gives {encoder.model_id}, the index holds {model_id} vectors")
        known.update(zip(missing, label_embeddings(encoder, missing, templates)))
        scale = logit_scale(encoder)
    tag_set = TagSet(
        labels=tuple(labels),
        templates=templates,
        threshold=chosen_threshold,
        logit_scale=scale,
        model_id=model_id,
        embeddings=np.stack([known[label] for label in labels]).astype(np.float32),
        created_at=_utcnow(),
    )
    if stored is None:
        change = "new"
    elif stored.model_id != model_id:
        change = "model"
    elif add:
        change = "added"
    else:
        change = "labels" if set(labels) != set(stored.labels) else "templates"
    return tag_set, change


# -- reading tags -----------------------------------------------------------------------------------


def tags_overview(catalog) -> dict[str, Any]:
    """For `retriever tags`: the label set (without its vectors), images per label (every label of
    the set, most used first), and how many images are tagged / not yet."""
    raw = catalog.tag_set()
    tag_set = TagSet.from_json(raw) if raw else None
    counts = catalog.tag_counts()
    if tag_set is not None:
        counts.update({label: 0 for label in tag_set.labels if label not in counts})
    return {
        "tag_set": tag_set.describe() if tag_set else None,
        "labels": [{"label": label, "images": n} for label, n in counts.items()],
        **catalog.tag_coverage(),
    }


def tags_of_file(catalog, path: str) -> list[dict[str, Any]]:
    """The tags of one indexed file: one entry per item (an image; a video's frames), each
    {"id", "path", "frame_ms", "status", "tags": [{"label", "score"}, ...] best first}."""
    from retriever.files import absolute

    full = absolute(path)
    rows = [r for r in catalog.image_rows(catalog.ids_under(full)).values() if r["path"] == full]
    if not rows:
        raise TagError(f"not in the index: {path}")
    rows.sort(key=lambda r: -1 if r["frame_ms"] is None else r["frame_ms"])
    return [
        {
            "id": int(r["id"]),
            "path": r["path"],
            "frame_ms": r["frame_ms"],
            "status": r["status"],
            "tags": [{"label": label, "score": round(score, 6)} for label, score in catalog.image_tags(r["id"])],
        }
        for r in rows
    ]


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
