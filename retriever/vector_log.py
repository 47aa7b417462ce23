"""The append-only delta beside an in-memory kind's FAISS file: what each catalog checkpoint
changed in the vectors since the file was saved, so that adding 100 photos to a million writes a
few hundred kilobytes, not the whole index, and a reader takes in only the new records.

    vectors.faiss.log   a header (format, the token of the FAISS file it extends, the dimension),
                        then one record per committed checkpoint: its catalog generation, the
                        number of stored vectors after it, the ids whose vectors it removed or
                        replaced, and the ids and vectors it added; a CRC32 over each record, head and payload.

Records are appended (and fsynced) by the writer inside the catalog transaction they describe,
before its COMMIT, tagged with the generation that commit makes. So every committed generation
has its record on disk before any reader can see the generation; a record whose transaction did
not commit (an error: the writer truncates it at once; a kill: the next writer does, on opening
the log) carries a generation the catalog never reached, and readers apply only records up to
the catalog's generation, one generation after another. A torn record at the end (a kill
mid-write) fails its CRC and ends the log there. A log whose token is not the FAISS file's
belongs to an older file and is ignored (then superseded by the next writer).

Standard library and numpy only: readers and writers live in retriever.index_log.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retriever.durable import atomic_write

LOG_SUFFIX = ".log"
FORMAT = b"RVLOG002"  # 002: the CRC covers the record head
HEADER = struct.Struct("<8s32sI")  # format, token (hex uuid4), dim
RECORD = struct.Struct("<8sqqqqI")  # magic, generation, count, removed, added, crc32 of the payload
RECORD_MAGIC = b"RVREC001"
HEADER_SIZE = 64  # HEADER padded: records start here


_datasync = getattr(os, "fdatasync", os.fsync)  # (macOS has no fdatasync)


class LogFormatError(ValueError):
    """The log is missing, of another format, or of another FAISS file."""


@dataclass(frozen=True)
class Record:
    generation: int  # the catalog generation this checkpoint made
    count: int  # stored vectors after it
    removed: np.ndarray  # int64: ids whose vector it removed or replaced
    added_ids: np.ndarray  # int64
    added: np.ndarray  # float32 (n, dim)
    end: int  # offset just past this record


def log_path(vectors_path: Path) -> Path:
    return Path(vectors_path).with_name(Path(vectors_path).name + LOG_SUFFIX)


def reset(path: Path, token: str, dim: int) -> None:
    """A new, empty log for the FAISS file `token` (atomically over any old one)."""
    header = HEADER.pack(FORMAT, token.encode("ascii"), dim).ljust(HEADER_SIZE, b"\0")
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(header))


def read_header(handle) -> tuple[str, int]:
    raw = handle.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise LogFormatError("short header")
    fmt, token, dim = HEADER.unpack_from(raw)
    if fmt != FORMAT:
        raise LogFormatError(f"unknown log format {fmt!r}")
    return token.decode("ascii"), int(dim)


def read(path: Path, token: str, dim: int, offset: int = HEADER_SIZE, upto: int | None = None) -> list[Record]:
    """The whole records of the log from `offset` (a record boundary) on, in order, those with a
    generation above `upto` left out, up to the first torn or foreign one. Raises
    LogFormatError when the log is missing or belongs to another FAISS file."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise LogFormatError(str(exc)) from exc
    with handle:
        if read_header(handle) != (token, dim):
            raise LogFormatError("the log extends another FAISS file")
        handle.seek(max(offset, HEADER_SIZE))
        records = []
        position = handle.tell()
        while True:
            record = _read_record(handle, dim, position)
            if record is None:
                return records
            if upto is None or record.generation <= upto:
                records.append(record)
            position = record.end


def _read_record(handle, dim: int, position: int) -> Record | None:
    head = handle.read(RECORD.size)
    if len(head) < RECORD.size:
        return None
    magic, generation, count, n_removed, n_added, crc = RECORD.unpack(head)
    if magic != RECORD_MAGIC or min(n_removed, n_added, count) < 0:
        return None
    size = 8 * n_removed + 8 * n_added + 4 * n_added * dim
    if size > os.fstat(handle.fileno()).st_size - position - RECORD.size:  # a torn or garbled head
        return None
    payload = handle.read(size)
    if len(payload) < size or _crc(head, payload) != crc:
        return None
    removed = np.frombuffer(payload, np.int64, n_removed, 0)
    added_ids = np.frombuffer(payload, np.int64, n_added, 8 * n_removed)
    added = np.frombuffer(payload, np.float32, n_added * dim, 8 * (n_removed + n_added)).reshape(n_added, dim)
    return Record(int(generation), int(count), removed, added_ids, added, position + RECORD.size + size)


def append(path: Path, offset: int, generation: int, count: int, removed: np.ndarray, added_ids: np.ndarray,
           added: np.ndarray) -> int:
    """One record written at `offset` (the end of the valid log: anything after it is cut) and
    fsynced. -> the new end. On any error the log is cut back to `offset` and the error raised."""
    removed = np.ascontiguousarray(removed, dtype=np.int64)
    added_ids = np.ascontiguousarray(added_ids, dtype=np.int64)
    added = np.ascontiguousarray(added, dtype=np.float32)
    payload = removed.tobytes() + added_ids.tobytes() + added.tobytes()
    head = RECORD.pack(RECORD_MAGIC, generation, count, len(removed), len(added_ids), 0)
    head = RECORD.pack(RECORD_MAGIC, generation, count, len(removed), len(added_ids), _crc(head, payload))
    with open(path, "r+b") as handle:
        try:
            handle.truncate(offset)
            handle.seek(offset)
            handle.write(head)
            handle.write(payload)
            handle.flush()
            _datasync(handle.fileno())
        except BaseException:
            handle.truncate(offset)
            raise
    return offset + len(head) + len(payload)


def _crc(head: bytes, payload: bytes) -> int:
    """CRC32 of a record: its head's fields (the CRC field itself left out) and its payload."""
    return zlib.crc32(payload, zlib.crc32(head[: RECORD.size - 4]))


def truncate(path: Path, offset: int) -> None:
    """Cut the log back to `offset` (a record whose checkpoint did not commit)."""
    with open(path, "r+b") as handle:
        handle.truncate(offset)
        handle.flush()
        _datasync(handle.fileno())


@dataclass
class NetChange:
    """What a run of records did, as a whole: every id they touched (its vector in the FAISS
    file, if any, is gone or replaced), and the vectors live after the last of them."""

    touched: np.ndarray  # int64, sorted
    ids: np.ndarray  # int64: ids with a live vector after the records
    vectors: np.ndarray  # float32 (n, dim)


def net_change(records: list[Record], dim: int) -> NetChange:
    live: dict[int, np.ndarray] = {}
    touched: set[int] = set()
    for record in records:
        for i in record.removed.tolist():
            live.pop(i, None)
        touched.update(record.removed.tolist())
        for i, vector in zip(record.added_ids.tolist(), record.added):
            live[i] = vector
        touched.update(record.added_ids.tolist())
    ids = np.fromiter(live, dtype=np.int64, count=len(live))
    vectors = np.stack(list(live.values())).astype(np.float32) if live else np.zeros((0, dim), np.float32)
    return NetChange(np.array(sorted(touched), dtype=np.int64), ids, vectors)
