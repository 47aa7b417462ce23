"""The chats retriever sends to a vision-language model, as message lists for the processor's chat
template ({"type": "text" | "image"} content parts). Kept in one place so that what the model is
asked can be read, tested and changed together."""

from __future__ import annotations

import re
from typing import Any, Sequence

# Reranking: a yes/no question per candidate; the score is read from the first answer token.
RERANK_QUESTION = "Does this photo show: {query}? Answer yes or no."
YES = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO = ("no", "No", "NO", " no", " No", " NO")

ASK_SYSTEM = (
    "You answer questions about the user's photos. The photos are numbered in the order they are "
    "given: the first image is Photo 1, the second Photo 2, and so on. Answer briefly from what the "
    "photos show, and cite the photos your answer relies on as [Photo N]. If the photos do not "
    "answer the question, say so."
)
ASK_ONE_SYSTEM = "You answer questions about the user's photo. Answer briefly from what the photo shows."

CAPTION_REQUEST = (
    "Describe this photo in one sentence for a search index: the main subject, the setting, and any "
    "legible text."
)


# Grounding (retriever locate; ask --boxes), in the form each family was trained on (see grounding.py):
# a chat request for Qwen's, a task string for PaliGemma ("detect cat ; dog", big_vision's README)
# and Florence-2 (its processor turns the task token into its own sentence).
LOCATE_REQUESTS = {
    "qwen2_vl": "Locate {query} in the image, output its bbox coordinates.",
    "qwen2_5_vl": "Locate every {query} in the image, output the bbox coordinates in JSON format.",
    "qwen3_vl": "Locate every {query} in the image, output the bbox coordinates in JSON format.",
    "paligemma": "detect {query}",
    "florence2": "<CAPTION_TO_PHRASE_GROUNDING>{query}",
}
# Appended to the question of `ask --boxes`: the chat families only.
ASK_BOXES_HINTS = {
    "qwen2_vl": "Give the bounding box of each object your answer mentions.",
    "qwen2_5_vl": "Give the bbox coordinates of each object your answer mentions in JSON format.",
    "qwen3_vl": "Give the bbox coordinates of each object your answer mentions in JSON format.",
}


def locate_request(family: str, query: str) -> str:
    """What to ask a model of `family` to find `query`: one line, without tags of the user's
    (a query cannot write the model's own control tokens)."""
    query = " ".join(re.sub(r"<[^<>]{0,40}>", " ", query).split())
    return LOCATE_REQUESTS[family].format(query=query)


def locate_messages(request: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": request}]}]


def rerank_messages(query: str) -> list[dict[str, Any]]:
    question = RERANK_QUESTION.format(query=" ".join(query.split()))
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def photo_label(n: int) -> str:
    return f"Photo {n}:"


def ask_messages(question: str, n_photos: int, hint: str | None = None) -> list[dict[str, Any]]:
    """A system message that sets the task, then one user message: "Photo 1:", the first image,
    "Photo 2:", the second, ..., then the question (and the hint after it: ASK_BOXES_HINTS). One
    photo: no numbering."""
    question = " ".join(question.split()) + (f" {hint}" if hint else "")
    if n_photos == 1:
        content: list[dict[str, Any]] = [{"type": "image"}, {"type": "text", "text": question}]
        return [_system(ASK_ONE_SYSTEM), {"role": "user", "content": content}]
    content = []
    for n in range(1, n_photos + 1):
        content += [{"type": "text", "text": photo_label(n)}, {"type": "image"}]
    content.append({"type": "text", "text": f"Question: {question}"})
    return [_system(ASK_SYSTEM), {"role": "user", "content": content}]


def caption_messages() -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_REQUEST}]}]


def _system(text: str) -> dict[str, Any]:
    return {"role": "system", "content": [{"type": "text", "text": text}]}


def image_count(messages: Sequence[dict[str, Any]]) -> int:
    return sum(1 for m in messages for part in m["content"] if part.get("type") == "image")
