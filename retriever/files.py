"""Walking a collection and fingerprinting files. No decoding here."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from retriever.errors import RetrieverError
from retriever.images import supported_suffixes
from retriever.remote import is_url, normalize_url, walk_url
from retriever.video import VIDEO_SUFFIXES

# Every suffix images.decode handles or explains (HEIC/AVIF/RAW included even when their decoder
# is not installed: see images.supported_suffixes), and videos (sampled frames: see video.py).
IMAGE_SUFFIXES = supported_suffixes() | VIDEO_SUFFIXES
# Folders and files that photo tools and operating systems scatter around a collection.
SYSTEM_LITTER = ("@eaDir", "Thumbs.db", "desktop.ini", "$RECYCLE.BIN", "System Volume Information")


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute, normalised, not symlink-resolved; may hold surrogate escapes (see path_to_text)
    size: int
    mtime_ns: int


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in SYSTEM_LITTER


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute and normalised; a URL (s3://, file://, ...) in its canonical spelling."""
    path = os.fspath(path)
    if isinstance(path, str) and is_url(path):
        return normalize_url(path)
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def walk(
    roots: Iterable[str | os.PathLike],
    *,
    include_hidden: bool = False,
    exclude: Iterable[str] = (),
    on_error: Callable[[str, OSError], None] | None = None,
) -> Iterator[FileEntry]:
    """Image files under each root (a folder, walked recursively, or a single file), sorted by path
    within each folder, each folder's files before its subfolders. Hidden files/folders and
    system litter are skipped unless include_hidden. Raises RetrieverError for a root that does
    not exist.

    Symlinks to files and folders are followed, but every folder and every file is visited once
    (identified by device and inode): a link loop, a second link to the same folder, or a link to
    a folder that is also walked directly costs nothing. Links are followed only after every real
    folder, so a file reachable both ways keeps its real path when that lies inside the roots.

    Only regular files are yielded (never a FIFO or a device, which could block a reader; never a
    folder named like an image). A file that cannot be read is still yielded, so that the indexer
    records why; a folder that cannot be listed is skipped and passed to on_error(path, error)
    (vanished ones silently)."""
    patterns = list(exclude)
    visited: set = set()  # keys of folders and files already walked or yielded
    links: deque[str] = deque()  # symlinks met in real folders, followed once those are done

    def excluded(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(os.path.basename(path), p) for p in patterns)

    def report(path: str, exc: OSError) -> None:
        if on_error is not None and not isinstance(exc, FileNotFoundError):
            on_error(path, exc)

    def first_visit(path: str, st: os.stat_result) -> bool:
        key = _identity(path, st)
        if key in visited:
            return False
        visited.add(key)
        return True

    def file_entry(path: str, st: os.stat_result) -> FileEntry | None:
        if stat.S_ISREG(st.st_mode) and first_visit(path, st):
            return FileEntry(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)
        return None

    def walk_tree(top: str) -> Iterator[FileEntry]:
        folders = [top]
        while folders:
            folder = folders.pop()
            try:
                if not first_visit(folder, os.stat(folder)):
                    continue
                with os.scandir(folder) as it:
                    children = sorted(it, key=lambda e: e.name)
            except OSError as exc:  # unreadable, vanished, or path too long
                report(folder, exc)
                continue
            subfolders = []
            for child in children:
                if not include_hidden and _hidden(child.name):
                    continue
                path = os.path.join(folder, child.name)
                if excluded(path):
                    continue
                try:
                    if child.is_symlink():
                        links.append(path)
                    elif child.is_dir(follow_symlinks=False):
                        subfolders.append(path)
                    elif is_image_name(child.name) and child.is_file(follow_symlinks=False):
                        entry = file_entry(path, child.stat(follow_symlinks=False))
                        if entry:
                            yield entry
                except OSError:  # vanished since the listing, or cannot be stat'ed: nothing to index
                    continue
            folders.extend(reversed(subfolders))  # popped in sorted order

    def walk_path(path: str) -> Iterator[FileEntry]:
        """A root or a followed link: a folder is walked, an image file yielded, the rest ignored."""
        try:
            st = os.stat(path)  # follows symlinks
        except OSError:  # dangling link or vanished
            return
        if stat.S_ISDIR(st.st_mode):
            yield from walk_tree(path)
        elif is_image_name(path) and not excluded(path):
            entry = file_entry(path, st)
            if entry:
                yield entry

    for root in roots:
        root = absolute(root)
        if is_url(root):  # remote or shared storage, through fsspec (see remote.py)
            for url, size, mtime_ns in walk_url(root, include_hidden=include_hidden, exclude=patterns,
                                                on_error=on_error, wanted=is_image_name, hidden=_hidden):
                yield FileEntry(path=url, size=size, mtime_ns=mtime_ns)
            continue
        try:
            os.stat(root)
        except (FileNotFoundError, NotADirectoryError):  # a dangling link included
            raise RetrieverError(f"no such file or folder: {root}") from None
        except OSError as exc:  # exists but cannot be reached (permission, link loop)
            report(root, exc)
            continue
        yield from walk_path(root)
    while links:
        yield from walk_path(links.popleft())


def _identity(path: str, st: os.stat_result) -> tuple:
    # Some filesystems (and Windows for some volumes) report inode 0: fall back to the real path.
    return (st.st_dev, st.st_ino) if st.st_ino else ("path", os.path.realpath(path))


# --- paths in the catalog -----------------------------------------------------------------------
#
# On Linux a file name is any bytes; Python gives a name that is not valid UTF-8 back as a str with
# lone surrogates (U+DC80-U+DCFF, "surrogateescape"), which open() accepts but SQLite text cannot
# hold (the sqlite3 module raises UnicodeEncodeError: one such file would fail a whole batch). So
# the catalog stores paths through path_to_text/path_from_text: a path that is valid Unicode (all
# but those) is stored unchanged and stays readable; any other is stored as NON_UNICODE_PREFIX
# followed by the path with each undecodable byte written \xNN (other lone surrogates, which
# Windows allows, \uNNNN) and each backslash doubled. No absolute path starts with the prefix, and a
# path that does is escaped too, so the mapping is exactly reversible for every str.

NON_UNICODE_PREFIX = "non-unicode:"
_UNESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def path_to_text(path: str) -> str:
    """A path as SQLite-safe text; path_from_text gives it back exactly."""
    if not path.startswith(NON_UNICODE_PREFIX):
        try:
            path.encode("utf-8")
            return path
        except UnicodeEncodeError:
            pass
    return NON_UNICODE_PREFIX + "".join(_escape(ch) for ch in path)


def path_from_text(text: str) -> str:
    if not text.startswith(NON_UNICODE_PREFIX):
        return text
    return _UNESCAPE.sub(_unescape, text[len(NON_UNICODE_PREFIX):])


def text_prefixes(prefix: str) -> list[str]:
    """The stored spellings a path under the folder `prefix` (ending in "/") can start with:
    its plain spelling and, since a path with an undecodable name anywhere in it is stored
    whole in the escaped form, its escaped spelling."""
    plain = path_to_text(prefix)
    escaped = NON_UNICODE_PREFIX + "".join(_escape(ch) for ch in prefix)
    return [plain] if plain == escaped else [plain, escaped]


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch == "\\":
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape gives it
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return ch


def _unescape(match: re.Match) -> str:
    token = match.group(1)
    if token == "\\":
        return "\\"
    if token[0] == "x":
        return chr(0xDC00 + int(token[1:], 16))
    return chr(int(token[1:], 16))


# --- fingerprints and display -------------------------------------------------------------------


def fingerprint_bytes(data: bytes) -> str:
    """Content fingerprint of a whole file: BLAKE2b-128, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def fingerprint_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    with open(path, "rb") as f:
        return _fingerprint_reads(lambda: f.read(chunk))


def fingerprint_fd(fd: int, chunk: int = 1 << 20) -> str:
    """fingerprint_file of an open file descriptor, read from the start and left at offset 0."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return _fingerprint_reads(lambda: os.read(fd, chunk))
    finally:
        os.lseek(fd, 0, os.SEEK_SET)


def _fingerprint_reads(read: Callable[[], bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    while block := read():
        h.update(block)
    return h.hexdigest()


def is_under(path: str, folder: str) -> bool:
    folder = folder.rstrip(os.sep) + os.sep
    return path == folder.rstrip(os.sep) or path.startswith(folder)
