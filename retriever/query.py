"""Combined queries: several text and image terms, weighted, some negated.

    retriever search beach + ref.jpg - people        "beach", plus the look of ref.jpg, minus people
    retriever search "red car" - 0.5*night           a half-weight negative term
    retriever search text:chelsea.png                force a term to be text (or image:NAME)
    retriever similar a.jpg b.jpg - text:snow        several images, minus a concept

Each command-line word is a term, or one of the operators `+` and `-`, which set the sign of the
term that follows (a term with no operator before it is added). A term may start with a weight,
`2*beach` or `0.5*ref.jpg`. In `search` a term is an image when it names an existing image or
video file and text otherwise; in `similar` every term is an image unless it starts with `text:`.
An image term may name a part of the image, `photo.jpg@x0,y0,x1,y1` (pixels of the photo as shown):
photos with something like that part.
`concept:NAME` is a concept learned from example photos (`retriever concept add NAME PHOTO...`):
`retriever search concept:rex + beach - concept:cat`.
The query vector is the normalised sum of the terms' weighted, L2-normalised embeddings (as in
rclip's `+`/`-` arithmetic), so a negative term pushes its concept down the ranking.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from retriever.errors import RetrieverError

TEXT = "text"
IMAGE = "image"
CONCEPT = "concept"
# A weight: what float() reads (so "1e3", "nan" and "inf" too: the last two are refused), then "*"
# A region of an image: PATH@x0,y0,x1,y1, in the photo's pixels after EXIF orientation.
_REGION = re.compile(r"^(?P<path>.+)@(?P<box>[0-9]+(?:\.[0-9]+)?(?:,[0-9]+(?:\.[0-9]+)?){3})$", re.S)
_WEIGHT = re.compile(r"^([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?|nan|inf|infinity)\*(.+)$", re.S | re.I)
_PREFIXES = {"text:": TEXT, "image:": IMAGE, "img:": IMAGE, "concept:": CONCEPT}


class QueryError(RetrieverError):
    """A query that cannot be understood or that says nothing (empty, all weights cancel)."""


@dataclass(frozen=True)
class Term:
    kind: Literal["text", "image", "concept"]
    value: str  # the text, the image's path as given, or the concept's name
    weight: float  # signed: negative terms push their concept down

    def describe(self) -> str:
        sign = "-" if self.weight < 0 else "+"
        w = abs(self.weight)
        scale = "" if w == 1 else f"{w:g}*"
        shown = self.value if self.kind == TEXT else f"{self.kind}:{self.value}"
        return f"{sign} {scale}{shown}"


def parse(words: Sequence[str], *, default: Literal["auto", "text", "image"] = "auto") -> list[Term]:
    """Command-line words -> terms. `default`: how a term without a `text:`/`image:` prefix is
    read: "auto" = an image if it names an existing image or video file, else text."""
    terms: list[Term] = []
    sign = 1.0
    pending_operator = False
    for word in words:
        if word in ("+", "-"):
            if pending_operator:
                raise QueryError(f"two operators in a row before {word!r}: put a term between them")
            sign = -1.0 if word == "-" else 1.0
            pending_operator = True
            continue
        if not word.strip():
            raise QueryError("empty query term: say what to look for, e.g. retriever search \"a dog on the beach\"")
        terms.append(_term(word, sign, default))
        sign, pending_operator = 1.0, False
    if pending_operator:
        raise QueryError("the query ends with an operator: add the term it applies to")
    if not terms:
        raise QueryError("empty query: say what to look for, e.g. retriever search \"a dog on the beach\"")
    if all(t.weight < 0 for t in terms):
        raise QueryError("only negative terms: add something to look for (e.g. beach - people)")
    return terms


def _term(word: str, sign: float, default: str) -> Term:
    weight = 1.0
    match = _WEIGHT.match(word)
    if match:
        weight = float(match.group(1))
        word = match.group(2)
        if not math.isfinite(weight):
            raise QueryError(f"the weight in {match.group(0)!r} is not a finite number")
        if weight == 0:
            raise QueryError(f"a weight of 0 in {match.group(0)!r} removes the term: drop it instead")
    kind = None
    for prefix, prefixed_kind in _PREFIXES.items():
        if word.lower().startswith(prefix):
            kind, word = prefixed_kind, word[len(prefix):]
            break
    if not word.strip():
        raise QueryError("empty query term after its prefix or weight")
    if kind is None:
        if default == "auto":
            kind = IMAGE if _looks_like_image_file(word) else TEXT
        else:
            kind = default
    if kind in (TEXT, CONCEPT):
        word = word.strip()
    return Term(kind, word, sign * weight)


def split_region(value: str) -> tuple[str, tuple[float, float, float, float] | None]:
    """An image term's value -> (its path, the region x0,y0,x1,y1 it names or None):
    `photo.jpg@120,40,560,380` is the part of photo.jpg from (120, 40) to (560, 380), in the
    photo's pixels as it is shown (after EXIF orientation)."""
    match = _REGION.match(value)
    if match is None:
        return value, None
    x0, y0, x1, y1 = (float(v) for v in match.group("box").split(","))
    if x1 <= x0 or y1 <= y0:
        raise QueryError(f"the region @{match.group('box')} is empty: give x0,y0,x1,y1 with x1 > x0 and y1 > y0")
    return match.group("path"), (x0, y0, x1, y1)


def _looks_like_image_file(word: str) -> bool:
    from retriever.files import IMAGE_SUFFIXES

    try:
        word = split_region(word)[0]
    except QueryError:  # an empty region: said when the image is used, not here
        word = word.rsplit("@", 1)[0]
    path = os.path.expanduser(word)
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES and os.path.isfile(path)


def keyword_text_of(terms: Sequence[Term]) -> str:
    """The words of the positive text terms: what keyword search and reranking read."""
    return " ".join(t.value for t in terms if t.kind == TEXT and t.weight > 0)


def concepts_only(terms: Sequence[Term]) -> bool:
    """A query of concepts alone, none subtracted (`concept:rex`, `--concept rex` with no words):
    a concept ranking, which retriever.search re-scores among its best photos by their neighbours."""
    return bool(terms) and all(t.kind == CONCEPT and t.weight > 0 for t in terms)


def describe(terms: Sequence[Term]) -> str:
    text = " ".join(t.describe() for t in terms)
    return text[2:] if text.startswith("+ ") else text


def words_of(q: str) -> list[str]:
    """Search-box text -> query words: split like a shell (quotes group), then the words between
    the operators + and - joined into one phrase, so `a cat on a sofa - dog` is two terms, the
    phrase and its negation, as `retriever search "a cat on a sofa" - dog`."""
    import shlex

    try:
        split = shlex.split(q)
    except ValueError as exc:
        raise QueryError(f"cannot read the query: {exc}") from None
    words: list[str] = []
    for word in split:
        if word in ("+", "-") or not words or words[-1] in ("+", "-"):
            words.append(word)
        else:
            words[-1] = f"{words[-1]} {word}"
    return words
