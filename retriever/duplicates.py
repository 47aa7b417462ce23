"""Duplicates: byte-identical copies by fingerprint, near-duplicates by range search over the
stored vectors.

Exact groups need neither a model nor FAISS: files whose content fingerprint (BLAKE2b of the whole
file, written by the indexer) is the same. Near-duplicate groups come from the vectors already in
the catalog (nothing is decoded or encoded again):

    stored vectors (one per distinct content) -> range search: every pair with cosine >= T
    -> union-find: connected components -> the chaining guard -> groups

Range search. The vectors stream out of the catalog in chunks; each chunk is added to an exact
inner-product index (IndexFlatIP) and then queried against it, so chunk c meets chunks 0..c and
every pair is found once. Memory: the flat index (n x dim x 4 bytes: 100k x 704 = 280 MB) plus one
chunk's results, whatever the collection size. Time: n^2 / 2 dot products, all in BLAS, so it
grows with the square of the collection (benchmarks/duplicates.py, 2 cores: 10k vectors 0.7-3 s,
100k 45-150 s). Above duplicates_ivf.EXACT_MAX vectors an approximate (IVF) range search is used.

Chaining guard. Near-duplicate links are not transitive: A~B and B~C can join two photos that
share nothing but an intermediate, and a long enough chain makes one giant group. A group of more
than two files is kept whole only if every member is itself a near-duplicate (cosine >= T) of the
group's most central member (the one with the largest sum of link scores): groups are stars, not
chains. (GUARD_FACTOR loosens this to 1 - F * (1 - T); F = 1 measured best.) A group that fails
loses its weakest links first (the weakest tenth at a time) and its pieces are judged again, so
the strong links between copies of one photo outlast the weak ones that chained different photos
together; a file left without links drops out. `--no-guard` gives the plain connected components.

Videos. A video takes part as one file. Its sampled frames are never compared with each other
(frames of one video look alike; that is not duplication), and never with still images (a frame
grab is not a copy of the file, as in Immich, which compares assets of the same type only). Two
videos are near-duplicates when more than half of the frames of the shorter one have a match
>= T in the other (the pair's score: the best-match score that majority reaches): a re-encoded or
trimmed copy passes, two videos sharing one title card do not. Byte-identical videos are exact
copies.

Exact copies in near groups. Copies share their vector (the indexer reuses it), so only one file
per fingerprint enters the range search; in a near group it stands for its copies, which it lists
("copies"); the copies themselves are reported once, in their exact group.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from retriever.duplicates_ivf import EXACT_MAX, range_pairs_ivf
from retriever.errors import RetrieverError
from retriever.store.duplicates import count_files, shared_fingerprint_rows, vector_item_rows

# Default near-duplicate threshold by the index's model id prefix (cosine similarity). Cosine
# scales differ between encoders, so each family has its own:
#   offline/    0.95, fitted with benchmarks/duplicates.py's rule (best recall with <= 5 % false
#               pairs) on caltech101-train (400 photos, 320 planted copies) mixed with the 233
#               photos of distractors-tune, seeds 0-2 pooled: 0.95 recall 0.85, 3.0 % false pairs;
#               0.94 recall 0.91 but 5.1 % (alone, seed 0: 0.94, 3.2 %). Different photos of one
#               subject in one setting, and text-heavy pictures (documents, screenshots), score
#               0.90-0.95 with this encoder. Reported on caltech101-test + distractors-test (seed
#               0): recall 0.87, 0.7 % false pairs (0.94 would give 0.93, 3.0 %). It was 0.94,
#               chosen on caltech101-test alone (see benchmarks/README.md, "Re-fitted on the train
#               split").
#   open_clip/  0.94: clip-retrieval's default for grouping CLIP image embeddings
#               (clip_back.get_non_uniques: range search at 0.94 + connected components), between
#               Immich (cosine distance <= 0.01 with ViT-B-32, i.e. >= 0.99: near-identical files
#               only) and generic dedup defaults of 0.90 (imagededup's CNN features, not CLIP).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "offline/": 0.95,
    "open_clip/": 0.94,
}
FALLBACK_THRESHOLD = 0.94  # an encoder family not listed above
# The chaining guard: members must be within 1 - GUARD_FACTOR * (1 - T) of their group's centre.
# 1.0 (within T itself: every member a near-duplicate of the centre) beat 1.5, 2 and 3 in
# benchmarks/duplicates.py on caltech101-train + distractors-tune (seeds 0-2; first chosen on
# caltech101-test, where it won too): fewer false pairs at every threshold, the same recall
# (at 0.94: 5.1 % against 9.3 %).
GUARD_FACTOR = 1.0
QUERY_CHUNK = 4096  # vectors added and queried per range-search step

KIND_EXACT = "exact"
KIND_NEAR = "near"


class DuplicatesError(RetrieverError):
    """A duplicate search was asked for something it cannot do (a threshold out of range)."""


def default_threshold(model_id: str) -> float:
    """The near-duplicate threshold for an index built with `model_id`."""
    for prefix, value in DEFAULT_THRESHOLDS.items():
        if model_id.startswith(prefix):
            return value
    return FALLBACK_THRESHOLD


def guard_threshold(threshold: float) -> float:
    """How close to its group's centre a member must be (cosine), for links at `threshold`."""
    return 1.0 - GUARD_FACTOR * (1.0 - threshold)


def check_threshold(threshold: float) -> float:
    if not (0.0 < threshold <= 1.0) or threshold != threshold:
        raise DuplicatesError(f"threshold must be in (0, 1] (a cosine similarity), not {threshold}")
    return float(threshold)


# -- results ------------------------------------------------------------------------------------


@dataclass
class Member:
    id: int  # catalog id (a video: its first frame's)
    path: str
    score: float  # best link to another member of the group (1.0 in an exact group)
    size: int  # bytes
    meta: dict[str, Any] = field(default_factory=dict)  # width, height, format, taken_at, mtime, fingerprint
    frames: int | None = None  # a video: how many sampled frames it has; None for a still image
    copies: list[str] = field(default_factory=list)  # byte-identical files it stands for (near groups)

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "path": self.path, "score": round(self.score, 6), "size": self.size, **self.meta}
        if self.frames is not None:
            out["video"] = True
            out["frames"] = self.frames
        if self.copies:
            out["copies"] = list(self.copies)
        return out


@dataclass
class Group:
    kind: str  # "exact" | "near"
    members: list[Member]  # largest first: most pixels, then most bytes, then oldest, then path
    pairs: list[tuple[int, int, float]]  # (i, j, cosine) links between members[i] and members[j], i < j

    @property
    def best(self) -> float:
        return max((s for _, _, s in self.pairs), default=1.0)

    @property
    def reclaimable_bytes(self) -> int:
        """Exact copies: what deleting all but members[0] frees. Near groups: 0 (a person decides)."""
        return sum(m.size for m in self.members[1:]) if self.kind == KIND_EXACT else 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "size": len(self.members),
            "members": [m.as_dict() for m in self.members],
            "pairs": [[i, j, round(s, 6)] for i, j, s in self.pairs],
        }
        if self.kind == KIND_EXACT:
            out["reclaimable_bytes"] = self.reclaimable_bytes
        return out


@dataclass
class DuplicateReport:
    groups: list[Group]  # exact groups first (most bytes to reclaim first), then near (best link first)
    files: int  # indexed files looked at (a video counts once)
    model_id: str
    threshold: float | None  # None: exact copies only
    guard: bool
    seconds: float = 0.0

    @property
    def exact(self) -> list[Group]:
        return [g for g in self.groups if g.kind == KIND_EXACT]

    @property
    def near(self) -> list[Group]:
        return [g for g in self.groups if g.kind == KIND_NEAR]

    @property
    def files_in_groups(self) -> int:
        """Distinct files in any group (a file with exact copies can also head a near group)."""
        return len({m.path for g in self.groups for m in g.members})

    @property
    def reclaimable_bytes(self) -> int:
        return sum(g.reclaimable_bytes for g in self.groups)

    def summary(self) -> dict[str, Any]:
        return {
            "groups": len(self.groups),
            "exact_groups": len(self.exact),
            "near_groups": len(self.near),
            "files": self.files,
            "files_in_groups": self.files_in_groups,
            "reclaimable_bytes": self.reclaimable_bytes,
            "threshold": self.threshold,
            "guard": self.guard,
            "model_id": self.model_id,
            "seconds": round(self.seconds, 3),
        }


# -- entry point --------------------------------------------------------------------------------


def find_duplicates(
    index,
    threshold: float | None = None,
    *,
    exact_only: bool = False,
    min_size: int = 2,
    guard: bool = True,
    chunk: int = QUERY_CHUNK,
) -> DuplicateReport:
    """Exact and near-duplicate groups of an opened Index, from its catalog alone.

    `threshold`: cosine similarity a link needs (default: `default_threshold(index.model_id)`).
    `exact_only`: fingerprints only; FAISS is not even imported. No encoder is ever loaded."""
    if min_size < 2:
        raise DuplicatesError("a group has at least 2 files: min_size must be >= 2")
    started = time.perf_counter()
    catalog = index.catalog
    model_id = index.model_id
    if threshold is None and not exact_only:
        threshold = default_threshold(model_id)
    if threshold is not None:
        threshold = check_threshold(threshold)
    groups = exact_groups(catalog)
    if not exact_only:
        groups += near_groups(catalog, index.dim, threshold, guard=guard, chunk=chunk)
    groups = [g for g in groups if len(g.members) >= min_size]
    return DuplicateReport(
        groups=groups,
        files=count_files(catalog),
        model_id=model_id,
        threshold=None if exact_only else threshold,
        guard=guard and not exact_only,
        seconds=time.perf_counter() - started,
    )


# -- exact copies -------------------------------------------------------------------------------


def exact_groups(catalog) -> list[Group]:
    """Indexed files (still images, and videos as whole files) that share a fingerprint."""
    by_fp: dict[str, dict[str, dict[str, Any]]] = {}  # fingerprint -> path -> row (a video: its first frame)
    frames: dict[str, int] = {}
    for row in shared_fingerprint_rows(catalog):
        files = by_fp.setdefault(row["fingerprint"], {})
        if row["frame_ms"] is not None:
            frames[row["path"]] = frames.get(row["path"], 0) + 1
        files.setdefault(row["path"], dict(row))
    groups = []
    for files in by_fp.values():
        members = [_member(row, 1.0, frames.get(path)) for path, row in files.items()]
        members.sort(key=_keeper_order)
        groups.append(Group(KIND_EXACT, members, [(0, i, 1.0) for i in range(1, len(members))]))
    groups.sort(key=lambda g: (-g.reclaimable_bytes, g.members[0].path))
    return groups


# -- near duplicates ----------------------------------------------------------------------------


@dataclass
class _Items:
    """The vectors that take part, by position in the range-search index."""

    ids: np.ndarray  # (n,) catalog id at each position
    file: np.ndarray  # (n,) file number at each position
    is_video: np.ndarray  # (n,) bool, per file number
    first_id: list[int]  # per file number: the catalog id that stands for the file
    copies: list[list[str]]  # per file number: byte-identical files it stands for
    frames: np.ndarray  # (files,) sampled frames per video file (0 for stills)


def near_groups(
    catalog, dim: int, threshold: float, *, guard: bool = True, chunk: int = QUERY_CHUNK
) -> list[Group]:
    """Near-duplicate groups from the stored vectors (see the module docstring)."""
    threshold = check_threshold(threshold)
    plan = _plan(catalog)
    if not plan:
        return []
    wanted, file_of, is_video, first_id, copies = plan
    chunks = _only(catalog.iter_vectors(dim), wanted)
    index, pos_ids, (qi, qj, qs) = (range_pairs_ivf(chunks, dim, threshold) if len(wanted) > EXACT_MAX
                                    else range_pairs(chunks, dim, threshold, chunk=chunk))
    if len(pos_ids) == 0:
        return []
    file_pos = np.array([file_of[int(i)] for i in pos_ids], dtype=np.int64)
    items = _Items(
        ids=pos_ids, file=file_pos, is_video=np.asarray(is_video, dtype=bool), first_id=first_id, copies=copies,
        frames=np.bincount(file_pos, minlength=len(first_id)) * np.asarray(is_video, dtype=np.int64),
    )
    links = _file_links(items, qi, qj, qs, threshold)
    similarity = _FileSimilarity(index, items)
    loose = guard_threshold(threshold)
    found: list[tuple[list[int], dict[tuple[int, int], float]]] = []
    for component, inside in components_with_links(links):
        parts = split_chains(component, inside, similarity, loose) if guard else [component]
        found.extend([(component, inside)] if parts == [component] else zip(parts, _links_by_component(inside, parts)))
    return _near_group_objects(catalog, items, found)


def _only(chunks: Iterable[tuple[np.ndarray, np.ndarray]], wanted: np.ndarray):
    """The rows of `chunks` whose id is in `wanted` (ids written after `wanted` was read are left out)."""
    member = np.zeros(int(wanted.max()) + 1, dtype=bool)
    member[wanted] = True
    for ids, vecs in chunks:
        keep = ids < len(member)
        keep[keep] = member[ids[keep]]
        yield ids[keep], vecs[keep]


def _plan(catalog):
    """-> (ids that take part, id -> file number, is_video per file, first id per file, copies
    per file), or None when nothing is indexed. One file per fingerprint takes part."""
    file_of: dict[int, int] = {}
    file_no: dict[str, int] = {}
    owner_of_fp: dict[str, int] = {}
    is_video: list[bool] = []
    first_id: list[int] = []
    copies: list[list[str]] = []
    copy_seen: set[str] = set()
    for image_id, path, frame_ms, fp in vector_item_rows(catalog):
        number = file_no.get(path)
        if number is None:
            owner = owner_of_fp.get(fp) if fp is not None else None
            if owner is not None:  # a byte-identical copy of a file already taking part
                if path not in copy_seen:
                    copy_seen.add(path)
                    copies[owner].append(path)
                continue
            number = file_no[path] = len(first_id)
            if fp is not None:
                owner_of_fp[fp] = number
            is_video.append(frame_ms is not None)
            first_id.append(int(image_id))
            copies.append([])
        file_of[int(image_id)] = number
    if not file_of:
        return None
    wanted = np.fromiter(file_of.keys(), dtype=np.int64, count=len(file_of))
    return wanted, file_of, is_video, first_id, copies


def range_pairs(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], dim: int, threshold: float, *, chunk: int = QUERY_CHUNK
):
    """All pairs of vectors with inner product >= threshold, each pair once.

    chunks: (ids (n,), vectors (n, dim)) as Catalog.iter_vectors gives them, L2-normalised.
    -> (the faiss IndexFlatIP holding every vector by position, ids by position,
        (i, j, score) arrays of positions with i > j)."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))  # faiss keeps scores > radius
    ids_out: list[np.ndarray] = []
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    for ids, vecs in _rechunk(chunks, chunk):
        base = index.ntotal
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        index.add(vecs)
        ids_out.append(np.asarray(ids, dtype=np.int64))
        lims, scores, hits = index.range_search(vecs, radius)
        queries = base + np.repeat(np.arange(len(vecs), dtype=np.int64), np.diff(lims.astype(np.int64)))
        keep = (hits < queries) & (scores >= np.float32(threshold))  # earlier positions only: each pair once
        found_i.append(queries[keep])
        found_j.append(hits[keep].astype(np.int64))
        found_s.append(scores[keep].astype(np.float32))
    pairs = (_concat(found_i, np.int64), _concat(found_j, np.int64), _concat(found_s, np.float32))
    return index, _concat(ids_out, np.int64), pairs


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _rechunk(chunks: Iterable[tuple[np.ndarray, np.ndarray]], size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The same rows in chunks of `size` (the last one shorter)."""
    if size < 1:
        raise DuplicatesError("chunk must be >= 1")
    held_ids = np.zeros(0, dtype=np.int64)
    held_vecs: np.ndarray | None = None
    for ids, vecs in chunks:
        if len(ids) == 0:
            continue
        held_ids = np.concatenate([held_ids, ids])
        held_vecs = vecs if held_vecs is None else np.concatenate([held_vecs, vecs])
        full = len(held_ids) // size * size
        for lo in range(0, full, size):
            yield held_ids[lo : lo + size], held_vecs[lo : lo + size]
        held_ids, held_vecs = held_ids[full:], held_vecs[full:]
    if len(held_ids):
        yield held_ids, held_vecs


def _file_links(items: _Items, qi, qj, qs, threshold: float) -> dict[tuple[int, int], float]:
    """Vector pairs -> links between files (a, b) with a < b: stills by their own score, videos by
    the majority-of-frames rule; frames of one video and still<->frame pairs are dropped."""
    fa, fb = items.file[qi], items.file[qj]
    va, vb = items.is_video[fa], items.is_video[fb]
    links: dict[tuple[int, int], float] = {}
    stills = ~va & ~vb
    for a, b, s in zip(fa[stills].tolist(), fb[stills].tolist(), qs[stills].tolist()):
        key = (a, b) if a < b else (b, a)
        links[key] = max(s, links.get(key, -1.0))
    both = va & vb & (fa != fb)
    if both.any():
        # best[(a, b)][a-side position] = best score of that frame of a against any frame of b
        best: dict[tuple[int, int], dict[int, dict[int, float]]] = {}
        for pa, pb, a, b, s in zip(qi[both].tolist(), qj[both].tolist(), fa[both].tolist(), fb[both].tolist(),
                                   qs[both].tolist()):
            key = (a, b) if a < b else (b, a)
            sides = best.setdefault(key, {key[0]: {}, key[1]: {}})
            for f, p in ((a, pa), (b, pb)):
                sides[f][p] = max(s, sides[f].get(p, -1.0))
        for (a, b), sides in best.items():
            score = video_pair_score(
                _padded(sides[a], int(items.frames[a])), _padded(sides[b], int(items.frames[b]))
            )
            if score >= threshold:
                links[(a, b)] = score
    return links


def _padded(best: dict[int, float], n: int) -> np.ndarray:
    """A video's per-frame best scores, frames without a match >= T as -inf."""
    out = np.full(n, -np.inf, dtype=np.float32)
    out[: len(best)] = list(best.values())
    return out


def video_pair_score(best_a: np.ndarray, best_b: np.ndarray) -> float:
    """Two videos' similarity from each frame's best match in the other video: the score that more
    than half of the shorter video's frames reach (1 frame: its own; 4 frames: the 3rd best), the
    smaller of the two when both have as many frames. A shared title card is not enough."""

    def majority_best(best: np.ndarray) -> float:
        k = len(best) // 2 + 1  # more than half of the frames match at least this well
        return float(np.sort(best)[::-1][k - 1])

    if len(best_a) != len(best_b):
        return majority_best(best_a if len(best_a) < len(best_b) else best_b)
    return min(majority_best(best_a), majority_best(best_b))


class _FileSimilarity:
    """Cosine between two files, from the vectors in the range-search index (for the guard)."""

    def __init__(self, index, items: _Items):
        self.index = index
        self.items = items
        self._first = np.full(len(items.first_id), -1, dtype=np.int64)  # a still's one position
        self._first[items.file[::-1]] = np.arange(len(items.file) - 1, -1, -1)
        self._cache: dict[int, np.ndarray] = {}

    def vectors(self, f: int) -> np.ndarray:
        if f not in self._cache:
            positions = np.flatnonzero(self.items.file == f) if self.items.is_video[f] else [self._first[f]]
            self._cache[f] = np.vstack([self.index.reconstruct(int(p)) for p in positions])
        return self._cache[f]

    def __call__(self, a: int, b: int) -> float:
        if a == b:
            return 1.0
        va, vb = self.items.is_video[a], self.items.is_video[b]
        if va != vb:
            return -1.0
        sims = self.vectors(a) @ self.vectors(b).T
        if not va:
            return float(sims[0, 0])
        return video_pair_score(sims.max(axis=1), sims.max(axis=0))


# -- graph --------------------------------------------------------------------------------------


def connected_components(links: dict[tuple[int, int], float]) -> list[list[int]]:
    """Union-find over the linked nodes -> components (sorted node lists), largest first."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for a, b in links:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    components: dict[int, list[int]] = {}
    for node in parent:
        components.setdefault(root(node), []).append(node)
    return sorted((sorted(c) for c in components.values()), key=lambda c: (-len(c), c[0]))


def components_with_links(
    links: dict[tuple[int, int], float],
) -> list[tuple[list[int], dict[tuple[int, int], float]]]:
    """connected_components, each with its own links (one pass over the links)."""
    components = connected_components(links)
    return list(zip(components, _links_by_component(links, components)))


def _links_by_component(
    links: dict[tuple[int, int], float], components: Sequence[Sequence[int]]
) -> list[dict[tuple[int, int], float]]:
    """The links inside each of `components` (disjoint node lists); links across them are dropped."""
    where = {node: k for k, nodes in enumerate(components) for node in nodes}
    out: list[dict[tuple[int, int], float]] = [{} for _ in components]
    for (a, b), s in links.items():
        k = where.get(a)
        if k is not None and where.get(b) == k:
            out[k][(a, b)] = s
    return out


def split_chains(
    nodes: Sequence[int], links: dict[tuple[int, int], float], similarity, loose: float
) -> list[list[int]]:
    """The chaining guard: one component -> cohesive groups.

    A group is cohesive when every member has cosine >= `loose` with its centre (the member with
    the largest sum of link scores). A component that is not loses its weakest links (the weakest
    tenth, at least the weakest one, ties included) and its pieces are judged again; a member left
    without links leaves the groups. Strong links (copies of one photo) outlast the weak ones that
    chained different photos together."""
    out: list[list[int]] = []
    stack = [(sorted(nodes), links)]
    while stack:
        members, inside = stack.pop()
        if len(members) <= 2 or _cohesive(members, inside, similarity, loose):
            out.append(members)
            continue
        scores = sorted(inside.values())
        cut = scores[max(0, len(scores) // 10 - 1)]
        stack.extend(components_with_links({k: s for k, s in inside.items() if s > cut}))
    return sorted(out, key=lambda c: (-len(c), c[0]))


def _cohesive(members: list[int], links: dict[tuple[int, int], float], similarity, loose: float) -> bool:
    weight = dict.fromkeys(members, 0.0)
    for (a, b), s in links.items():
        weight[a] += s
        weight[b] += s
    centre = max(members, key=lambda n: (weight[n], -n))
    return all(n == centre or similarity(n, centre) >= loose for n in members)


# -- group objects ------------------------------------------------------------------------------


def _near_group_objects(catalog, items: _Items, found) -> list[Group]:
    rows = catalog.image_rows([items.first_id[f] for nodes, _ in found for f in nodes])
    groups = []
    for nodes, links in found:
        best = dict.fromkeys(nodes, -1.0)
        for (a, b), s in links.items():
            best[a], best[b] = max(best[a], s), max(best[b], s)
        members = []
        for f in nodes:
            row = rows.get(items.first_id[f])
            if row is None:  # removed by a concurrent writer
                continue
            frames = int(items.frames[f]) if items.is_video[f] else None
            member = _member(row, best[f], frames)
            member.copies = list(items.copies[f])
            members.append((f, member))
        if len(members) < 2:
            continue
        members.sort(key=lambda fm: _keeper_order(fm[1]))
        where = {f: i for i, (f, _) in enumerate(members)}
        pairs = sorted(
            ((min(where[a], where[b]), max(where[a], where[b]), float(s))
             for (a, b), s in links.items() if a in where and b in where),
            key=lambda p: (-p[2], p[0], p[1]),
        )
        groups.append(Group(KIND_NEAR, [m for _, m in members], pairs))
    groups.sort(key=lambda g: (-g.best, -len(g.members), g.members[0].path))
    return groups


_META = ("width", "height", "format", "taken_at", "fingerprint")


def _member(row: dict[str, Any], score: float, frames: int | None) -> Member:
    meta = {k: row[k] for k in _META}
    meta["mtime"] = row["mtime_ns"] / 1e9
    return Member(id=int(row["id"]), path=row["path"], score=float(score), size=int(row["size"]), meta=meta,
                  frames=frames)


def _keeper_order(m: Member) -> tuple:
    """Largest first: most pixels, then most bytes, then oldest, then path."""
    pixels = (m.meta.get("width") or 0) * (m.meta.get("height") or 0)
    return (-pixels, -m.size, m.meta.get("mtime") or 0.0, os.fsencode(m.path))
