"""Grounded answers: one chat with the k retrieved photos, numbered, and the question.

The chat (see prompts.ask_messages) is a system message that sets the task and one user message:
"Photo 1:" <image> "Photo 2:" <image> ... "Question: ...", written by the model's own chat
template and decoded greedily. The answer's citations ("Photo 2", "[2]", "#2", "photos 1 and
3", "the second photo" ...) are parsed back into photo numbers (`parse_citations`), so each
maps to the file the model was shown under that number.

Templates that do not interleave images with text (LLaVA-1.5's puts a message's images first)
still show the photos in order; the system message says that the first image is Photo 1.

With boxes (`ask --boxes`, a model that writes them: see grounding.py), the question asks for the
boxes of what the answer mentions, the answer is decoded with its box markup, and each box goes to
the photo its sentence cites ("In Photo 2 the <box>", "the <box> is in Photo 2": the citation
nearest before it, else after it), else the one cited last before it, else the first cited after
it, else Photo 1; it is mapped to that photo's pixels.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from retriever.errors import RetrieverError
from retriever.vlm.errors import VLMError
from retriever.vlm.grounding import BOX_SPAN, GroundedBox, find_boxes, place, require_grounding, strip_markup
from retriever.vlm.photos import in_viewing_order, load_photo, load_sized
from retriever.vlm.prompts import ASK_BOXES_HINTS, ask_messages

DEFAULT_ASK_K = 4
MAX_ASK_PHOTOS = 16  # photos in one chat: beyond this, small models lose track and contexts overflow
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass
class Answer:
    text: str
    citations: list[int]  # photo numbers (1-based) the answer cites, in order of first mention
    prompt_tokens: int  # text and image tokens the model read
    seconds: float  # preparing the inputs and generating
    markup: str | None = None  # with boxes: the answer as written, box markup included (text: without it)


def ask(vlm, question: str, photos: Sequence[Any], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, *,
        boxes: bool = False) -> Answer:
    """Ask `question` about `photos` (PIL images; photos[0] is Photo 1) in one chat. boxes: ask
    for the boxes of what the answer mentions too (a NoGroundingError for a model that writes none)."""
    question = " ".join(question.split())
    if not question:
        raise VLMError("empty question: say what to ask, e.g. retriever ask \"where was the red car?\"")
    if not photos:
        raise VLMError("no photos to ask about")
    if len(photos) > MAX_ASK_PHOTOS:
        raise VLMError(f"at most {MAX_ASK_PHOTOS} photos in one question, not {len(photos)}")
    started = time.monotonic()
    if boxes:
        family = require_grounding(vlm.family, vlm.model_id)
        prompt = vlm.prompt(ask_messages(question, len(photos), ASK_BOXES_HINTS.get(family.model_type)))
        markup = vlm.generate([prompt], list(photos), max_new_tokens, markup=True)[0]
        text = strip_markup(markup)
        return Answer(text, parse_citations(text, len(photos)), vlm.last_prompt_tokens, time.monotonic() - started,
                      markup)
    prompt = vlm.prompt(ask_messages(question, len(photos)))
    text = vlm.generate([prompt], list(photos), max_new_tokens)[0]
    return Answer(text, parse_citations(text, len(photos)), vlm.last_prompt_tokens, time.monotonic() - started)


# -- citations --------------------------------------------------------------------------------------

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen".split())}
_ORDINALS = {w: i for i, w in enumerate(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split()) if i}
_NUM = r"(?:\d+|" + "|".join(_NUMBER_WORDS) + r")"
_SEP = r"\s*(?:,|;|&|\band\b|\bor\b|-|–|\bto\b|\bthrough\b)\s*(?:and\s+)?"
_NOUN = r"(?:photo|photograph|image|picture|pic|img)s?"
# "Photo 2", "photos 1, 2 and 4", "images 1-3", "photo #2", "photo no. 2", "Photo two"
_LISTED = re.compile(rf"\b{_NOUN}\s*(?:#|no\.?|number)?\s*(?P<list>{_NUM}(?:{_SEP}#?{_NUM}\b)*)", re.I)
# "[2]", "[1, 3]", "[Photo 2]", "[photos 1 and 2]", "(Photo 3)" is caught by _LISTED
_BRACKETED = re.compile(rf"\[\s*(?:{_NOUN}\s*)?#?\s*(?P<list>\d+(?:{_SEP}#?\d+)*)\s*\]", re.I)
_HASHED = re.compile(r"(?<![\w&])#(?P<list>\d+)\b")
_ORDINAL = re.compile(
    r"\b(?P<ord>" + "|".join(_ORDINALS) + r"|\d+(?:st|nd|rd|th))\s+(?:one\s+)?" + _NOUN + r"\b", re.I)


def parse_citations(text: str, n_photos: int) -> list[int]:
    """Photo numbers that `text` cites, in order of first mention, each once, only 1..n_photos.

    Understands "Photo 2", "photos 1 and 3", "images 1-3" (a range), "photo #2", "Photo two",
    "[2]", "[1, 3]", "[Photo 2]", "#2", "the second photo", "2nd image". A number outside
    1..n_photos ("photo 2023") is not a citation."""
    return list(dict.fromkeys(n for _, n in cited_at(text, n_photos)))


def cited_at(text: str, n_photos: int) -> list[tuple[int, int]]:
    """(position in text, photo number) of every citation, in text order."""
    found: list[tuple[int, int]] = []  # (position, number)
    for pattern in (_LISTED, _BRACKETED, _HASHED):
        for m in pattern.finditer(text):
            found += [(m.start("list"), n) for n in _numbers(m.group("list"))]
    for m in _ORDINAL.finditer(text):
        word = m.group("ord").lower()
        number = _ORDINALS.get(word) or int(re.match(r"\d+", word).group())
        found.append((m.start(), number))
    found.sort()
    return [(at, n) for at, n in found if 1 <= n <= n_photos]


def _numbers(listed: str) -> list[int]:
    """'1, 2 and 4' -> [1, 2, 4]; '1-3' / '1 to 3' -> [1, 2, 3]."""
    tokens = re.findall(rf"{_NUM}|-|–|\bto\b|\bthrough\b", listed, re.I)
    out: list[int] = []
    ranging = False
    for token in tokens:
        low = token.lower()
        if low in ("-", "–", "to", "through"):
            ranging = bool(out)
            continue
        value = int(low) if low.isdigit() else _NUMBER_WORDS[low]
        if ranging and out and 0 < value - out[-1] <= MAX_ASK_PHOTOS:
            out.extend(range(out[-1] + 1, value + 1))
        else:
            out.append(value)
        ranging = False
    return out


# -- asking about search hits or files --------------------------------------------------------------


@dataclass
class AskedPhoto:
    number: int  # as the model saw it: Photo N
    path: str
    frame_ms: int | None = None
    hit: Any = None  # the search Hit it came from; None for a file given with --image
    cited: bool = False
    size: tuple[int, int] | None = None  # with boxes: (width, height) the boxes are in (after EXIF orientation)
    boxes: list[GroundedBox] | None = None  # with boxes: those the answer gave this photo

    @property
    def label(self) -> str:
        return self.hit.label if self.hit is not None else self.path

    def as_dict(self) -> dict[str, Any]:
        base = self.hit.as_dict() if self.hit is not None else {"path": self.path}
        out = {"n": self.number, "cited": self.cited, **base}
        if self.boxes is not None:
            out["boxes"] = [b.as_dict() for b in self.boxes]
            if self.size is not None:
                out["width"], out["height"] = self.size
        return out


@dataclass
class AskResult:
    question: str
    answer: str
    citations: list[int]
    photos: list[AskedPhoto]  # photos[i] is Photo i+1
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (label, reason): could not be decoded
    model: str = ""
    prompt_tokens: int = 0
    seconds: float = 0.0
    markup: str | None = None  # with boxes: the answer as the model wrote it, box markup included

    @property
    def cited(self) -> list[AskedPhoto]:
        return [self.photos[n - 1] for n in self.citations]

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "citations": self.citations,
            "cited_paths": [p.path for p in self.cited],
            "photos": [p.as_dict() for p in self.photos],
            "skipped": [{"path": label, "reason": reason} for label, reason in self.skipped],
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "seconds": round(self.seconds, 3),
            **({"raw_answer": self.markup} if self.markup is not None else {}),
        }


def ask_about(vlm, question: str, items: Sequence[Any], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
              load=load_photo, *, boxes: bool = False) -> AskResult:
    """Ask about search hits (in_viewing_order: a video's frames together, in time order) or files
    (paths, in the order given). Items that cannot be decoded are skipped and reported; the rest
    are numbered 1..n in the order the model sees them. boxes: see the module docstring; each
    photo then has its `boxes` (a NoGroundingError, before any photo is read, for a model
    that writes none)."""
    family = require_grounding(vlm.family, vlm.model_id) if boxes else None
    hits = [i for i in items if not isinstance(i, str)]
    ordered = in_viewing_order(hits) if hits and len(hits) == len(items) else list(items)
    photos: list[AskedPhoto] = []
    images: list[Any] = []
    skipped: list[tuple[str, str]] = []
    for item in ordered:
        if isinstance(item, str):
            photo = AskedPhoto(0, item)
        else:
            photo = AskedPhoto(0, item.path, item.meta.get("frame_ms"), item)
        try:
            size = _catalog_size(photo.hit) if boxes else None
            if boxes and size is None:  # a file: its size is read where it is decoded
                image, size = load_sized(photo.path, photo.frame_ms)
            else:
                image = load(photo.path, photo.frame_ms)
            images.append(image)
            photo.size = size
        except RetrieverError as exc:
            skipped.append((photo.label, str(getattr(exc, "reason", exc))))
            continue
        photo.number = len(photos) + 1
        photos.append(photo)
    if not photos:
        reasons = "; ".join(f"{label}: {reason}" for label, reason in skipped[:3])
        raise VLMError(f"none of the photos could be read ({reasons})")
    answer = ask(vlm, question, images, max_new_tokens, **({"boxes": True} if boxes else {}))
    for n in answer.citations:
        photos[n - 1].cited = True
    if family is not None:
        _give_boxes(vlm, family, answer.markup or "", photos, images)
    return AskResult(" ".join(question.split()), answer.text, answer.citations, photos, skipped, vlm.model_id,
                     answer.prompt_tokens, answer.seconds, answer.markup)


_SENTENCE_END = re.compile(r"[.!?;\n]+(?=\s|$)")


def strip_box_bodies(text: str) -> str:
    """`text` with what is inside box markup blanked, same length (its dots end no sentence)."""
    return re.sub(BOX_SPAN.pattern + r"|\{[^{}]*\}", lambda m: " " * len(m.group()), text)


def _catalog_size(hit: Any) -> tuple[int, int] | None:
    """A search hit's photo size from the catalog (after EXIF orientation), when it has one."""
    meta = getattr(hit, "meta", None) or {}
    width, height = meta.get("width"), meta.get("height")
    return (int(width), int(height)) if width and height else None


def _give_boxes(vlm, family, markup: str, photos: list[AskedPhoto], images: list[Any]) -> None:
    """Each box of the answer to its photo (see the module docstring), in that photo's pixels."""
    cited = cited_at(markup, len(photos))
    ends = [m.end() for m in _SENTENCE_END.finditer(strip_box_bodies(markup))]
    input_sizes: dict[int, tuple[int, int] | None] = {}
    for photo in photos:
        photo.boxes = []
    for raw in find_boxes(markup, family):
        start = max((e for e in ends if e <= raw.start), default=0)
        end = min((e for e in ends if e > raw.start), default=len(markup))
        before = [n for at, n in cited if at < raw.start]
        after = [n for at, n in cited if at > raw.start]
        same = [n for at, n in cited if start <= at < raw.start][-1:] + [n for at, n in cited if raw.start < at < end]
        n = same[0] if same else before[-1] if before else after[0] if after else 1
        if family.needs_input_size and n not in input_sizes:
            input_sizes[n] = vlm.input_size(images[n - 1])
        photo = photos[n - 1]
        size = photo.size or images[n - 1].size
        placed = place(raw, family, size[0], size[1], input_sizes.get(n))
        if placed is not None:
            photo.boxes.append(placed)
