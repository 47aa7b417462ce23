"""What the HTTP API does, over a warm retriever.api.Collection (which owns the encoder behind its
lock, the text cache and the reloads on new checkpoints): queries with the server's limits,
similar-to by catalog id or upload, ask with a VLM, originals and thumbnails opened safely.

Concurrency: the encoder (and a VLM) is not safe for concurrent forward passes, so every call
into it holds a lock; FAISS searches of a read-only index and catalog reads (SQLAlchemy's pool,
one SQLite connection per thread) run concurrently."""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from retriever.api import Collection
from retriever.store.catalog import STATUS_INDEXED
from retriever.errors import RetrieverError
from retriever.filters import Filters

MAX_K = 500
MAX_UPLOAD_BYTES = 32 << 20  # an uploaded query image
MAX_UPLOAD_PIXELS = 50_000_000  # decoded with the indexing decoder under this pixel limit
THUMBNAIL_SIDE = 384
THUMBNAIL_CACHE_BYTES = 64 << 20


class ServeError(RetrieverError):
    """A request the server refuses; `status` is the HTTP status it answers with."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(ServeError):
    status = 404


@dataclass(frozen=True)
class Original:
    """An opened original: the file descriptor (opened without following a symlink), its size
    and the name to serve it under. The caller closes fd."""

    fd: int
    size: int
    path: str


class Service:
    """The requests of the HTTP API over one Index. `vlm`: a loaded vision-language model for ask.
    encoder: a loaded encoder for queries (None: the one a local search would use)."""

    def __init__(self, index, *, device: str = "auto", encoder=None, vlm=None, reload_check_s: float = 1.0):
        self.collection = Collection(index, device=device, encoder=encoder, reload_check_s=reload_check_s)
        self.index = index
        self.vlm = vlm
        self.vlm_lock = threading.Lock()
        self._thumbs: OrderedDict[tuple, bytes] = OrderedDict()
        self._thumb_bytes = 0
        self._thumb_lock = threading.Lock()

    def warm(self) -> None:
        self.collection.warm()

    @property
    def reloads(self) -> int:
        return self.collection.reloads

    def current(self):
        return self.collection.searcher()

    # -- queries --------------------------------------------------------------------------------

    def search(self, q: str | None, k: int, filters: Filters, keywords: bool = True,
               words: list[str] | None = None) -> list:
        """The CLI's `retriever search`. words: the command-line words exactly (as `retriever
        search` gets them); q: typed text, read as in a search box (see `words_of`). Image terms
        are refused: the server never opens a path a client names (use similar)."""
        from retriever.query import IMAGE, parse, words_of

        _check_k(k)
        if words is None:
            words = words_of(q or "")
        terms = parse(words, default="text")
        if any(t.kind == IMAGE for t in terms):
            raise ServeError("image terms are not accepted over HTTP: use /api/similar with an id or an upload")
        return self.collection.query(terms, k, filters, keywords=keywords)

    def similar_to_ids(self, ids: list[int], k: int, filters: Filters) -> list:
        """Photos like catalog images (several are averaged, as `retriever similar a b`), themselves
        left out: their stored vectors, no file is read."""
        _check_k(k)
        searcher = self.current()
        stored = self.index.catalog.vectors_for(ids, self.index.dim)
        missing = [i for i in ids if i not in stored]
        if missing:
            raise NotFound(f"no indexed image with id {missing[0]}")
        return searcher.by_vector(_mean_direction([stored[i] for i in ids]), k, exclude=ids, filters=filters)

    def id_for_path(self, path: str, size: int | None, mtime_ns: int | None) -> int:
        """The catalog id of a path a client names, when the catalog holds it indexed with that size
        and mtime (the client's stat): a look-up by value, the path is never opened here."""
        row = self.index.catalog.find_by_path(path)
        if row is None or row["status"] != STATUS_INDEXED:
            raise NotFound("not in the index")
        if size is not None and mtime_ns is not None and (row["size"], row["mtime_ns"]) != (size, mtime_ns):
            raise ServeError("changed since it was indexed: upload it instead", status=409)
        return int(row["id"])

    def similar_to_upload(self, data: bytes, name: str, k: int, filters: Filters) -> list:
        from retriever.images import decode

        _check_k(k)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ServeError(f"upload too large (limit {MAX_UPLOAD_BYTES >> 20} MB)", status=413)
        # Only the suffix of the name is used (RAW routing); never as a path.
        decoded = decode(data, os.path.basename(name or "upload"), max_pixels=MAX_UPLOAD_PIXELS)
        searcher = self.current()
        vector = self.collection.query_encoder.embed_images([decoded.image])[0]
        return searcher.by_vector(vector, k, filters=filters)

    def ask(self, question: str, k: int, filters: Filters) -> dict[str, Any]:
        from retriever.vlm.ask import ask_about

        if self.vlm is None:
            raise ServeError("no vision-language model: start the server with retriever serve --vlm MODEL", 501)
        if not question.strip():
            raise ServeError("empty question")
        _check_k(k, 16)
        hits = self.current().text(question, k, filters=filters)
        if not hits:
            raise NotFound("no photos to ask about: nothing matches")
        with self.vlm_lock:
            return ask_about(self.vlm, question, hits).as_dict()

    # -- files ----------------------------------------------------------------------------------

    def image_row(self, image_id: int) -> dict[str, Any]:
        row = self.index.catalog.image_rows([image_id]).get(image_id)
        if row is None or row["status"] != STATUS_INDEXED:
            raise NotFound(f"no image with id {image_id}")
        return row

    def meta(self, image_id: int) -> dict[str, Any]:
        """One image as a search hit would show it (score 0)."""
        hits = self.current()._hits([(0.0, image_id)])
        if not hits:
            raise NotFound(f"no image with id {image_id}")
        return hits[0].as_dict()

    def open_original(self, image_id: int) -> Original:
        """The catalog's file for an id, opened only if it is still the regular file that was
        indexed (same size and mtime) and not a symlink: no path from the client, no following a
        link swapped in since indexing."""
        row = self.image_row(image_id)
        path = row["path"]
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except OSError:
            raise NotFound(f"the file of image {image_id} is gone or unreadable") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (row["size"], row["mtime_ns"]):
            os.close(fd)
            raise NotFound(f"the file of image {image_id} changed since it was indexed")
        return Original(fd, st.st_size, path)

    def thumbnail_jpeg(self, image_id: int, side: int = THUMBNAIL_SIDE) -> bytes:
        """A JPEG thumbnail through the safe decoder, cached in memory (LRU, bounded in bytes)."""
        import io

        from retriever.render import thumbnail

        row = self.image_row(image_id)
        key = (image_id, row["path"], row["mtime_ns"], row["frame_ms"], side)
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        original = self.open_original(image_id)  # the same checks as the original
        if row["frame_ms"] is None:
            # decoded from the checked descriptor: nothing swapped in by path after the check
            image = _thumbnail_from_fd(original, side)
        else:
            os.close(original.fd)
            image = thumbnail(row["path"], row["frame_ms"], max_side=side)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        with self._thumb_lock:
            if key not in self._thumbs:
                self._thumbs[key] = data
                self._thumb_bytes += len(data)
            while self._thumb_bytes > THUMBNAIL_CACHE_BYTES and self._thumbs:
                _, old = self._thumbs.popitem(last=False)
                self._thumb_bytes -= len(old)
        return data

    def status(self) -> dict[str, Any]:
        from retriever import __version__

        counts = self.index.catalog.counts()
        return {
            "index": self.index.name,
            "folder": str(self.index.folder),
            "model_id": self.index.model_id,
            "images": counts["images"],
            "vectors": len(self.current().vectors),
            "generation": self.collection.generation,
            "reloads": self.reloads,
            "vlm": getattr(self.vlm, "model_id", None) if self.vlm is not None else None,
            "version": __version__,
        }


def _thumbnail_from_fd(original: Original, side: int):
    from PIL import Image

    from retriever.errors import ImageDecodeError
    from retriever.images import MAX_FILE_BYTES, decode
    from retriever.render import ThumbnailError

    with os.fdopen(original.fd, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    try:
        if len(data) > MAX_FILE_BYTES:
            raise ImageDecodeError("too large to read")
        image = decode(data, original.path, draft_min_side=side).image
    except ImageDecodeError as exc:
        raise ThumbnailError(original.path, str(exc)) from None
    image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def _check_k(k: int, most: int = MAX_K) -> None:
    if not 1 <= k <= most:
        raise ServeError(f"k must be between 1 and {most}")


def _mean_direction(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float64))
    for v in vectors:
        v = np.asarray(v, dtype=np.float64)
        n = np.linalg.norm(v)
        total += v / n if n > 0 else v
    norm = np.linalg.norm(total)
    return (total / norm if norm > 0 else total).astype(np.float32)
