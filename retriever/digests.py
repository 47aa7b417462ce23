"""Content hashes of weights files, remembered: a model given as a file (`--pretrained
model.pt`) is named by the hash of its content, and hashing ViT-B-32's 350 MB took 0.9 s of every
new index of the model. The hash is kept in CACHE/digests.json ($RETRIEVER_CACHE_DIR, else the
user's cache folder; not --cache-dir: the model id is worked out before the index is opened) with
the file's identity as `stat` gives it (device, inode, size, mtime and ctime in ns): a file that
changes in any way, even written back with its old mtime, changes its ctime and is hashed again.
A memo that cannot be read or written is ignored (the file is hashed)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from retriever.durable import atomic_write
from retriever.locations import cache_root

MEMO = "digests.json"
MAX_ENTRIES = 256  # the most recently hashed files


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def hash_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """The file's content hash (BLAKE2b, 8 bytes, hex), from the memo when the file is unchanged."""
    path = Path(path).resolve()
    st = path.stat()
    memo_path = cache_root(cache_dir) / MEMO
    try:
        memo = json.loads(memo_path.read_text())
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    known = memo.get(str(path))
    if isinstance(known, dict) and known.get("stat") == _identity(st) and isinstance(known.get("blake2b"), str):
        return known["blake2b"]
    digest = hash_file(path)
    if _identity(path.stat()) != _identity(st):
        return digest  # written while hashed: not remembered
    memo.pop(str(path), None)
    memo[str(path)] = {"stat": _identity(st), "blake2b": digest}
    for old in list(memo)[:-MAX_ENTRIES]:
        del memo[old]
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(memo_path, lambda tmp: tmp.write_text(json.dumps(memo)), mode=0o600)
    except OSError:
        pass
    return digest
