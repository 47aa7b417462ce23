"""Reranking search candidates with a vision-language model.

The score of a candidate photo for a query is the model's log-odds of answering "yes":

    score = log P(yes) - log P(no)

read from the model's distribution over its first answer token, after the chat (through the
model's own chat template) "<image> Does this photo show: {query}? Answer yes or no.". P(yes)
sums the probabilities of the single-token spellings yes / Yes / YES with and without a leading
space (a logsumexp of their log-probabilities), P(no) likewise. A positive score means the model
leans to "yes"; the scale is comparable across candidates of one query, not across queries.

Candidates are scored in batches (left padding; each row holds its own candidate's photo and only
it), `batch_size` per forward pass (4 on the CPU, 16 on CUDA by default).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from retriever.errors import RetrieverError
from retriever.vlm.errors import VLMError
from retriever.progress import Progress
from retriever.vlm.photos import load_photo
from retriever.vlm.prompts import NO, YES, rerank_messages

DEFAULT_RERANK_TOP = 20


@dataclass
class Reranked:
    """One result after reranking. `hit` is the search Hit with its new rank; hit.score stays the
    encoder's cosine similarity."""

    hit: Any  # retriever.search.Hit
    encoder_score: float
    encoder_rank: int  # the rank the vector search gave it (1-based)
    rerank_score: float | None  # log P(yes) - log P(no); None: not scored (below top_n, or undecodable)
    error: str | None = None  # why a candidate in the top_n could not be scored

    def as_hit(self):
        """The Hit with rerank_score, encoder_rank (and rerank_error) in its meta, so that
        Hit.as_dict (search --json) carries them; hit.score stays the encoder's score."""
        extra = {"rerank_score": None if self.rerank_score is None else round(self.rerank_score, 6),
                 "encoder_rank": self.encoder_rank}
        if self.error:
            extra["rerank_error"] = self.error
        return replace(self.hit, meta={**self.hit.meta, **extra})

    def as_dict(self) -> dict[str, Any]:
        return {**self.as_hit().as_dict(), "encoder_score": round(self.encoder_score, 6)}


def yes_no_ids(vlm) -> tuple[list[int], list[int]]:
    """Token ids of the yes and no spellings (see the module docstring), none in both lists."""
    yes, no = vlm.token_ids(YES), vlm.token_ids(NO)
    shared = set(yes) & set(no)
    yes, no = [i for i in yes if i not in shared], [i for i in no if i not in shared]
    if not yes or not no:
        raise VLMError(f"{vlm.model_id}: its tokenizer has no distinct tokens for yes and no")
    return yes, no


def yes_no_score(logprobs, yes: Sequence[int], no: Sequence[int]) -> list[float]:
    """log P(yes) - log P(no) per row of a (batch, vocab) log-probability tensor."""
    import torch

    return (torch.logsumexp(logprobs[:, list(yes)], dim=-1) - torch.logsumexp(logprobs[:, list(no)], dim=-1)).tolist()


def score_photos(
    vlm,
    query: str,
    images: Sequence[Any],
    batch_size: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[float]:
    """The rerank score of each PIL image for `query`, in order."""
    batch_size = batch_size or vlm.default_batch_size
    prompt = vlm.prompt(rerank_messages(query))
    yes, no = yes_no_ids(vlm)
    scores: list[float] = []
    started = time.monotonic()
    for start in range(0, len(images), batch_size):
        scores += _scores(vlm, prompt, yes, no, images[start:start + batch_size])
        if on_progress:
            on_progress(Progress(len(scores), len(images), 0, time.monotonic() - started))
    return scores


def rerank(
    vlm,
    query: str,
    hits: Sequence[Any],
    top_n: int = DEFAULT_RERANK_TOP,
    batch_size: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    load: Callable[..., Any] = load_photo,
) -> list[Reranked]:
    """Rerank the first `top_n` hits (search order) by the VLM's score for `query`.

    Returns every hit, renumbered: the top_n candidates by rerank score (ties: higher encoder
    score, then encoder rank), then any of them that could not be decoded (file gone, damaged;
    error set), then the hits below top_n, unscored, in encoder order. Photos are decoded one
    batch at a time, so memory stays flat for a large top_n."""
    query = " ".join(query.split())
    if not query:
        raise VLMError("reranking needs a text query")
    if top_n < 1:
        raise VLMError("--rerank-top must be at least 1")
    batch_size = batch_size or vlm.default_batch_size
    candidates = [Reranked(h, float(h.score), h.rank, None) for h in hits[:top_n]]
    rest = [Reranked(h, float(h.score), h.rank, None) for h in hits[top_n:]]
    prompt = vlm.prompt(rerank_messages(query))
    yes, no = yes_no_ids(vlm)
    started, done, failed = time.monotonic(), 0, 0
    for start in range(0, len(candidates), batch_size):
        chunk = candidates[start:start + batch_size]
        ready, images = [], []
        for c in chunk:
            try:
                images.append(load(c.hit.path, c.hit.meta.get("frame_ms")))
                ready.append(c)
            except RetrieverError as exc:
                c.error = str(getattr(exc, "reason", exc))
                failed += 1
        for c, score in zip(ready, _scores(vlm, prompt, yes, no, images)):
            c.rerank_score = score
        done += len(chunk)
        if on_progress:
            on_progress(Progress(done, len(candidates), failed, time.monotonic() - started))
    scored = sorted((c for c in candidates if c.rerank_score is not None),
                    key=lambda c: (-c.rerank_score, -c.encoder_score, c.encoder_rank))
    ordered = scored + [c for c in candidates if c.rerank_score is None] + rest
    for rank, c in enumerate(ordered, start=1):
        c.hit = replace(c.hit, rank=rank)
    return ordered


def _scores(vlm, prompt: str, yes: Sequence[int], no: Sequence[int], images: Sequence[Any]) -> list[float]:
    """One forward pass: the score of each image, each in its own row with the same prompt."""
    if not images:
        return []
    return [float(x) for x in yes_no_score(vlm.next_token_logprobs([prompt] * len(images), list(images)), yes, no)]
