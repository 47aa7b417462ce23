"""The FAISS index: add / remove / search / save / load. Knows nothing of SQL.

Exact inner product over L2-normalised vectors (cosine), ids = catalog image ids. The file is a
derived cache of the catalog's stored vectors: it records the catalog generation it reflects in a
JSON sidecar, so a stale or missing file is detected and rebuilt, never trusted.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class IndexInfo:
    generation: int  # catalog generation the file reflects
    count: int
    dim: int
    kind: str  # FAISS factory string, e.g. "IDMap2,Flat"


class VectorIndex:
    KIND = "IDMap2,Flat"

    def __init__(self, dim: int, index=None):
        import faiss

        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def build(cls, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> "VectorIndex":
        """From (ids, vectors) chunks, e.g. Catalog.iter_vectors."""
        vi = cls(dim)
        for ids, vecs in chunks:
            vi.add(ids, vecs)
        return vi

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vecs.shape}")
        self.index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: Iterable[int]) -> int:
        import faiss

        ids = np.fromiter(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(
        self, queries: np.ndarray, k: int, exclude: Iterable[int] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries (q, dim) -> (scores (q, k'), ids (q, k')), best first, k' <= k; ids in
        `exclude` never appear. Rows with fewer than k results are padded with id -1."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        exclude = set(int(i) for i in exclude)
        n = len(self)
        if n == 0 or k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        fetch = min(n, k + len(exclude))
        scores, ids = self.index.search(queries, fetch)
        if exclude:
            out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
            out_i = np.full((len(queries), k), -1, dtype=np.int64)
            for row in range(len(queries)):
                keep = [j for j in range(fetch) if ids[row, j] != -1 and int(ids[row, j]) not in exclude][:k]
                out_s[row, : len(keep)] = scores[row, keep]
                out_i[row, : len(keep)] = ids[row, keep]
            scores, ids = out_s, out_i
        width = min(k, scores.shape[1])
        return scores[:, :width], ids[:, :width]

    def reconstruct(self, image_id: int) -> np.ndarray:
        return self.index.reconstruct(int(image_id))

    # -- files ----------------------------------------------------------------------------------

    def save(self, path: Path, generation: int) -> None:
        """Atomic: written to a temporary file in the same folder, fsynced, then renamed over."""
        import faiss

        path = Path(path)
        info = IndexInfo(generation=generation, count=len(self), dim=self.dim, kind=self.KIND)
        _atomic_write(path, lambda tmp: faiss.write_index(self.index, str(tmp)))
        _atomic_write(_sidecar(path), lambda tmp: tmp.write_text(json.dumps(info.__dict__)))

    @classmethod
    def load(cls, path: Path) -> tuple["VectorIndex", IndexInfo]:
        """Raises FileNotFoundError / ValueError when the file or its sidecar is missing or unreadable."""
        import faiss

        path = Path(path)
        info = read_info(path)
        if info is None:
            raise FileNotFoundError(path)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ValueError(f"unreadable FAISS file {path}: {exc}") from exc
        if index.ntotal != info.count or index.d != info.dim:
            raise ValueError(f"{path} does not match its sidecar")
        return cls(info.dim, index), info


def read_info(path: Path) -> IndexInfo | None:
    """The sidecar of a FAISS file that exists; None when either is missing or unreadable."""
    if not Path(path).is_file():
        return None
    try:
        raw = json.loads(_sidecar(Path(path)).read_text())
        return IndexInfo(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _atomic_write(path: Path, write) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the index is as readable as its catalog
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
