"""The client side of the warm query daemon (retriever.daemon.server): where its socket is, how to ask it,
how to start one. The standard library only, and only cheap modules at that: `retriever search`
reaches a warm daemon through this before click, numpy or anything else is imported.

The protocol, over a Unix stream socket: the client sends one JSON object on one line, the daemon
answers one JSON object on one line and closes.

    {"op": "run", "protocol": 1, "build": ..., "argv": [...], "cwd": ..., "env": {...},
     "folder": ..., "streams": {"stdout": {"tty": false, "encoding": "utf-8", "errors": "strict"},
     "stderr": {...}}}
      -> {"status": "ok", "exit": 0, "chunks": [[1, BASE64], [2, BASE64], ...]}   (fd 1/2 in order)
      -> {"status": "decline", "reason": ...}   (run it locally: a query it cannot answer as a
         local run would, an index that was rebuilt, a daemon of another build)
    {"op": "status"} -> {"status": "ok", "pid": ..., ...}
    {"op": "stop"}   -> {"status": "ok", "pid": ...}, then the daemon exits
"""

from __future__ import annotations

import json
import os
import socket
import sys

from retriever import __version__

PROTOCOL = 1
SOCKET_NAME = "daemon.sock"
LOG_NAME = "daemon.log"
NO_DAEMON_ENV = "RETRIEVER_NO_DAEMON"  # 1: never ask or start a daemon
IDLE_ENV = "RETRIEVER_DAEMON_IDLE"  # seconds a daemon waits for the next query before it exits
DEFAULT_IDLE_S = 300.0
# sun_path holds 108 bytes on Linux, 104 on macOS, the final NUL included.
MAX_SOCKET_PATH = 100
SUPPORTED = os.name == "posix" and hasattr(socket, "AF_UNIX")
ANSWER_TIMEOUT_S = 120.0  # a daemon that takes longer is left alone: the query runs locally
MAX_ANSWER_BYTES = 256 << 20
# Environment variables a query reads (the home, the preview setting, the time zone of dates).
FORWARDED_ENV_PREFIX = "RETRIEVER_"
FORWARDED_ENV = ("TZ",)


class DaemonUnavailable(Exception):
    """No daemon answered (none running, a stale socket, a daemon of another user, a broken answer)."""


class RunLocally(Exception):
    """Raised inside a daemon: this command cannot be answered there exactly as a local run would
    answer it (another index or device, an option that needs the client's terminal); the client
    runs it itself. Not a RetrieverError, so that the CLI's error handling lets it through."""


def daemon_disabled(environ=os.environ) -> bool:
    """RETRIEVER_NO_DAEMON is set (to anything but 0/false/no/off), or there are no Unix sockets."""
    if not SUPPORTED:
        return True
    return environ.get(NO_DAEMON_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def socket_path(folder: str | os.PathLike) -> str:
    """INDEX/daemon.sock; when that is too long for a Unix socket, a short name made of a hash of
    the folder in a private (0700) runtime folder: $XDG_RUNTIME_DIR/retriever, else
    /tmp/retriever-UID."""
    path = os.path.join(os.fspath(folder), SOCKET_NAME)
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    import hashlib

    digest = hashlib.blake2b(os.fsencode(os.fspath(folder)), digest_size=10).hexdigest()
    return os.path.join(_private_runtime_folder(len(digest) + 6), f"{digest}.sock")


def lock_path(folder: str | os.PathLike) -> str:
    """Held (flock) by the one daemon of an index, from before it loads anything until it exits."""
    return socket_path(folder) + ".lock"


def log_path(folder: str | os.PathLike) -> str:
    return os.path.join(os.fspath(folder), LOG_NAME)


def build_id() -> str:
    """This installation of retriever: its version, the interpreter, and the size and mtime of
    every source file of the package (a few ms). A daemon of another build is told to exit."""
    package = os.path.dirname(os.path.abspath(__file__))
    entries: list[str] = []
    _list_sources(package, entries)
    entries.sort()
    import zlib

    digest = zlib.crc32("\n".join(entries).encode("utf-8", "surrogateescape"))
    return f"{__version__}:{os.path.realpath(sys.executable)}:{len(entries)}:{digest:08x}"


def _list_sources(folder: str, out: list[str]) -> None:
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.endswith(".py"):
                    st = entry.stat()
                    out.append(f"{entry.path}\0{st.st_size}\0{st.st_mtime_ns}")
                elif entry.name != "__pycache__" and entry.is_dir(follow_symlinks=False):
                    _list_sources(entry.path, out)
    except OSError:
        pass


def ask(folder: str | os.PathLike, message: dict, timeout: float = ANSWER_TIMEOUT_S) -> dict:
    """Send one message to the daemon of the index in `folder`; its answer. Raises
    DaemonUnavailable when none answers; a socket nobody listens on any more is removed."""
    path = socket_path(folder)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, NotADirectoryError):
            raise DaemonUnavailable("no daemon") from None
        except ConnectionRefusedError:
            _remove_stale(path)
            raise DaemonUnavailable("a stale socket (its daemon is gone): removed") from None
        except OSError as exc:
            raise DaemonUnavailable(f"cannot reach the daemon: {exc}") from None
        if not _same_user(sock):
            raise DaemonUnavailable("the socket belongs to another user")
        try:
            sock.sendall(json.dumps(message).encode("utf-8", "surrogateescape") + b"\n")
            data = read_line(sock, MAX_ANSWER_BYTES)
        except (OSError, ValueError) as exc:
            raise DaemonUnavailable(f"the daemon did not answer: {exc}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(data)
    except ValueError:
        raise DaemonUnavailable("the daemon's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise DaemonUnavailable("the daemon's answer is not an object")
    return answer


def is_running(folder: str | os.PathLike) -> bool:
    """Whether something listens on the daemon socket of `folder` (no request is sent)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path(folder))
        return True
    except (OSError, DaemonUnavailable):
        return False
    finally:
        sock.close()


def run_request(argv: list[str], folder: str | os.PathLike) -> dict:
    """The message that runs `argv` (sys.argv: the program name first) in the daemon as this
    process would run it: its working directory, environment and kind of output."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX) or k in FORWARDED_ENV}
    return {
        "op": "run",
        "protocol": PROTOCOL,
        "build": build_id(),
        "argv": list(argv),
        "cwd": os.getcwd(),
        "env": env,
        "folder": os.fspath(folder),
        "streams": {name: _stream_info(getattr(sys, name)) for name in ("stdout", "stderr")},
    }


def start_daemon(folder: str | os.PathLike, idle_s: float | None = None) -> bool:
    """Start a daemon for the index in `folder` in the background (a new session, output to
    INDEX/daemon.log), unless one answers already. True when one was started. A daemon that finds
    another holding the index's daemon lock exits at once, so two clients starting one at the
    same moment leave one."""
    if not SUPPORTED or is_running(folder):
        return False
    import subprocess

    command = [sys.executable, "-m", "retriever.daemon", "--folder", os.fspath(folder)]
    if idle_s is not None:
        command += ["--idle", str(float(idle_s))]
    log = log_path(folder)
    try:
        if os.path.getsize(log) > 1 << 20:  # keep the log small: the last run's lines suffice
            os.truncate(log, 0)
    except OSError:
        pass
    try:
        with open(os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as out:
            subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd="/",
                             start_new_session=True, close_fds=True)
    except OSError:
        return False
    return True


# -- helpers ----------------------------------------------------------------------------------------


def _stream_info(stream) -> dict:
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError, OSError):
        tty = False
    return {"tty": bool(tty), "encoding": getattr(stream, "encoding", None) or "utf-8",
            "errors": getattr(stream, "errors", None) or "strict"}


def read_line(sock: socket.socket, limit: int) -> bytes:
    """One line of the protocol (a JSON object and a newline), without the newline. Raises
    ConnectionResetError when the peer closes before the newline, ValueError past `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionResetError("the connection closed before a full line")
        end = chunk.find(b"\n")
        if end >= 0:
            parts.append(chunk[:end])
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ValueError(f"a line longer than {limit} bytes")


def _same_user(sock: socket.socket) -> bool:
    """The peer runs as this user (Linux: SO_PEERCRED; elsewhere the 0600 socket is the guard)."""
    try:
        uid = peer_uid(sock)
    except OSError:
        return False
    return uid is None or uid == os.getuid()


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux), else None."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return None
    import struct

    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
    return uid


def _remove_stale(path: str) -> None:
    """Remove a socket that refuses connections, unless a daemon replaced it meanwhile."""
    import stat

    try:
        before = os.lstat(path)
        if not stat.S_ISSOCK(before.st_mode) or before.st_uid != os.getuid():
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return  # someone listens now
        except ConnectionRefusedError:
            pass
        finally:
            probe.close()
        if os.lstat(path).st_ino == before.st_ino:
            os.unlink(path)
    except OSError:
        pass


def _private_runtime_folder(name_length: int) -> str:
    """A folder only this user can enter, for sockets whose natural path is too long:
    $XDG_RUNTIME_DIR/retriever, or /tmp/retriever-UID where that is unset or itself too long
    for a socket name of name_length bytes."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime, "retriever") if runtime and os.path.isdir(runtime) else ""
    if not base or len(os.fsencode(base)) + 1 + name_length > MAX_SOCKET_PATH:
        base = os.path.join("/tmp", f"retriever-{os.getuid()}")
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(base)
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise DaemonUnavailable(f"{base} is not a private folder of this user")
    return base
