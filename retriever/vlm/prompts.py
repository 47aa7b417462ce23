"""The chats retriever sends to a vision-language model, as message lists for the processor's chat
template ({"type": "text" | "image"} content parts). Kept in one place so that what the model is
asked can be read, tested and changed together."""

from __future__ import annotations

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


def rerank_messages(query: str) -> list[dict[str, Any]]:
    question = RERANK_QUESTION.format(query=" ".join(query.split()))
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def photo_label(n: int) -> str:
    return f"Photo {n}:"


def ask_messages(question: str, n_photos: int) -> list[dict[str, Any]]:
    """A system message that sets the task, then one user message: "Photo 1:", the first image,
    "Photo 2:", the second, ..., then the question. One photo: no numbering."""
    question = " ".join(question.split())
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
