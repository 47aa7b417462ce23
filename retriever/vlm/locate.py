"""`retriever locate`: the boxes a vision-language model gives for a phrase on one photo.

The model is asked in the form its family was trained on (prompts.LOCATE_REQUESTS: Qwen2-VL
"Locate ... output its bbox coordinates" in a chat, PaliGemma "detect QUERY", Florence-2
"<CAPTION_TO_PHRASE_GROUNDING>QUERY"), its answer is decoded with its box markup, and the boxes
are parsed and mapped onto the photo's pixels (grounding.py). A model whose family writes no
boxes is a NoGroundingError before the photo is read; an answer with no box in it (a random
model's garbage, a phrase the model does not find) is an empty list, never an error.

`draw_boxes` writes the photo with its boxes drawn (PIL ImageDraw), for `locate --draw`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from retriever.vlm.errors import VLMError
from retriever.vlm.grounding import GroundedBox, parse_boxes, require_grounding
from retriever.vlm.photos import load_sized
from retriever.vlm.prompts import locate_messages, locate_request

DEFAULT_LOCATE_TOKENS = 128  # a box is 10-25 tokens with its label
MAX_QUERY_CHARS = 300


@dataclass
class Located:
    """The boxes found for `query` on one photo."""

    query: str
    path: str
    width: int  # the photo's size after EXIF orientation: the boxes' coordinates
    height: int
    boxes: list[GroundedBox] = field(default_factory=list)
    answer: str = ""  # the model's text, box markup included
    model: str = ""
    family: str = ""
    seconds: float = 0.0
    frame_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "path": self.path,
            **({"frame_ms": self.frame_ms} if self.frame_ms is not None else {}),
            "width": self.width,
            "height": self.height,
            "boxes": [b.as_dict() for b in self.boxes],
            "answer": self.answer,
            "model": self.model,
            "seconds": round(self.seconds, 3),
        }


def check_query(query: str) -> str:
    query = " ".join(query.split())
    if not query:
        raise VLMError('empty phrase: say what to find, e.g. retriever locate "the red car" photo.jpg')
    if len(query) > MAX_QUERY_CHARS:
        raise VLMError(f"the phrase is too long (at most {MAX_QUERY_CHARS} characters)")
    return query


def locate_in_image(vlm, query: str, image, width: int, height: int,
                    max_new_tokens: int = DEFAULT_LOCATE_TOKENS) -> tuple[list[GroundedBox], str]:
    """-> (boxes in the pixels of a width x height photo, the model's text) for `query` on `image`
    (a PIL image of that photo, any size with its aspect)."""
    family = require_grounding(vlm.family, vlm.model_id)
    query = check_query(query)
    request = locate_request(family.model_type, query)
    prompt = vlm.prompt(locate_messages(request)) if vlm.chat else vlm.task_prompt(request)
    text = vlm.generate([prompt], [image], max_new_tokens, markup=True)[0]
    input_size = vlm.input_size(image) if family.needs_input_size else None
    return parse_boxes(text, family, width, height, input_size=input_size, default_label=query), text


def locate(vlm, query: str, path: str, frame_ms: int | None = None,
           max_new_tokens: int = DEFAULT_LOCATE_TOKENS, *, image=None, size: tuple[int, int] | None = None) -> Located:
    """The boxes for `query` on the photo at `path` (or a video's frame at frame_ms). image and
    size: the photo already decoded and its size after EXIF orientation (the server's, from
    the catalog); else the file is decoded here (a RetrieverError with the reason if it cannot be)."""
    require_grounding(vlm.family, vlm.model_id)
    query = check_query(query)
    started = time.monotonic()
    if image is None or size is None:
        image, size = load_sized(path, frame_ms)
    boxes, text = locate_in_image(vlm, query, image, size[0], size[1], max_new_tokens)
    return Located(query, path, int(size[0]), int(size[1]), boxes, text, vlm.model_id, vlm.family,
                   time.monotonic() - started, frame_ms)


# -- drawing ----------------------------------------------------------------------------------------

COLOURS = ((255, 64, 64), (64, 200, 255), (255, 210, 0), (120, 255, 120), (255, 120, 255))


def draw_boxes(path: str, boxes: Sequence[GroundedBox], out: str | Path, frame_ms: int | None = None,
               max_side: int = 2048) -> Path:
    """Write the photo at `path` (EXIF orientation applied, at most max_side pixels on its longer
    side) with `boxes` (in the photo's pixels) drawn and labelled, to `out` (JPEG, PNG, WebP by its
    suffix). Raises a RetrieverError when the photo cannot be read or `out` cannot be written."""
    from PIL import ImageDraw

    from retriever.render.thumbnails import RenderError

    out = Path(out)
    image, (width, height) = load_sized(path, frame_ms, max_side)
    scale = image.width / width if width else 1.0
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 300))
    for n, b in enumerate(boxes):
        colour = COLOURS[n % len(COLOURS)]
        x0, y0, x1, y1 = (v * scale for v in b.box)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        if b.label:
            text = b.label[:60]
            left, top, right, bottom = draw.textbbox((0, 0), text)
            ty = y0 - (bottom - top) - 4 if y0 >= (bottom - top) + 4 else y0 + line
            draw.rectangle((x0, ty, x0 + right - left + 4, ty + bottom - top + 4), fill=colour)
            draw.text((x0 + 2, ty + 2 - top), text, fill=(0, 0, 0))
    try:
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(out.suffix.lower())
        if fmt is None:
            raise RenderError(f"cannot write {out}: give a .jpg, .png or .webp file name")
        image.save(out, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    except OSError as exc:
        raise RenderError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out
