"""Keyword search over file names and captions (SQLite FTS5), and its fusion with the vector ranking.

The `keywords` table (catalog migration 003_captions) holds one row per catalog item, rowid = the
item's id: `name`, the file's base name (`IMG_2041-receipt.jpg`; FTS splits it on `_ - .` into
img / 2041 / receipt / jpg), and `caption`, the item's caption from `retriever caption` (empty
until then). SQLite triggers keep it in step with every write of images and captions, so file
names are searchable from the first `retriever index` on, without any caption run. Words are
matched after Porter stemming and case/diacritic folding ("Receipts" finds "receipt").

Ranking: FTS5's BM25, a file-name match weighing NAME_WEIGHT times a caption match. A query's
words are OR-ed (each quoted, so nothing the user types is FTS query syntax), minus a short list
of English stop words: a photo matching more, rarer words ranks higher.

Hybrid ranking is reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009): see `fuse`.
Importing this module imports no model code; it needs only the catalog. The FTS5 queries are in
retriever/store/keywords.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Collection, Sequence

from retriever.store.keywords import has_keyword_index, keyword_matches

NAME_WEIGHT = 2.0  # BM25 weight of the file-name column against the caption column (1.0)
RRF_K = 60  # the rank offset of reciprocal rank fusion (the value of the original paper)
HYBRID_POOL = 50  # candidates taken from each ranking before fusion (at least k)

STOP_WORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were with "
    "photo photos picture pictures image images show shows showing me my some".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)


def query_words(text_query: str) -> list[str]:
    """The words of a query that keyword search uses: lower-cased, stop words dropped, no repeats.
    File-type words (jpg, png, mov, ...) are dropped too when the query has other words: every
    file name ends in one, so in "chelsea.png" it is "chelsea" that tells one photo from the rest
    (alone, "png" still finds the PNG files; `--format` is the exact filter)."""
    words = [w.lower() for w in _WORD.findall(text_query)]
    words = list(dict.fromkeys(w for w in words if w not in STOP_WORDS))
    named = [w for w in words if w not in _file_type_words()]
    return named or words


def _file_type_words() -> frozenset[str]:
    from retriever.files import IMAGE_SUFFIXES

    return frozenset(s.lstrip(".") for s in IMAGE_SUFFIXES)


def fts_query(words: Sequence[str]) -> str:
    """An FTS5 MATCH expression: each word a quoted string, OR-ed. Quoting makes operators (AND,
    NEAR, *, :, ^, parentheses) plain text; a quote inside a word is doubled."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def keyword_search(
    catalog, text_query: str, limit: int, allowed: Collection[int] | None = None, exclude: Collection[int] = (),
    keep: Callable[[Sequence[int]], Any] | None = None,
) -> list[tuple[int, float]]:
    """-> [(image_id, score)], best first, at most `limit`: indexed items whose file name or
    caption contains words of `text_query`. score = -BM25 (higher is better; only the order means
    something). `allowed`: only these ids (e.g. the ids passing search filters, as
    filters.matching_ids returns them); `keep`: a check of candidate ids instead (FilterMatch.keep
    of a broad filter: returns those that pass); `exclude`: never these. A query with no usable word, or a
    catalog without the FTS table, finds nothing."""
    words = query_words(text_query)
    if not words or limit <= 0 or not has_keyword_index(catalog):
        return []
    allowed_set = None if allowed is None else set(int(i) for i in allowed)
    excluded = set(int(i) for i in exclude)
    return keyword_matches(catalog, fts_query(words), limit, name_weight=NAME_WEIGHT, allowed=allowed_set,
                           excluded=excluded, keep=keep)


@dataclass(frozen=True)
class Fused:
    id: int
    score: float  # the fused RRF score (higher is better)
    vector_rank: int | None  # 1-based rank in the vector ranking; None: not among its candidates
    keyword_rank: int | None  # 1-based rank among keyword matches; None: no keyword match


def fuse(
    vector_ids: Sequence[int],
    keyword_ids: Sequence[int],
    k: int,
    *,
    rrf_k: int = RRF_K,
    keyword_weight: float = 1.0,
) -> list[Fused]:
    """Reciprocal rank fusion of the vector ranking and the keyword matches -> the best k.

        score(d) = 1 / (rrf_k + vector_rank(d)) + keyword_weight / (rrf_k + keyword_rank(d))

    `vector_ids`: the vector search's best candidates, best first (a pool of P = len(vector_ids),
    at least k). An item outside that pool is ranked P + 1 in the vector ranking (it is at best
    just below the pool: the vector ranking orders every photo). An item with no keyword match
    gets no keyword term (the keyword list is every match, so that absence is real evidence).

    Hence: with no keyword match at all, the result is exactly the vector order; a keyword match
    outranks every non-matching candidate of similar vector rank, and a strong keyword-only match
    (say, the only photo named "receipt") reaches the top even when the embedding ranks it low.
    Ties: better vector rank, then better keyword rank, then lower id."""
    pool = len(vector_ids)
    vector_rank = {int(i): r for r, i in enumerate(vector_ids, start=1)}
    keyword_rank: dict[int, int] = {}
    for r, i in enumerate(keyword_ids, start=1):
        keyword_rank.setdefault(int(i), r)
    fused: list[Fused] = []
    for image_id in dict.fromkeys([*vector_rank, *keyword_rank]):
        v = vector_rank.get(image_id)
        w = keyword_rank.get(image_id)
        score = 1.0 / (rrf_k + (v if v is not None else pool + 1))
        if w is not None:
            score += keyword_weight / (rrf_k + w)
        fused.append(Fused(image_id, score, v, w))
    fused.sort(key=lambda f: (-f.score, f.vector_rank or pool + 1, f.keyword_rank or 1 << 30, f.id))
    return fused[:k]


def fuse_hits(
    candidates: Sequence[Any],
    matches: Sequence[tuple[int, float]],
    k: int,
    fetch: Callable[[list[int]], Sequence[Any]] | None = None,
    *,
    min_score: float | None = None,
) -> list[Any]:
    """Hybrid results as search Hits: `candidates` (the vector search's Hits, best first, the
    pool: ask it for max(k, HYBRID_POOL)) fused with `matches` (keyword_search's output) by `fuse`.

    Keyword matches outside the pool need their Hit (with its encoder score, for display and
    --min-score): `fetch(ids)` returns them (Searcher: cosine of the stored vectors with the
    query vector, then its usual Hit building); without `fetch` they are left out. Returns at
    most k Hits, renumbered 1..n, hit.score still the cosine similarity, each with
    meta["keyword_rank"] (1-based among keyword matches, None for no match)."""
    fused = fuse([h.id for h in candidates], [i for i, _ in matches], len(candidates) + len(matches))
    by_id = {h.id: h for h in candidates}
    missing = [f.id for f in fused if f.id not in by_id]
    if missing and fetch is not None:
        by_id.update({h.id: h for h in fetch(missing)})
    out: list[Any] = []
    for f in fused:  # all of them ranked, then cut: --min-score may drop some of the first k
        hit = by_id.get(f.id)
        if hit is None or (min_score is not None and hit.score < min_score):
            continue
        out.append(replace(hit, rank=len(out) + 1, meta={**hit.meta, "keyword_rank": f.keyword_rank}))
        if len(out) == k:
            break
    return out
