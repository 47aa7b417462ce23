"""What the HTTP API does, over a warm retriever.api.Collection (which owns the encoder behind its
lock, the text cache and the reloads on new checkpoints): queries with the server's limits,
similar-to by catalog id or upload, ask with a VLM, originals and thumbnails opened safely.

Concurrency: the encoder (and a VLM) is not safe for concurrent forward passes, so every call
into it holds a lock; FAISS searches of a read-only index and catalog reads (SQLAlchemy's pool,
one SQLite connection per thread) run concurrently."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from retriever.api import Collection
from retriever.errors import RetrieverError
from retriever.files import fingerprint_fd
from retriever.filters import Filters
from retriever.store.catalog import STATUS_INDEXED

MAX_K = 500
MAX_UPLOAD_BYTES = 32 << 20  # an uploaded query image
MAX_UPLOAD_PIXELS = 50_000_000  # decoded with the indexing decoder under this pixel limit
THUMBNAIL_SIDE = 384
THUMBNAIL_CACHE_BYTES = 64 << 20
VERIFIED_FILES = 4096  # files reached through a symlink whose content was checked, remembered
MAX_LINKS = 40  # symlinks followed resolving one catalog path (the kernel's own limit)


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
    """An opened original: the file descriptor (see Service.open_original), its size and the name
    to serve it under. The caller closes fd."""

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
        self._thumb_lock = threading.Lock()  # both caches: thumbnails and verified files
        self._verified: OrderedDict[tuple, None] = OrderedDict()

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
        # no words and a text filter: the photos with that text, best match first (as the CLI's
        # `retriever search --text TEXT`); no words and a concept filter: ranked by the concepts
        terms = [] if not words and (filters.texts or filters.concepts) else parse(words, default="text")
        if any(t.kind == IMAGE for t in terms):
            raise ServeError("image terms are not accepted over HTTP: use /api/similar with an id or an upload")
        return self.collection.query(terms, k, filters, keywords=keywords)

    def similar_to_ids(self, ids: list[int], k: int, filters: Filters,
                       box: tuple[float, float, float, float] | None = None) -> list:
        """Photos like catalog images (several are averaged, as `retriever similar a b`), themselves
        left out: their stored vectors, no file is read. With `box` (one id): photos with something
        like that part of it (x0, y0, x1, y1 in its pixels), read from its file."""
        _check_k(k)
        searcher = self.current()
        if box is not None:
            if len(ids) != 1:
                raise ServeError("box= goes with one id")
            rows = self.index.catalog.image_rows(ids)
            if ids[0] not in rows or rows[ids[0]]["frame_ms"] is not None:
                raise NotFound(f"no indexed photo with id {ids[0]}")
            vector, _ = searcher.image_vector(rows[ids[0]]["path"] + "@" + ",".join(f"{v:g}" for v in box))
            return searcher.by_vector(vector, k, exclude=ids, filters=filters)
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
        _check_k(k)
        vector = self.upload_vector(data, name)
        return self.current().by_vector(vector, k, filters=filters)

    def upload_vector(self, data: bytes, name: str) -> np.ndarray:
        """An uploaded image's vector (the query encoder's): decoded with the indexing decoder
        under MAX_UPLOAD_PIXELS; one that cannot be decoded raises ImageDecodeError (a 415)."""
        from retriever.images import decode

        if len(data) > MAX_UPLOAD_BYTES:
            raise ServeError(f"upload too large (limit {MAX_UPLOAD_BYTES >> 20} MB)", status=413)
        # Only the suffix of the name is used (RAW routing); never as a path.
        decoded = decode(data, os.path.basename(name or "upload"), max_pixels=MAX_UPLOAD_PIXELS)
        return self.collection.query_encoder.embed_images([decoded.image])[0]

    def ask(self, question: str, k: int, filters: Filters, boxes: bool = False) -> dict[str, Any]:
        """boxes: each photo also gets the boxes the answer gives it (a model that writes boxes)."""
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
            return ask_about(self.vlm, question, hits, boxes=boxes).as_dict()

    def locate(self, query: str, image_id: int) -> dict[str, Any]:
        """Where `query` is in one catalog photo: {"id", "query", "path", "width", "height",
        "boxes": [{"box", "label"}], "answer", "model", "seconds"}, boxes in the photo's pixels
        after EXIF orientation. The file is opened as for a thumbnail (checked, by id)."""
        from retriever.render import ThumbnailError
        from retriever.vlm.locate import locate
        from retriever.vlm.model import PHOTO_SIDE

        if self.vlm is None:
            raise ServeError("no vision-language model: start the server with retriever serve --vlm MODEL", 501)
        row = self.image_row(image_id)
        try:
            image = _thumbnail_from_fd(self._open(row), PHOTO_SIDE, row["frame_ms"])
        except ThumbnailError as exc:
            raise NotFound(f"cannot read image {image_id}: {exc.reason}") from None
        size = (row["width"], row["height"]) if row["width"] and row["height"] else image.size
        with self.vlm_lock:
            found = locate(self.vlm, query, row["path"], row["frame_ms"], image=image, size=size)
        return {"id": image_id, **found.as_dict()}

    # -- files ----------------------------------------------------------------------------------

    def image_row(self, image_id: int) -> dict[str, Any]:
        row = self.index.catalog.image_rows([image_id]).get(image_id)
        if row is None or row["status"] != STATUS_INDEXED:
            raise NotFound(f"no image with id {image_id}")
        return row

    def meta(self, image_id: int) -> dict[str, Any]:
        """One image as a search hit would show it (score 0); a 404, as for the original, once its
        file is gone or is no longer the one that was indexed."""
        os.close(self._open(self.image_row(image_id)).fd)
        hits = self.current()._hits([(0.0, image_id)])
        if not hits:
            raise NotFound(f"no image with id {image_id}")
        return hits[0].as_dict()

    def text(self, image_id: int) -> dict[str, Any]:
        """The text read in one photo: {"id", "read", "lines": [{"text", "score", "box", "quad"}],
        "text", "engine", "created_at", "width", "height"}; boxes and quads in the photo's pixels
        after EXIF orientation (width x height). Not read yet (`retriever ocr` has not seen it):
        read false, no lines. From the catalog alone: no file is opened."""
        from retriever.ocr.run import photo_text

        row = self.image_row(image_id)
        found = photo_text(self.index.catalog, image_id)
        size = {"width": row["width"], "height": row["height"]}
        if found is None:
            return {"id": image_id, "read": False, "lines": [], "text": "", "engine": None, "created_at": None, **size}
        return {"id": image_id, "read": True, "lines": found["lines"], "text": found["text"],
                "engine": found["engine"], "created_at": found["created_at"], **size}

    def untag(self, image_id: int, label: str) -> dict[str, Any]:
        """Remove a wrong tag from one photo; remembered, so later `retriever tag` runs keep it off."""
        from retriever.tags import normalize_label, untag_in_index

        self.image_row(image_id)
        removed = untag_in_index(self.index, None, label, image_id=image_id)
        return {"id": image_id, "label": normalize_label(label), "removed": removed}

    def open_original(self, image_id: int) -> Original:
        """The catalog's file for an id, opened only if it is still the regular file that was
        indexed: no path from the client, and nothing swapped in since indexing, the file or any
        folder above it (see _open_catalog_path)."""
        return self._open(self.image_row(image_id))

    def _open(self, row: dict[str, Any]) -> Original:
        """Opened once (_open_catalog_path) and checked on that descriptor, which is then the only
        way the file is read, for the original, a thumbnail or a video frame: a swap after the
        checks changes nothing. Same size and mtime as indexed, always; and where the path went
        through a symlink (a folder or the file itself), the same content too: the catalog's
        fingerprint of the file.

        Why symlinks are not simply refused: the indexer records paths as walked (absolute, not
        resolved; files.walk follows linked folders and files), so a collection reached through a
        link (~/Photos -> /mnt/disk/photos, /home -> /var/home) has only linked paths in its
        catalog, and the catalog keeps no record of where a link led at indexing time. A link
        there then, or one put in place of a folder since, is told apart by what matters: a file
        whose bytes hash to the indexed fingerprint is the photo that was indexed, wherever the
        link leads now; any other file, a different photo of the same name, size and mtime
        included, is a 404. The check reads the file once per state (device, inode, size, mtime,
        ctime), then is remembered; paths without a link (the usual case) are never hashed."""
        image_id = row["id"]
        try:
            fd, through_link = _open_catalog_path(row["path"])
        except OSError:
            raise NotFound(f"the file of image {image_id} is gone or unreadable") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (row["size"], row["mtime_ns"]):
                raise NotFound(f"the file of image {image_id} changed since it was indexed")
            if through_link and not self._same_content(fd, st, row["fingerprint"]):
                raise NotFound(f"the file of image {image_id} is not the one that was indexed")
        except BaseException:
            os.close(fd)
            raise
        return Original(fd, st.st_size, row["path"])

    def _same_content(self, fd: int, st: os.stat_result, fingerprint: str | None) -> bool:
        if not fingerprint:
            return False
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, fingerprint)
        with self._thumb_lock:
            if key in self._verified:
                self._verified.move_to_end(key)
                return True
        try:
            same = fingerprint_fd(fd) == fingerprint
        except OSError:
            return False
        if same:
            with self._thumb_lock:
                self._verified[key] = None
                while len(self._verified) > VERIFIED_FILES:
                    self._verified.popitem(last=False)
        return same

    def thumbnail_jpeg(self, image_id: int, side: int = THUMBNAIL_SIDE) -> bytes:
        """A JPEG thumbnail through the safe decoder, cached in memory (LRU, bounded in bytes). The
        file is opened and checked on every request, a cached thumbnail's too: a photo whose file
        is gone or swapped is a 404 however often it was shown before."""
        import io

        row = self.image_row(image_id)
        original = self._open(row)
        key = (image_id, row["path"], row["mtime_ns"], row["frame_ms"], side)
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                os.close(original.fd)
                return self._thumbs[key]
        # decoded from the checked descriptor (a video too): nothing is reopened by path
        image = _thumbnail_from_fd(original, side, row["frame_ms"])
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
        vectors = self.current().vectors
        return {
            "index": self.index.name,
            "folder": str(self.index.folder),
            "model_id": self.index.model_id,
            "images": counts["images"],
            "vectors": len(vectors),
            "vector_delta": len(getattr(vectors, "delta", ())),  # taken in from the delta log since the file
            "generation": self.collection.generation,
            "reloads": self.reloads,
            "vlm": getattr(self.vlm, "model_id", None) if self.vlm is not None else None,
            "vlm_boxes": _vlm_boxes_of(self.vlm),  # ask?boxes=1 and /api/locate
            "version": __version__,
        }


def _vlm_boxes_of(vlm) -> bool:
    """Whether a model writes boxes."""
    from retriever.vlm.grounding import grounding_family

    return vlm is not None and grounding_family(getattr(vlm, "family", None)) is not None


def _thumbnail_from_fd(original: Original, side: int, frame_ms: int | None = None):
    """The thumbnail of an opened original, read from its descriptor (closed here): a still
    through the safe decoder, a video's frame at frame_ms through PyAV reading the same open file."""
    from PIL import Image

    from retriever.errors import ImageDecodeError
    from retriever.images import MAX_FILE_BYTES, decode
    from retriever.render import ThumbnailError
    from retriever.video import frame_at

    with os.fdopen(original.fd, "rb") as f:
        try:
            if frame_ms is not None:
                image = frame_at(f, int(frame_ms))  # PyAV takes a file object as well as a path
            else:
                data = f.read(MAX_FILE_BYTES + 1)
                if len(data) > MAX_FILE_BYTES:
                    raise ImageDecodeError("too large to read")
                image = decode(data, original.path, draft_min_side=side).image
        except ImageDecodeError as exc:
            raise ThumbnailError(original.path, str(exc)) from None
    image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


# -- opening a catalog path -------------------------------------------------------------------------

_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
_WALKS = {os.open, os.stat, os.readlink} <= os.supports_dir_fd and hasattr(os, "O_DIRECTORY")


def _open_catalog_path(path: str) -> tuple[int, bool]:
    """Opens the regular file at an absolute path from the catalog -> (fd, through_link). The
    path is resolved here, one component at a time from the root, never by the kernel: each
    folder is opened with O_NOFOLLOW | O_DIRECTORY relative to its parent's descriptor (O_PATH
    where there is one, so a folder that may be searched but not listed still works), the file
    with O_NOFOLLOW relative to its folder's, once it was seen to be a regular file (no device or
    FIFO is opened). A symlink on the way (a folder, or the file) is read and its target resolved
    the same way; through_link says one was. Where the platform cannot open relative to a folder
    (Windows), the path is opened as it is and counts as through a link, so that its content is
    checked. Raises OSError (FileNotFoundError for a path that is not local and absolute)."""
    if not os.path.isabs(path):  # a URL of remote storage: nothing to serve locally
        raise FileNotFoundError(errno.ENOENT, "not a local path", path)
    if not _WALKS:
        return os.open(path, _FILE_FLAGS | getattr(os, "O_BINARY", 0)), True
    pending = _components(path)
    links = 0
    through_link = False
    fd = os.open(os.sep, _DIR_FLAGS)
    try:
        while pending:
            name = pending.pop()
            if name == "..":  # only from a link's target (catalog paths are normalised)
                fd = _step(fd, os.open(name, _DIR_FLAGS, dir_fd=fd))
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                through_link = True
                target = os.readlink(name, dir_fd=fd)
                pending += _components(target)
                if os.path.isabs(target):
                    fd = _step(fd, os.open(os.sep, _DIR_FLAGS))
            elif pending:
                fd = _step(fd, os.open(name, _DIR_FLAGS, dir_fd=fd))
            elif stat.S_ISREG(st.st_mode):
                opened = os.open(name, _FILE_FLAGS, dir_fd=fd)
                now = os.fstat(opened)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    os.close(opened)  # replaced between the look and the open
                    raise FileNotFoundError(errno.ENOENT, "replaced while opened", path)
                return opened, through_link
            else:  # a folder, a FIFO, a device: never opened
                raise OSError(errno.EINVAL, "not a regular file", path)
        raise IsADirectoryError(errno.EISDIR, "the root folder", path)
    finally:
        os.close(fd)


def _components(path: str) -> list[str]:
    """A path's names, last first (a stack), without the empty and "." ones."""
    return [name for name in reversed(path.split(os.sep)) if name not in ("", ".")]


def _step(old: int, new: int) -> int:
    os.close(old)
    return new


def upload_bytes(file) -> bytes:
    """The bytes of an uploaded file (FastAPI's UploadFile): an image type or octet-stream, at
    most MAX_UPLOAD_BYTES (read no further), else a 415 or a 413."""
    content_type = (file.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise ServeError(f"not an image upload ({content_type})", status=415)
    data = file.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ServeError(f"upload too large (limit {MAX_UPLOAD_BYTES >> 20} MB)", status=413)
    return data


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
