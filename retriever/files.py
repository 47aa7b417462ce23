"""Walking a collection and fingerprinting files. No decoding here."""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .errors import RetrieverError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"}
)
# Folders and files that photo tools and operating systems scatter around a collection.
SYSTEM_LITTER = ("@eaDir", "Thumbs.db", "desktop.ini", "$RECYCLE.BIN", "System Volume Information")


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute, normalised, not symlink-resolved
    size: int
    mtime_ns: int


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in SYSTEM_LITTER


def absolute(path: str | os.PathLike) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def walk(
    roots: Iterable[str | os.PathLike],
    *,
    include_hidden: bool = False,
    exclude: Iterable[str] = (),
) -> Iterator[FileEntry]:
    """Image files under each root (a folder, walked recursively, or a single file), sorted by path
    within each folder. Hidden files/folders and system litter are skipped unless include_hidden.
    Symlinked folders are not followed (no cycles). Raises RetrieverError for a root that does not exist."""
    patterns = list(exclude)

    def excluded(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(os.path.basename(path), p) for p in patterns)

    for root in roots:
        root = absolute(root)
        if os.path.isfile(root):
            if is_image_name(root) and not excluded(root):
                entry = _stat_entry(root)
                if entry:
                    yield entry
            continue
        if not os.path.isdir(root):
            raise RetrieverError(f"no such file or folder: {root}")
        for folder, dirs, files in os.walk(root, onerror=None):
            dirs[:] = sorted(
                d for d in dirs if (include_hidden or not _hidden(d)) and not excluded(os.path.join(folder, d))
            )
            for name in sorted(files):
                if not include_hidden and _hidden(name):
                    continue
                if not is_image_name(name):
                    continue
                path = os.path.join(folder, name)
                if excluded(path):
                    continue
                entry = _stat_entry(path)
                if entry:
                    yield entry


def _stat_entry(path: str) -> FileEntry | None:
    try:
        st = os.stat(path)
    except OSError:  # vanished or a dangling symlink: nothing to index
        return None
    if not os.path.isfile(path):
        return None
    return FileEntry(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)


def fingerprint_bytes(data: bytes) -> str:
    """Content fingerprint of a whole file: BLAKE2b-128, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def fingerprint_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_under(path: str, folder: str) -> bool:
    folder = folder.rstrip(os.sep) + os.sep
    return path == folder.rstrip(os.sep) or path.startswith(folder)


def display_path(path: str) -> str:
    """Path as given back to users: absolute (works from any folder, and with xargs)."""
    return str(Path(path))
