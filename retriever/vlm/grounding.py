"""Where in the photo: boxes read from a vision-language model's text, in the photo's pixels.

Each grounding-capable family writes boxes its own way (pure Python here; no torch):

    qwen2_vl     <|object_ref_start|>the dog<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>
                 corners in 0-1000 of the photo's width and height (Qwen2-VL paper, section 2.2)
    qwen2_5_vl   [{"bbox_2d": [x1, y1, x2, y2], "label": "dog"}] (or the box tokens above) in the
                 pixels of the model's resized input (Qwen2.5-VL's absolute coordinates)
    qwen3_vl     the JSON above, corners in 0-1000 again (Qwen3-VL)
    paligemma    <loc0123><loc0456><loc0789><loc1000> dog ; <loc...>x4 cat: y_min, x_min, y_max,
                 x_max, each in 1024ths of the model's square input (big_vision's PaliGemma README),
                 then the label; detections separated by " ; "
    florence2    dog<loc_52><loc_333><loc_932><loc_774>: a label, then x1, y1, x2, y2 each in 1000
                 bins (a bin's centre: (bin + 0.5) / 1000, as the processor's post_process_generation);
                 one phrase may carry several boxes (eight or more loc tokens)

A model squeezes or pads the photo to its input, but these coordinates are fractions of that input
(Qwen2.5-VL's: pixels of an input with the photo's aspect), so they map onto the original photo by
its width and height alone: the photo's size after EXIF orientation, as the catalog stores it.

Text from a model is untrusted, and a small or random model writes garbage: whatever the text
(truncated tokens, reversed or out-of-range corners, no end token, NaN, a box of no area), parsing
gives boxes clamped to the photo, or none; it never raises.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from retriever.vlm.errors import NoGroundingError

MAX_BOXES = 100  # per answer: a model looping on boxes is cut here
MAX_LABEL = 200  # characters


@dataclass(frozen=True)
class GroundedBox:
    """One box: what it shows, and where, [x0, y0, x1, y1] in the photo's pixels (after EXIF
    orientation), x0 < x1 and y0 < y1, within the photo."""

    label: str
    box: tuple[float, float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {"box": [round(v, 1) for v in self.box], "label": self.label}


@dataclass(frozen=True)
class Family:
    """How a model family writes boxes, and how it is asked for them."""

    model_type: str  # the config's model_type
    title: str  # for messages
    syntax: str  # "qwen" (box tokens, with "qwen_json" too where both occur), "paligemma", "florence2"
    scale: float | None  # model coordinates per photo side (1000, 1024); None: pixels of the model's input
    centre: bool = False  # a coordinate is a bin: its centre is bin + 0.5

    @property
    def needs_input_size(self) -> bool:
        return self.scale is None


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("qwen2_vl", "Qwen2-VL", "qwen", 1000.0),
    Family("qwen2_5_vl", "Qwen2.5-VL", "qwen_json", None),
    Family("qwen3_vl", "Qwen3-VL", "qwen_json", 1000.0),
    Family("paligemma", "PaliGemma", "paligemma", 1024.0),
    Family("florence2", "Florence-2", "florence2", 1000.0, centre=True),
)}


def grounding_family(model_type: str | None) -> Family | None:
    """The family of a model's config model_type, when it can give boxes; else None."""
    return FAMILIES.get(model_type or "")


def require_grounding(model_type: str | None, model_id: str = "") -> Family:
    """The family, or a NoGroundingError that says which models can give boxes."""
    family = grounding_family(model_type)
    if family is None:
        which = ", ".join(f.title for f in FAMILIES.values())
        name = f"{model_id} ({model_type})" if model_id else str(model_type)
        raise NoGroundingError(
            f"{name} gives no boxes: boxes need a {which} model "
            f"(e.g. --vlm florence-community/Florence-2-base or --vlm Qwen/Qwen2-VL-2B-Instruct)")
    return family


# -- markup -----------------------------------------------------------------------------------------

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_QWEN_BOX = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>\s*)?"
    r"<\|box_start\|>(?P<body>.*?)(?:<\|box_end\|>|(?=<\|)|$)", re.S)
_QWEN_CORNERS = re.compile(rf"^\s*\({_NUM},{_NUM}\)\s*,?\s*\({_NUM},{_NUM}\)\s*$")
_QWEN_JSON_BOX = re.compile(rf"[\"']bbox_2d[\"']\s*:\s*\[{_NUM},{_NUM},{_NUM},{_NUM}\]")
_JSON_LABEL = re.compile(r"[\"']label[\"']\s*:\s*\"((?:[^\"\\]|\\.)*)\"")
_PALIGEMMA = re.compile(r"((?:<loc\d{4}>){4})\s*(?:<seg\d{3}>)*\s*([^;<>]*)")
_FLORENCE = re.compile(r"(?:<loc_\d+>){4,}")
_LOC_VALUE = re.compile(r"<loc_?(\d+)>")
# Tokens that carry boxes: kept when a model's output is decoded (other special tokens are dropped)
_MARKUP_TOKEN = re.compile(
    r"^(?:<\|(?:box|object_ref|quad)_(?:start|end)\|>|<loc_?\d+>|<seg\d{3}>|<(?:od|/od|box|/box|ground|obj|poly|/poly|sep)>)$")
# a Qwen box (its end token may be missing), the other markup tokens
BOX_SPAN = re.compile(r"<\|box_start\|>(?:\s*\([^()<]{0,40}\)(?:\s*,)?){0,2}(?:\s*<\|box_end\|>)?")
_STRIP = re.compile(BOX_SPAN.pattern + r"|<\|(?:object_ref|box|quad)_(?:start|end)\|>|<loc_?\d+>|<seg\d{3}>")


def is_markup_token(token: str | None) -> bool:
    """Whether a (special) token is part of how a model writes boxes, to keep when decoding."""
    return bool(token) and bool(_MARKUP_TOKEN.match(token))


def strip_markup(text: str) -> str:
    """The text without box markup: a Qwen reference keeps its words, boxes and location tokens go."""
    text = _STRIP.sub("", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


# -- parsing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawBox:
    """A box as the model wrote it: x0, y0, x1, y1 in its own coordinates, at `start` in the text."""

    label: str
    corners: tuple[float, float, float, float]
    start: int


def find_boxes(text: str, family: Family | str) -> list[RawBox]:
    """Every box written in `text`, in the order written, in the model's own coordinates."""
    family = family if isinstance(family, Family) else require_grounding(family)
    if not isinstance(text, str) or not text:
        return []
    if family.syntax == "paligemma":
        found = _paligemma(text)
    elif family.syntax == "florence2":
        found = _florence(text)
    else:
        found = _qwen_tokens(text)
        if family.syntax == "qwen_json":
            found = sorted(found + _qwen_json(text), key=lambda b: b.start)
    return found[:MAX_BOXES]


def place(raw: RawBox, family: Family | str, width: float, height: float,
          input_size: tuple[float, float] | None = None) -> GroundedBox | None:
    """A model's box in the photo's pixels (width x height, after EXIF orientation): corners
    sorted, clamped to the photo; None when nothing of it is left (no area, not a number).
    input_size: the model input's (width, height) in pixels, for a family that writes pixels
    (Qwen2.5-VL); without it such coordinates are taken as the photo's own pixels."""
    family = family if isinstance(family, Family) else require_grounding(family)
    try:
        width, height = float(width), float(height)
        values = [float(v) + (0.5 if family.centre else 0.0) for v in raw.corners]
    except (TypeError, ValueError, OverflowError):
        return None
    if not (_finite(width, height, *values) and width > 0 and height > 0):
        return None
    if family.scale is not None:
        sx, sy = width / family.scale, height / family.scale
    elif input_size and _finite(*input_size) and input_size[0] > 0 and input_size[1] > 0:
        sx, sy = width / float(input_size[0]), height / float(input_size[1])
    else:
        sx = sy = 1.0
    x0, y0, x1, y1 = values[0] * sx, values[1] * sy, values[2] * sx, values[3] * sy
    x0, x1 = sorted((_clamp(x0, width), _clamp(x1, width)))
    y0, y1 = sorted((_clamp(y0, height), _clamp(y1, height)))
    if x1 - x0 <= 0 or y1 - y0 <= 0 or not _finite(x0, y0, x1, y1):
        return None
    return GroundedBox(raw.label, (x0, y0, x1, y1))


def parse_boxes(text: str, family: Family | str, width: float, height: float, *,
                input_size: tuple[float, float] | None = None, default_label: str = "") -> list[GroundedBox]:
    """The boxes in a model's text, in the photo's pixels (see find_boxes and place). A box
    without a label gets default_label. `family`: a Family or a model_type; a model_type that
    gives no boxes is a NoGroundingError, any text is not."""
    family = family if isinstance(family, Family) else require_grounding(family)
    placed = (place(raw, family, width, height, input_size) for raw in find_boxes(text, family))
    return [b if b.label else GroundedBox(default_label, b.box) for b in placed if b is not None]


def _qwen_tokens(text: str) -> list[RawBox]:
    out: list[RawBox] = []
    label = ""
    for m in _QWEN_BOX.finditer(text):
        if m.group("label") is not None:
            label = _label(m.group("label"))
        corners = _QWEN_CORNERS.match(m.group("body"))
        if corners:
            out.append(RawBox(label, _four(corners.groups()), m.start()))
    return out


def _qwen_json(text: str) -> list[RawBox]:
    """bbox_2d lists, each with the label of its own JSON object (the nearest "label" after it
    and before the next box, else before it)."""
    out: list[RawBox] = []
    matches = list(_QWEN_JSON_BOX.finditer(text))
    for i, m in enumerate(matches):
        start = text.rfind("{", 0, m.start())
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        label = _JSON_LABEL.search(text, m.end(), end) or _JSON_LABEL.search(text, max(start, 0), m.start())
        out.append(RawBox(_json_label(label.group(1)) if label else "", _four(m.groups()), m.start()))
    return out


def _paligemma(text: str) -> list[RawBox]:
    out: list[RawBox] = []
    for m in _PALIGEMMA.finditer(text):
        y0, x0, y1, x1 = (float(v) for v in _LOC_VALUE.findall(m.group(1)))
        out.append(RawBox(_label(m.group(2)), (x0, y0, x1, y1), m.start()))
    return out


def _florence(text: str) -> list[RawBox]:
    out: list[RawBox] = []
    text = re.sub(r"</?s>|<pad>|<unk>", "", text)  # as the processor's own parser does
    end = 0
    for m in _FLORENCE.finditer(text):
        before = text[end:m.start()]
        label = _label(before[before.rfind(">") + 1:])  # the phrase: the text since the last tag
        values = [float(v) for v in _LOC_VALUE.findall(m.group())]
        for i in range(0, len(values) - 3, 4):  # a phrase's boxes; a truncated last one is dropped
            out.append(RawBox(label, tuple(values[i:i + 4]), m.start()))
        end = m.end()
    return out


def _four(values) -> tuple[float, float, float, float]:
    a, b, c, d = (float(v) for v in values)
    return a, b, c, d


def _label(text: str) -> str:
    return " ".join(_STRIP.sub(" ", text).split())[:MAX_LABEL]


def _json_label(text: str) -> str:
    try:
        return _label(json.loads(f'"{text}"'))
    except ValueError:
        return _label(text)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _clamp(value: float, most: float) -> float:
    return min(max(value, 0.0), most)
