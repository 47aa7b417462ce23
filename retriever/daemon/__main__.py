"""The daemon's process: python -m retriever.daemon --folder INDEX_FOLDER [--idle SECONDS], started
by the `retriever` command after a local search (retriever.daemon.client.start_daemon). It logs to
stderr (the index's daemon.log)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from retriever.daemon.client import DEFAULT_IDLE_S, IDLE_ENV
from retriever.daemon.server import DaemonError, run_daemon
from retriever.errors import RetrieverError


def main(argv: list[str] | None = None) -> int:
    """python -m retriever.daemon --folder INDEX_FOLDER [--idle SECONDS] (started by the CLI)."""
    parser = argparse.ArgumentParser(prog="python -m retriever.daemon", description=main.__doc__)
    parser.add_argument("--folder", required=True, help="The index folder (HOME/NAME).")
    parser.add_argument("--idle", type=float, default=None, help=f"Idle timeout in seconds [default: {DEFAULT_IDLE_S:g}]")
    args = parser.parse_args(argv)
    idle = args.idle if args.idle is not None else _idle_from_env()
    from retriever.daemon.client import build_id

    build = build_id()  # before the code it names is imported: a file changed after now is another build
    try:
        run_daemon(args.folder, main_group(), idle, log=_log, build=build)
    except DaemonError as exc:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] not started: {exc}", file=sys.stderr)
        return 0
    except RetrieverError as exc:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] not started: {exc}", file=sys.stderr)
        return 1
    return 0


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {message}", file=sys.stderr, flush=True)


def main_group():
    """The command line the daemon runs (the process entry is the one place that joins the two)."""
    from retriever.cli import main as group

    for name in ("search", "similar"):  # imported now, not on the first query
        group.get_command(None, name)
    return group


def _idle_from_env() -> float:
    try:
        value = float(os.environ.get(IDLE_ENV, ""))
    except ValueError:
        return DEFAULT_IDLE_S
    return value if value >= 1 else DEFAULT_IDLE_S


if __name__ == "__main__":
    sys.exit(main())
