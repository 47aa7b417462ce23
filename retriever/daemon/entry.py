"""The `retriever` command. A `search` or `similar` that a warm daemon can answer is sent to it
(retriever.daemon.server) before anything heavy is imported, click included: the daemon runs the very
same command in its process and sends back the output, byte for byte. Everything else, and any
query no daemon answers, runs `retriever.cli.main` here as always (which starts a daemon after
a local search, for the next one).

Kept to the standard library's cheapest modules: the whole client side of a warm search is this
module and retriever.daemon.client."""

from __future__ import annotations

import os
import sys

QUERY_COMMANDS = ("search", "similar")
# Options whose work needs this process (the terminal, a file written here, a VLM loaded for one
# query) or that turn the daemon off: with any of them the command runs here.
LOCAL_OPTIONS = ("--no-daemon", "--preview", "--preview-protocol", "--html", "--rerank", "--help", "-h")


def main() -> None:
    code = _through_daemon(sys.argv)
    if code is not None:
        sys.exit(code)
    from retriever.cli import main as cli_main

    cli_main()


def daemon_target(argv: list[str]) -> tuple[str | None, str] | None:
    """(--home or None, --index) of a `search`/`similar` command line a daemon may answer, or
    None. Read without click: the daemon parses the command line again, and declines when the
    index it names is another one."""
    if len(argv) < 2 or argv[1] not in QUERY_COMMANDS:
        return None
    home, index, explicit = None, "default", False
    args = argv[2:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name in LOCAL_OPTIONS:
            return None
        if arg == "--daemon":
            explicit = True
        if name in ("--home", "--index"):
            if not eq:
                i += 1
                if i >= len(args):
                    return None
                value = args[i]
            if name == "--home":
                home = value
            else:
                index = value
        i += 1
    from retriever.daemon.client import SUPPORTED, daemon_disabled

    if not SUPPORTED or (daemon_disabled() and not explicit):
        return None
    return home, index


def _through_daemon(argv: list[str]) -> int | None:
    """The exit code of the command answered by a warm daemon (its output written here), or None
    to run it locally."""
    target = daemon_target(argv)
    if target is None:
        return None
    from retriever.daemon.client import DaemonUnavailable, ask, run_request
    from retriever.locations import index_folder

    try:
        folder = index_folder(*target)
        answer = ask(folder, run_request(argv, folder))
    except (DaemonUnavailable, OSError, ValueError):
        return None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if answer.get("status") != "ok" or not isinstance(answer.get("exit"), int):
        return None
    import base64

    try:
        chunks = [(fd, base64.b64decode(data)) for fd, data in answer.get("chunks", [])]
    except (TypeError, ValueError):
        return None
    try:
        for fd, data in chunks:
            stream = sys.stdout if fd == 1 else sys.stderr
            stream.flush()
            stream.buffer.write(data)
            stream.buffer.flush()
    except BrokenPipeError:
        # the reader went away (`| head`): exit quietly, as Python would without the traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return answer["exit"]
