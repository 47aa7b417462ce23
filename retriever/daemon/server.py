"""The warm query daemon: one background process per index that keeps the query encoder and the
FAISS index loaded, so that `retriever search` and `retriever similar` answer in tens of
milliseconds instead of a second of imports and model loading.

Its warm state is a retriever.api.Collection, as `retriever serve`'s is (the model behind a lock
with its text-embedding cache, the Searcher rebuilt when an indexing run commits). It is not the
serve process itself: `serve` speaks HTTP to browsers, the daemon speaks one JSON line over a Unix
socket (retriever.daemon.client describes the protocol) to the `retriever` command.

A query is answered by running the very command line the client got, with the click group it was
given (`command`: retriever.cli.main; this package imports nothing from the CLI), in this
process, with the warm collection as the click context object: its working directory, its environment (RETRIEVER_*, TZ) and its kind of output are
the client's for the time of the command, standard output and error are captured, and the bytes
go back to the client, which writes them. So the output is a local run's, byte for byte; only
`-v` says who answered. Commands run one at a time (the working directory and sys.stdout are
the process's): a second client waits for the first.

What it handles:
  - one daemon per index: a flock on SOCKET.lock, taken before anything is loaded; the socket is
    bound under a temporary name and renamed into place, so it replaces a stale one atomically;
  - only this user: the socket is 0600 (in a 0700 folder when the index path is too long for a
    socket) and every peer's uid is checked (SO_PEERCRED);
  - idle timeout: it exits after `idle_s` seconds without a query (default 300; a query can
    change it with --daemon-idle), on SIGTERM/SIGINT, and on `retriever daemon stop`, removing
    its socket (only if it is still its own);
  - another build: a client whose version, interpreter or source files differ makes it exit;
    the client runs the query itself and starts a new daemon;
  - a rebuilt index: a new catalog file (deleted and created again) or a new ONNX export makes it
    exit (checked at every query and every few seconds); new checkpoints of an indexing run, and
    a FAISS file replaced by `retriever optimize`, are reloaded before the next query.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from retriever.daemon.client import (
    DEFAULT_IDLE_S,
    FORWARDED_ENV,
    FORWARDED_ENV_PREFIX,
    PROTOCOL,
    RunLocally,
    build_id,
    is_running,
    lock_path,
    peer_uid,
    read_line,
    socket_path,
)
from retriever.errors import RetrieverError
from retriever.locations import resolve_home

LOCK_WAIT_S = 15.0  # a daemon starting while another holds the lock waits this long for it to go
CHECK_EVERY_S = 2.0  # how often an idle daemon looks whether its index was rebuilt
REQUEST_TIMEOUT_S = 10.0  # a client has this long to send its request line (commands run one at a time)
ANSWER_SEND_TIMEOUT_S = 30.0
MAX_REQUEST_BYTES = 4 << 20
ACCEPT_TICK_S = 0.5
# ONNX Runtime threads for queries: one query runs at a time, and on a CPU busy with other work
# one thread embeds a ViT-B-32 text in half the time two take (30 against 59 ms with one-shot
# sessions at load 5 on 2 cores); the embeddings are the same to the bit.
QUERY_THREADS = 1


class DaemonError(RetrieverError):
    """The daemon cannot start (another one runs, the index is missing, the socket cannot be bound)."""


class Daemon:
    """The daemon of the index in `folder`. `start()` takes the lock, loads and warms the index and
    binds the socket; `serve()` answers until idle, stopped or the index is rebuilt; `close()`."""

    def __init__(self, folder: str | os.PathLike, idle_s: float = DEFAULT_IDLE_S, *, command, log=None,
                 encoder=None, build: str | None = None):
        """command: the click group whose command lines the clients send (retriever.cli.main).
        build: this process's build id, taken before the code was imported (None: now)."""
        folder = Path(folder)
        self.command = command
        self.folder = resolve_home(folder.parent) / folder.name  # as the CLI computes it
        self.idle_s = float(idle_s)
        self.socket_path = socket_path(self.folder)
        self.build = build or build_id()
        self.log = log or (lambda message: None)  # the process entry logs to the daemon's log file
        self.requests = 0
        self.started_at = time.time()
        self.stop_reason: str | None = None
        self.collection = None
        self._encoder = encoder  # a loaded encoder of the index's model; None: as a local search picks
        self._lock_fd: int | None = None
        self._listener: socket.socket | None = None
        self._socket_ino: int | None = None
        self._identity: tuple | None = None
        self._vectors_sig: tuple | None = None
        self._last_active = time.monotonic()
        self._last_check = time.monotonic()

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Raises DaemonError when another daemon holds the index, or it cannot load or bind."""
        if not self._acquire_lock():
            raise DaemonError(f"another daemon serves {self.folder}")
        try:
            self._load()
            self._bind()
        except BaseException:
            self.close()
            raise
        self.log(f"serving {self.folder} on {self.socket_path} (idle timeout {self.idle_s:g} s)")

    def serve(self) -> str:
        """Answer clients until stopped; the reason it stopped."""
        listener = self._listener
        assert listener is not None, "start() first"
        listener.settimeout(ACCEPT_TICK_S)
        self._last_active = time.monotonic()
        while self.stop_reason is None:
            try:
                conn, _ = listener.accept()
            except (socket.timeout, InterruptedError):
                self._tick()
                continue
            except OSError as exc:
                if self.stop_reason is None:
                    self.stop(f"the socket failed: {exc}")
                break
            try:
                self._handle(conn)
            except Exception:  # one bad request never ends the daemon
                self.log("request failed:\n" + traceback.format_exc())
            finally:
                conn.close()
        return self.stop_reason or "stopped"

    def stop(self, reason: str) -> None:
        """Stop accepting: the socket goes at once (new clients run locally), serve() returns."""
        if self.stop_reason is None:
            self._remove_socket()  # first: whoever sees the reason finds the socket gone
            self.stop_reason = reason

    def close(self) -> None:
        self._remove_socket()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.collection is not None:
            self.collection.close()
            self.collection = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock; the lock file itself stays
            self._lock_fd = None

    def status(self) -> dict[str, Any]:
        from retriever import __version__

        collection = self.collection
        return {
            "status": "ok",
            "pid": os.getpid(),
            "folder": str(self.folder),
            "socket": self.socket_path,
            "version": __version__,
            "build": self.build,
            "model_id": collection.model_id if collection else None,
            "query_encoder": collection.query_encoder.text_backend if collection else None,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "uptime_s": round(time.time() - self.started_at, 1),
            "idle_timeout_s": self.idle_s,
            "idle_s": round(time.monotonic() - self._last_active, 1),
            "requests": self.requests,
            "reloads": collection.reloads if collection else 0,
            "rss_mb": _rss_mb(),
        }

    # -- starting -------------------------------------------------------------------------------

    def _acquire_lock(self) -> bool:
        """The index's daemon lock. Held by a daemon that answers: False at once. Held by one
        that is starting or exiting: wait for it, LOCK_WAIT_S at most."""
        import fcntl

        fd = os.open(lock_path(self.folder), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if is_running(self.folder) or time.monotonic() > deadline:
                    os.close(fd)
                    return False
                time.sleep(0.1)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd = fd
            return True

    def _load(self) -> None:
        from retriever.index import Index

        index = Index.open(self.folder.parent, self.folder.name)
        try:
            self._identity = self._read_identity()
            self.collection = warm_collection(index, self._encoder)
            self.collection.warm()
        except BaseException:
            index.close()
            raise
        self._vectors_sig = _file_sig(index.vectors_path)
        # One query through the whole command, so that the first client finds every module
        # imported and every cache (FTS, FAISS, ONNX session) warm.
        self._run_command(["retriever", "search", "--home", str(self.folder.parent), "--index", self.folder.name,
                           "-k", "1", "warm up"], _stream_defaults(), {}, None)

    def _bind(self) -> None:
        tmp = os.path.join(os.path.dirname(self.socket_path), f".d{os.getpid()}.tmp")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is created 0600
        try:
            listener.bind(tmp)
        except OSError as exc:
            listener.close()
            raise DaemonError(f"cannot bind {tmp}: {exc}") from None
        finally:
            os.umask(old_umask)
        os.chmod(tmp, 0o600)
        listener.listen(64)
        os.replace(tmp, self.socket_path)  # atomically over a stale socket: we hold the lock
        self._socket_ino = os.stat(self.socket_path).st_ino
        self._listener = listener

    def _remove_socket(self) -> None:
        """Unlink the socket path if it is still ours (a newer daemon may have replaced it)."""
        if self._socket_ino is None:
            return
        try:
            if os.lstat(self.socket_path).st_ino == self._socket_ino:
                os.unlink(self.socket_path)
        except OSError:
            pass
        self._socket_ino = None

    # -- the index under us ---------------------------------------------------------------------

    def _read_identity(self) -> tuple:
        """What must not change under a running daemon: the catalog file (a rebuilt index is a new
        file) and the ONNX export (it decides the query encoder)."""
        catalog = os.stat(self.folder / "catalog.db")
        return (catalog.st_dev, catalog.st_ino, _file_sig(self.folder / "onnx"), _file_sig(self.folder / "onnx.json"))

    def _same_index(self) -> bool:
        try:
            return self._read_identity() == self._identity
        except OSError:
            return False

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_active >= self.idle_s:
            self.stop(f"idle for {self.idle_s:g} s")
        elif now - self._last_check >= CHECK_EVERY_S:
            self._last_check = now
            if not self._same_index():
                self.stop("the index was rebuilt or removed")

    def _refresh(self) -> None:
        """New checkpoints (a new generation) or a replaced FAISS file: a new Searcher."""
        collection = self.collection
        reloads = collection.reloads
        collection.searcher()
        sig = _file_sig(collection.idx.vectors_path)
        if sig != self._vectors_sig:
            if collection.reloads == reloads:
                collection.reload()
            self._vectors_sig = _file_sig(collection.idx.vectors_path)

    def _warm_collection(self, folder: Path, device: str, idle_s: float | None):
        """The click context object of the commands this daemon runs: (index folder, device,
        idle seconds) of the command line -> the warm Collection, or RunLocally."""
        if Path(folder) != self.folder:
            raise RunLocally(f"another index ({folder})")
        if device != "auto":
            raise RunLocally(f"--device {device}: the daemon's model runs where auto puts it")
        if idle_s is not None:
            self.idle_s = float(idle_s)
        return self.collection

    # -- requests -------------------------------------------------------------------------------

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT_S)
        uid = peer_uid(conn)
        if uid is not None and uid != os.getuid():
            self.log(f"refused a client of uid {uid}")
            return
        try:
            line = read_line(conn, MAX_REQUEST_BYTES)
        except ConnectionResetError:  # a client that only looked whether a daemon listens
            return
        except (OSError, ValueError) as exc:
            self.log(f"unreadable request: {exc}")
            return
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self.log(f"unreadable request: {exc}")
            return
        op = message.get("op")
        if op == "status":
            answer = self.status()
        elif op == "stop":
            answer = {"status": "ok", "pid": os.getpid()}
            self.stop("asked to stop")
        elif op == "run":
            answer = self._answer(message)
            self._last_active = time.monotonic()
        else:
            answer = {"status": "error", "reason": f"unknown op {op!r}"}
        conn.settimeout(ANSWER_SEND_TIMEOUT_S)
        try:
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError as exc:
            self.log(f"could not answer: {exc}")

    def _answer(self, message: dict) -> dict:
        if message.get("protocol") != PROTOCOL or message.get("build") != self.build:
            self.stop("a client of another build")
            return _decline("the daemon is another build: it exits")
        if message.get("folder") != str(self.folder):
            return _decline("another index")
        if not self._same_index():
            self.stop("the index was rebuilt or removed")
            return _decline("the index was rebuilt")
        argv = message.get("argv")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv) or len(argv) < 2:
            return _decline("no command line")
        try:
            self._refresh()
        except Exception:
            self.log("reloading failed:\n" + traceback.format_exc())
            return _decline("the daemon could not reload the index")
        self.requests += 1
        return self._run_command(argv, message.get("streams") or _stream_defaults(), message.get("env") or {},
                                 message.get("cwd"))

    def _run_command(self, argv: list[str], streams: dict, env: dict, cwd: str | None) -> dict:
        """Run `retriever` with argv in this process as the client would have: its cwd, env and
        kinds of output; {"status": "ok", "exit", "chunks"} or a decline."""
        chunks: list[list] = []
        try:
            stdout = _capture(1, chunks, streams.get("stdout") or {})
            stderr = _capture(2, chunks, streams.get("stderr") or {})
        except (LookupError, TypeError) as exc:  # an encoding this Python does not know
            return _decline(f"cannot write that output: {exc}")
        saved_streams = sys.stdout, sys.stderr
        saved_cwd = os.getcwd()
        saved_env = _swap_env(env)
        try:
            if cwd is not None:
                os.chdir(cwd)
            sys.stdout, sys.stderr = stdout, stderr
            try:
                self.command.main(args=argv[1:], prog_name=os.path.basename(argv[0]) or "retriever",
                                  standalone_mode=True, obj=self._warm_collection)
                code = 0
            except SystemExit as exc:
                code = _exit_code(exc, stderr)
            stdout.flush()
            stderr.flush()
        except RunLocally as exc:
            return _decline(str(exc))
        except Exception as exc:  # a local run reports it its own way
            self.log(f"{argv[1:]!r} failed here, left to the client:\n" + traceback.format_exc())
            return _decline(f"failed in the daemon: {exc}")
        finally:
            sys.stdout, sys.stderr = saved_streams
            _swap_env(saved_env)
            try:
                os.chdir(saved_cwd)
            except OSError:
                os.chdir("/")
        return {"status": "ok", "exit": code, "chunks": _merged(chunks)}



# -- helpers ----------------------------------------------------------------------------------------


def warm_collection(index, encoder=None):
    """The daemon's Collection: the query encoder a local search picks (ONNX when the index holds
    a valid export), with the session options of a local search (one_shot, as a CLI search opens
    its collection), so that the embeddings, hence the printed scores, are the same to the bit;
    checked for new checkpoints at every query."""
    from retriever.api import Collection

    return Collection(index, device="auto", encoder=encoder, query_threads=QUERY_THREADS, one_shot=True,
                      reload_check_s=0.0)


def query_encoder_for(index):
    """The daemon's query encoder (see warm_collection)."""
    return warm_collection(index).query_encoder


class _Sink(io.RawIOBase):
    """Bytes written to one captured stream, appended in order to a list shared by stdout and
    stderr (so the client can interleave them as they came)."""

    def __init__(self, fd: int, chunks: list, tty: bool):
        self._fd, self._chunks, self._tty = fd, chunks, tty

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._tty

    def write(self, data) -> int:
        data = bytes(data)
        if data:
            self._chunks.append([self._fd, data])
        return len(data)


def _capture(fd: int, chunks: list, info: dict) -> io.TextIOWrapper:
    return io.TextIOWrapper(_Sink(fd, chunks, bool(info.get("tty"))), encoding=info.get("encoding") or "utf-8",
                            errors=info.get("errors") or "strict", write_through=True)


def _merged(chunks: list) -> list:
    out: list[list] = []
    for fd, data in chunks:
        if out and out[-1][0] == fd:
            out[-1][1] += data
        else:
            out.append([fd, bytearray(data)])
    return [[fd, base64.b64encode(bytes(data)).decode("ascii")] for fd, data in out]


def _stream_defaults() -> dict:
    return {name: {"tty": False, "encoding": "utf-8", "errors": "strict"} for name in ("stdout", "stderr")}


def _swap_env(env: dict) -> dict:
    """Make the forwarded variables exactly `env`'s (set or unset); the previous values."""
    keys = {k for k in os.environ if k.startswith(FORWARDED_ENV_PREFIX) or k in FORWARDED_ENV}
    keys |= {k for k in env if isinstance(k, str) and (k.startswith(FORWARDED_ENV_PREFIX) or k in FORWARDED_ENV)}
    previous = {k: os.environ.get(k) for k in keys}
    tz_before = os.environ.get("TZ")
    for k in keys:
        value = env.get(k)
        if isinstance(value, str):
            os.environ[k] = value
        else:
            os.environ.pop(k, None)
    if os.environ.get("TZ") != tz_before:
        time.tzset()
    return previous


def _exit_code(exc: SystemExit, stderr: io.TextIOWrapper) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    stderr.write(f"{code}\n")  # sys.exit("message"), as the interpreter would show it
    return 1


def _decline(reason: str) -> dict:
    return {"status": "decline", "reason": reason}


def _rss_mb() -> float | None:
    """Resident memory of this process (Linux), in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _file_sig(path: os.PathLike | str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def run_daemon(folder: str | os.PathLike, command, idle_s: float = DEFAULT_IDLE_S, log=None,
               build: str | None = None) -> str:
    """Start and serve `command`'s command lines until stopped (the reason). SIGTERM and SIGINT
    stop it cleanly. Raises DaemonError (another daemon runs...) and the index's own errors
    (IndexNotFoundError...)."""
    daemon = Daemon(folder, idle_s, command=command, log=log, build=build)
    daemon.start()

    def on_signal(signum, frame):
        daemon.stop(f"signal {signal.Signals(signum).name}")

    if _in_main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        reason = daemon.serve()
    finally:
        daemon.close()
    daemon.log(f"exiting: {reason} ({daemon.requests} queries answered)")
    return reason


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
