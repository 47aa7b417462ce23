"""The files of an on-disk IVF build (see retriever.ondisk for what each holds): their names after
the build's token, reading the main file with its inverted lists memory-mapped read-only, the
sorted ids and the vector hashes beside them, and deleting the files of other builds.
OnDiskIndexError is the error of an on-disk index that cannot be built or opened."""

from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np

from retriever.vectors import VectorIndexError, _sidecar

BUILD_DIR_PREFIX = ".ondisk-build-"
PREFETCH_THREADS = 0  # see _read_main


class OnDiskIndexError(VectorIndexError):
    """An on-disk index cannot be built or opened."""


class _Files:
    """The files of one build, named after the main file (vectors.faiss) and the build's token."""

    def __init__(self, main: Path, token: str):
        self.main = Path(main)
        self.token = token
        stem = self.main.name.rsplit(".", 1)[0]  # vectors
        base = self.main.parent / f"{stem}.{token}"
        self.ivfdata = base.with_name(base.name + ".ivfdata")
        self.ids = base.with_name(base.name + ".ids")
        self.hashes = base.with_name(base.name + ".hashes")
        self.build = base.with_name(base.name + ".build.json")
        self.delta = base.with_name(base.name + ".delta.faiss")
        self.tombstones = base.with_name(base.name + ".tombstones.npy")
        self.staged_main = self.main.parent / f".{stem}.{token}.faiss.tmp"  # before the swap

    def owned(self) -> list[Path]:
        return [self.ivfdata, self.ids, self.hashes, self.build, self.delta, self.tombstones, self.staged_main]

    @staticmethod
    def token_of_ivfdata(main: Path, ivfdata_name: str) -> str:
        stem = Path(main).name.rsplit(".", 1)[0] + "."
        name = Path(ivfdata_name).name
        if not (name.startswith(stem) and name.endswith(".ivfdata")):
            raise ValueError(f"{main} names inverted lists {name!r}, not of this index")
        return name[len(stem) : -len(".ivfdata")]


def remove_ondisk_files(main: Path, keep_token: str | None = None) -> None:
    """Delete every on-disk build's files beside `main` except `keep_token`'s (None: all), and any
    shard folder a killed build left. A search that has them open keeps reading them (POSIX)."""
    main = Path(main)
    stem = main.name.rsplit(".", 1)[0]
    for path in main.parent.iterdir():
        name = path.name
        if name.startswith(BUILD_DIR_PREFIX) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            continue
        for prefix in (f"{stem}.", f".{stem}."):
            if not name.startswith(prefix) or name in (main.name, _sidecar(main).name):
                continue
            token = name[len(prefix) :].split(".", 1)[0]
            if token != keep_token and name.endswith((".ivfdata", ".ids", ".hashes", ".build.json", ".delta.faiss",
                                                      ".tombstones.npy", ".faiss.tmp", ".faiss.tmp.part")):
                path.unlink(missing_ok=True)


def vector_hashes(vecs: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each float32 row (its bytes): equal rows hash equal; rows that differ
    collide with probability ~2^-64 (a multiply-add over the row's 64-bit words with random odd
    multipliers: a difference in one word never cancels). ~25 ms for 20,000 x 512."""
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    words = vecs.view(np.uint64) if vecs.shape[1] % 2 == 0 else vecs.view(np.uint32).astype(np.uint64)
    mult = np.random.default_rng(0x5EED).integers(1, 2**63, size=words.shape[1], dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        h = (words * mult).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return h


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _read_main(path: Path, files: _Files | None = None):
    """The main index, its lists memory-mapped read-only. Checks that the lists are on disk and,
    with `files`, that they are that build's.

    The main file names its .ivfdata by its base name alone; it is read from a copy of its bytes
    where that name is made absolute (the folder of `path`), so the index works from any working
    directory and wherever the folder moves. (IO_FLAG_ONDISK_SAME_DIR does the same but prints a
    line on stdout, which would land in `retriever search` output; IO_FLAG_MMAP segfaults on a
    merged index.)"""
    import faiss

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(path) from exc
    stem = (files.main if files is not None else path).name.rsplit(".", 1)[0]
    found = None
    for m in re.finditer(re.escape(f"{stem}.".encode()) + rb"[0-9a-f]{1,64}\.ivfdata", data):
        if m.start() >= 8 and struct.unpack("<Q", data[m.start() - 8 : m.start()])[0] == m.end() - m.start():
            found = m
    if found is None:
        raise ValueError(f"{path} is not an on-disk IVF index of this folder")
    absolute = str(path.parent.resolve() / found.group().decode()).encode()
    data = data[: found.start() - 8] + struct.pack("<Q", len(absolute)) + absolute + data[found.end() :]
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8), faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:
        raise ValueError(f"unreadable on-disk index {path}: {exc}") from exc
    ivf = faiss.try_extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise ValueError(f"{path} is not an on-disk IVF index")
    if files is not None and Path(lists.filename).name != files.ivfdata.name:
        raise ValueError(f"{path} holds the lists of another build than its sidecar's")
    # FAISS starts 32 threads per search to read the lists ahead: 1.4 ms a query on a warm page
    # cache, 6x the scan itself (benchmarks/ondisk.py); the kernel's readahead does without.
    lists.prefetch_nthread = PREFETCH_THREADS
    return index


def _mmap_ids(path: Path, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, np.int64)
    if not path.is_file() or path.stat().st_size != 8 * count:
        raise ValueError(f"{path} does not hold {count} ids")
    return np.memmap(path, dtype=np.int64, mode="r", shape=(count,))


def _mmap_hashes(path: Path, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, np.uint64)
    if not path.is_file() or path.stat().st_size != 8 * count:
        raise ValueError(f"{path} does not hold {count} hashes")
    return np.memmap(path, dtype=np.uint64, mode="r", shape=(count,))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
