"""The warm query daemon (retriever.daemon.server) and its client (retriever.daemon.entry, retriever.daemon.client).

Daemons run in a thread of this process with the session's offline encoder (instant start) and
are reached through the real `retriever` entry point in subprocesses; one test starts the whole
thing the way a user does (a local search that leaves a daemon behind). Every daemon is stopped
at the end of its test; conftest sets RETRIEVER_NO_DAEMON=1 for everything else."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from retriever.daemon import client as daemon_client
from retriever.daemon.entry import daemon_target
from retriever.daemon.server import Daemon, DaemonError
from retriever.daemon.client import DaemonUnavailable, ask, is_running, run_request, socket_path
from retriever.cli import main

from conftest import PHOTOS, REPO

# The entry point as the console script runs it, without depending on where pip put the script.
ENTRY = [sys.executable, "-c", "import sys; from retriever.daemon.entry import main; sys.argv[0] = 'retriever'; main()"]


@pytest.fixture
def home(tmp_path, offline_index) -> Path:
    """A private copy of the offline index: HOME/default."""
    home = tmp_path / "home"
    shutil.copytree(offline_index.folder, home / "default", ignore=shutil.ignore_patterns("*.lock", "daemon*"))
    return home


@pytest.fixture
def start_daemon(offline_encoder):
    """start_daemon(folder, idle_s=30) -> a Daemon serving in a thread; all stopped at the end."""
    running: list[tuple[Daemon, threading.Thread]] = []

    def start(folder: Path, idle_s: float = 30.0) -> Daemon:
        daemon = Daemon(folder, idle_s, command=main, log=lambda m: None, encoder=offline_encoder)
        daemon.start()
        thread = threading.Thread(target=daemon.serve, daemon=True)
        thread.start()
        running.append((daemon, thread))
        return daemon

    yield start
    for daemon, thread in running:
        daemon.stop("test over")
        thread.join(10)
        daemon.close()


def client_env(home: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RETRIEVER_NO_DAEMON"}
    env.update(RETRIEVER_HOME=str(home), HF_HUB_OFFLINE="1", **extra)
    return env


def through_entry(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(ENTRY + args, capture_output=True, env=env, cwd=cwd, timeout=120)


def local_run(args: list[str], cwd: Path, monkeypatch, offline_encoder) -> tuple[int, bytes, bytes]:
    """The command run locally in this process (no daemon), with the session's encoder."""
    from retriever.cli import main
    from retriever.index import Index

    monkeypatch.setattr(Index, "load_encoder", lambda self, device="auto", batch_size=None: offline_encoder)
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(main, args + ["--no-daemon"], prog_name="retriever")
    monkeypatch.undo()
    return result.exit_code, result.stdout_bytes, result.stderr_bytes


QUERIES = [
    ["search", "a cat", "--json", "-k", "5"],
    ["search", "a rocket", "-0", "-k", "4"],
    ["similar", "photos/chelsea.png", "-k", "3"],
    ["search", "photos/coffee.jpg", "-", "a cup", "--in", "photos", "-k", "3"],
    ["search", "a cat", "--after", "not-a-date"],
    ["similar", "missing.jpg"],
]


def test_answers_are_byte_identical_to_a_local_run(home, start_daemon, monkeypatch, offline_encoder):
    cwd = PHOTOS.parent  # relative image paths and --in are the client's
    expected = [local_run(q + ["--home", str(home)], cwd, monkeypatch, offline_encoder) for q in QUERIES]
    assert expected[0][0] == 0 and expected[0][1].count(b"\n") == 5
    assert expected[4][0] == 1 and expected[5][0] == 1  # errors too come back as a local run gives them
    daemon = start_daemon(home / "default")
    for query, (code, out, err) in zip(QUERIES, expected):
        proc = through_entry(query, client_env(home), cwd)
        assert (proc.returncode, proc.stdout, proc.stderr) == (code, out, err), query
    assert daemon.requests == len(QUERIES)  # every one answered by the daemon, none locally


def test_the_daemon_makes_its_onnx_sessions_like_a_local_search(home, monkeypatch, offline_encoder):
    """ONNX session options move embeddings in the last bits: the daemon's query encoder must be
    made as the local search's is, or a score could print differently (threads do not matter)."""
    import retriever.onnx
    from retriever.cli import main
    from retriever.index import Index
    from retriever.daemon.server import query_encoder_for

    calls = []
    monkeypatch.setattr(retriever.onnx, "onnx_encoder_for",
                        lambda index, threads=None, one_shot=False: calls.append(one_shot))
    monkeypatch.setattr(Index, "load_encoder", lambda self, device="auto", batch_size=None: offline_encoder)
    assert CliRunner().invoke(main, ["search", "a cat", "--home", str(home), "--no-daemon"]).exit_code == 0
    index = Index.open(home, "default")
    try:
        query_encoder_for(index).embed_texts(["a cat"])
    finally:
        index.close()
    assert len(calls) >= 2 and len(set(calls)) == 1, calls  # the local search's call, the daemon's


def test_two_clients_at_once_get_their_own_answers(home, start_daemon):
    daemon = start_daemon(home / "default")
    env = client_env(home)
    words = ["a cat", "a rocket", "coins", "a brick wall", "the moon", "flowers"]
    alone = {w: through_entry(["search", w, "--json"], env, REPO).stdout for w in words}
    procs = {w: subprocess.Popen(ENTRY + ["search", w, "--json"], stdout=subprocess.PIPE, env=env, cwd=REPO)
             for w in words}
    together = {w: p.communicate(timeout=120)[0] for w, p in procs.items()}
    assert together == alone
    assert len(set(alone.values())) == len(words)
    assert daemon.requests == 2 * len(words)


def test_verbose_says_who_answered_and_help_stays_local(home, start_daemon):
    daemon = start_daemon(home / "default")
    env = client_env(home)
    proc = through_entry(["search", "a cat", "-v", "-k", "1"], env, REPO)
    assert f"answered by the warm daemon (pid {os.getpid()})".encode() in proc.stderr
    proc = through_entry(["search", "--help"], env, REPO)  # the width of this terminal: here
    assert proc.returncode == 0 and b"--no-daemon" in proc.stdout
    assert daemon.requests == 1  # (--preview, --html, --rerank, --no-daemon: test_which_command_lines...)


def test_another_index_or_device_is_declined(home, start_daemon, tmp_path):
    start_daemon(home / "default")
    folder = home / "default"
    # The client names this index, the command line another one (read differently by click).
    request = run_request(["retriever", "search", "a cat", "--index", "other"], folder)
    assert ask(folder, request)["status"] == "decline"
    request = run_request(["retriever", "search", "a cat", "--device", "cpu"], folder)
    assert ask(folder, request)["status"] == "decline"
    assert ask(folder, run_request(["retriever", "search", "a cat"], folder))["status"] == "ok"


def test_a_daemon_of_another_build_exits_and_the_client_runs_locally(home, start_daemon, monkeypatch):
    daemon = start_daemon(home / "default")
    folder = home / "default"
    request = {**run_request(["retriever", "search", "a cat"], folder), "build": "0.0.1:elsewhere"}
    assert ask(folder, request)["status"] == "decline"
    deadline = time.monotonic() + 5
    while daemon.stop_reason is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.stop_reason == "a client of another build"
    assert not os.path.exists(socket_path(folder))
    with pytest.raises(DaemonUnavailable):
        ask(folder, {"op": "status"})


def test_a_rebuilt_index_makes_the_daemon_exit(home, start_daemon):
    folder = home / "default"
    daemon = start_daemon(folder)
    catalog = folder / "catalog.db"
    shutil.copy2(catalog, folder / "copy.db")
    os.replace(folder / "copy.db", catalog)  # a new file where the catalog was: a rebuilt index
    answer = ask(folder, run_request(["retriever", "search", "a cat"], folder))
    assert answer == {"status": "decline", "reason": "the index was rebuilt"}
    assert daemon.stop_reason == "the index was rebuilt or removed"


def test_new_checkpoints_are_seen_by_the_next_query(home, start_daemon, offline_encoder):
    from retriever.index import Index

    folder = home / "default"
    daemon = start_daemon(folder)
    env = client_env(home)
    before = through_entry(["search", "a cat", "--paths", "-k", "20"], env, REPO).stdout.splitlines()
    index = Index.open(home, "default")
    try:
        index.acquire_lock()
        gone = index.catalog.ids_under(str(PHOTOS / "chelsea.png"))
        index.remove_images(gone)
    finally:
        index.close()
    after = through_entry(["search", "a cat", "--paths", "-k", "20"], env, REPO).stdout.splitlines()
    assert str(PHOTOS / "chelsea.png").encode() in before
    assert len(after) == len(before) - 1 and str(PHOTOS / "chelsea.png").encode() not in after
    assert daemon.collection.reloads == 1


def test_one_daemon_per_index_idle_timeout_and_status(home, start_daemon):
    folder = home / "default"
    daemon = start_daemon(folder, idle_s=1.0)
    info = ask(folder, {"op": "status"})
    assert info["pid"] == os.getpid() and info["folder"] == str(folder) and info["idle_timeout_s"] == 1.0
    from click.testing import CliRunner

    from retriever.cli import main

    shown = CliRunner().invoke(main, ["status", "--home", str(home), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["daemon"] is True
    second = Daemon(folder, 30, command=main, log=lambda m: None)
    with pytest.raises(DaemonError, match="another daemon"):
        second.start()  # the first answers: the second gives up at once
    deadline = time.monotonic() + 10
    while daemon.stop_reason is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.stop_reason == "idle for 1 s"
    assert not os.path.exists(socket_path(folder)) and not is_running(folder)
    shown = CliRunner().invoke(main, ["status", "--home", str(home)])
    assert shown.exit_code == 0 and "daemon     not running" in shown.output


def test_stale_socket_is_removed(tmp_path):
    folder = tmp_path / "index"
    folder.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(socket_path(folder))
    dead.close()  # the file stays, nobody listens: a daemon that was killed
    assert os.path.exists(socket_path(folder))
    with pytest.raises(DaemonUnavailable, match="stale"):
        ask(folder, {"op": "status"})
    assert not os.path.exists(socket_path(folder))


def test_long_index_paths_use_a_private_short_socket(tmp_path, monkeypatch):
    runtime = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short, as XDG_RUNTIME_DIR is
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        folder = tmp_path / ("x" * 120) / "default"
        path = socket_path(folder)
        assert len(os.fsencode(path)) <= daemon_client.MAX_SOCKET_PATH
        assert os.path.dirname(path) == str(runtime / "retriever")
        assert os.stat(runtime / "retriever").st_mode & 0o777 == 0o700
        assert path == socket_path(folder) != socket_path(tmp_path / ("x" * 120) / "other")
        # A runtime folder too long itself for a socket name: the private folder under /tmp.
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / ("y" * 90)))
        (tmp_path / ("y" * 90)).mkdir()
        path = socket_path(folder)
        assert len(os.fsencode(path)) <= daemon_client.MAX_SOCKET_PATH
        assert os.path.dirname(path) == f"/tmp/retriever-{os.getuid()}"
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.mark.parametrize("argv, target", [
    (["retriever", "search", "a cat"], (None, "default")),
    (["retriever", "similar", "x.jpg", "--home", "/h", "--index=trips"], ("/h", "trips")),
    (["retriever", "search", "--home=/h", "cat", "--index", "x"], ("/h", "x")),
    (["retriever", "search", "cat", "--preview"], None),
    (["retriever", "search", "cat", "--html=x.html"], None),
    (["retriever", "search", "cat", "--rerank"], None),
    (["retriever", "search", "cat", "--no-daemon"], None),
    (["retriever", "search", "-h"], None),
    (["retriever", "search", "--", "--preview"], (None, "default")),  # a query word, not the option
    (["retriever", "index", "photos"], None),
    (["retriever", "--help"], None),
    (["retriever"], None),
])
def test_which_command_lines_go_to_a_daemon(argv, target, monkeypatch):
    monkeypatch.delenv("RETRIEVER_NO_DAEMON", raising=False)
    assert daemon_target(argv) == target


def test_no_daemon_env_is_overridden_by_daemon_flag(monkeypatch):
    monkeypatch.setenv("RETRIEVER_NO_DAEMON", "1")
    assert daemon_target(["retriever", "search", "cat"]) is None
    assert daemon_target(["retriever", "search", "cat", "--daemon"]) == (None, "default")


def test_the_client_imports_nothing_heavy(home, start_daemon):
    start_daemon(home / "default")
    code = ("import sys; from retriever.daemon.entry import _through_daemon; "
            "code = _through_daemon(['retriever', 'search', 'a cat', '-k', '1']); "
            "heavy = [m for m in ('click', 'numpy', 'sqlalchemy', 'faiss', 'torch', 'retriever.cli') "
            "if m in sys.modules]; print(code, ','.join(heavy), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=client_env(home), cwd=REPO,
                          timeout=60)
    assert proc.stderr.decode().strip().splitlines()[-1] == "0", proc.stderr
    assert proc.stdout.count(b"\n") == 1


def test_a_local_search_starts_a_daemon_for_the_next(home, monkeypatch, offline_encoder):
    import retriever.daemon.client
    from retriever.cli import main
    from retriever.index import Index

    started = []
    monkeypatch.setattr(retriever.daemon.client, "start_daemon", lambda folder, idle: started.append((folder, idle)))
    monkeypatch.setattr(Index, "load_encoder", lambda self, device="auto", batch_size=None: offline_encoder)
    monkeypatch.delenv("RETRIEVER_NO_DAEMON")
    runner = CliRunner()
    assert runner.invoke(main, ["search", "a cat", "--home", str(home), "--daemon-idle", "42"]).exit_code == 0
    assert started == [(home / "default", 42.0)]
    assert runner.invoke(main, ["search", "a cat", "--home", str(home), "--no-daemon"]).exit_code == 0
    monkeypatch.setenv("RETRIEVER_NO_DAEMON", "1")
    assert runner.invoke(main, ["search", "a cat", "--home", str(home)]).exit_code == 0
    assert len(started) == 1
    assert runner.invoke(main, ["search", "a cat", "--home", str(home), "--daemon"]).exit_code == 0
    assert len(started) == 2


@pytest.mark.slow
def test_daemon_start_status_search_stop(tiny_index, tiny_encoder):
    """A real detached daemon process, as a search leaves one behind: it answers, reports, stops."""
    from retriever.indexer import run_index

    run_index(tiny_index, tiny_encoder, [str(PHOTOS)])
    tiny_index.release_lock()
    env = client_env(tiny_index.folder.parent, RETRIEVER_DAEMON_IDLE="30")
    folder = tiny_index.folder
    try:
        start = through_entry(["daemon", "start"], env, REPO)
        assert start.returncode == 0 and b"started the daemon" in start.stderr, start.stderr
        assert is_running(folder)
        proc = through_entry(["search", "a cat", "-v", "-k", "2"], env, REPO)
        assert b"answered by the warm daemon" in proc.stderr and proc.stdout.count(b"\n") == 2
        status = through_entry(["daemon", "status", "--json"], env, REPO)
        assert b'"running": true' in status.stdout and b'"requests": 1' in status.stdout
    finally:
        stop = through_entry(["daemon", "stop"], env, REPO)
    assert b"stopped the daemon" in stop.stderr and not is_running(folder)
    assert b"no daemon runs" in through_entry(["daemon", "status"], env, REPO).stdout
