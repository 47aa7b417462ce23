"""query -> encode -> vectors -> catalog -> hits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .catalog import METADATA_FIELDS, STATUS_INDEXED
from .errors import ImageDecodeError, RetrieverError
from .files import absolute
from .video import format_timestamp

DEFAULT_K = 10


@dataclass
class Hit:
    rank: int  # 1-based
    score: float  # cosine similarity in the encoder's space
    id: int  # catalog id
    path: str
    meta: dict[str, Any] = field(default_factory=dict)  # size, mtime, and the image metadata

    @property
    def label(self) -> str:
        """The path, and for a video frame its timestamp: `clip.mp4@00:01:23`."""
        frame_ms = self.meta.get("frame_ms")
        return self.path if frame_ms is None else f"{self.path}@{format_timestamp(frame_ms)}"

    def as_dict(self) -> dict[str, Any]:
        out = {"rank": self.rank, "score": round(self.score, 6), "id": self.id, "path": self.path, **self.meta}
        if self.meta.get("frame_ms") is not None:
            out["timestamp"] = format_timestamp(self.meta["frame_ms"])
        return out


class Searcher:
    """Answers text and image queries over one opened Index. The encoder and the FAISS index are
    loaded on first use and kept, so a long-lived Searcher answers many queries cheaply."""

    def __init__(self, index, *, encoder=None, device: str = "auto"):
        self.index = index
        self.device = device
        self._encoder = encoder
        self._vectors = None

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = self.index.load_encoder(self.device)
        return self._encoder

    @property
    def vectors(self):
        if self._vectors is None:
            self._vectors = self.index.vector_index()
        return self._vectors

    def text(self, query: str, k: int = DEFAULT_K) -> list[Hit]:
        query = query.strip()
        if not query:
            raise RetrieverError("empty query: say what to look for, e.g. retriever search \"a dog on the beach\"")
        return self.by_vector(self.encoder.embed_texts([query])[0], k)

    def image(self, path: str, k: int = DEFAULT_K) -> list[Hit]:
        """Photos like the image at `path`, inside the collection or not. An image of the
        collection is left out of its own results and reuses its stored vector."""
        vector, own_id = self.image_vector(path)
        return self.by_vector(vector, k, exclude=[own_id] if own_id is not None else [])

    def image_vector(self, path: str) -> tuple[np.ndarray, int | None]:
        full = absolute(path)
        row = self.index.catalog.find_by_path(full)
        if row is not None and row["status"] == STATUS_INDEXED:
            stat = _stat(full)
            if stat is None or (stat.st_size == row["size"] and stat.st_mtime_ns == row["mtime_ns"]):
                stored = self.index.catalog.vectors_for([row["id"]], self.index.dim)
                if row["id"] in stored:
                    return stored[row["id"]], int(row["id"])
        if not os.path.exists(full):
            raise RetrieverError(f"no such image: {path}")
        from .images import load

        try:
            decoded = load(full)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"cannot use {path} as a query image: {exc}") from None
        vector = self.encoder.embed_images([decoded.image])[0]
        return vector, (int(row["id"]) if row is not None else None)

    def by_vector(self, vector: np.ndarray, k: int = DEFAULT_K, exclude: Iterable[int] = ()) -> list[Hit]:
        if k <= 0:
            raise RetrieverError("-k/--top must be at least 1")
        scores, ids = self.vectors.search(np.asarray(vector, dtype=np.float32)[None, :], k, exclude=exclude)
        found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i != -1]
        rows = self.index.catalog.image_rows([i for _, i in found])
        hits: list[Hit] = []
        for score, image_id in found:
            row = rows.get(image_id)
            if row is None:  # removed by a concurrent writer since the FAISS file was read
                continue
            meta = {"size": row["size"], "mtime": row["mtime_ns"] / 1e9, "fingerprint": row["fingerprint"]}
            meta.update({name: row[name] for name in METADATA_FIELDS})
            hits.append(Hit(rank=len(hits) + 1, score=score, id=image_id, path=row["path"], meta=meta))
        return hits


def _stat(path: str):
    try:
        return os.stat(path)
    except OSError:
        return None
