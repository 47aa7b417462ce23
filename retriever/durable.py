"""Files that survive a crash, and the processes that own them (standard library only): a file
written whole or not at all, a folder's entries made durable, whether the process that left a
file behind is still alive."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


PRIVATE_DIR = 0o700  # an index's folders: its paths, places, captions and text are private data
PRIVATE_FILE = 0o600


def private_folder(path: Path) -> Path:
    """`path` made (with its parents) and kept 0700, whatever the umask."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if path.stat().st_mode & 0o777 != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path


def others_can_read(path: Path) -> bool:
    """True when users other than the owner may read (or list) `path`."""
    try:
        return bool(path.stat().st_mode & 0o077)
    except OSError:
        return False


def atomic_write(path: Path, write: Callable[[Path], None], mode: int = PRIVATE_FILE) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` at once:
    a reader sees the old file or the new one, never half of it, whatever kills the process."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # mkstemp makes 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(path: Path) -> None:
    """Make the folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(path: Path, since: str, busy: str) -> Iterator[None]:
    """An exclusive lock on the file `path` (flock: released by the kernel if the holder dies),
    which records this process's pid and `since`. Taken by another process: IndexLockedError at
    once (no waiting), `busy` followed by who holds it and "; wait for it"."""
    import fcntl

    from retriever.errors import IndexLockedError

    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (OSError, ValueError):
                holder = {}
            who = f" (pid {holder.get('pid')} since {holder.get('since')})" if isinstance(holder, dict) and holder else ""
            raise IndexLockedError(f"{busy}{who}; wait for it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": since}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
