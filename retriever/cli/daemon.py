"""`retriever daemon start|status|stop`: the warm query daemon of an index (retriever.daemon)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from retriever.cli.options import home_dir, index_options, reports_errors
from retriever.cli.output import duration, query_encoder_text
from retriever.errors import RetrieverError


@click.group()
def daemon() -> None:
    """The warm query daemon of an index (see `retriever search --help`).

    The first `retriever search` or `similar` of an index starts a background process that keeps
    its model and vectors loaded; the next queries are sent to it over a Unix socket in the index
    folder and answer in a few tens of milliseconds, with the same output. It exits after
    --daemon-idle seconds without a query (default 300). Turn it off with --no-daemon or
    RETRIEVER_NO_DAEMON=1.
    """


def _daemon_info(folder) -> dict[str, Any] | None:
    from retriever.daemon.client import DaemonUnavailable, ask

    try:
        info = ask(folder, {"op": "status"}, timeout=10)
    except DaemonUnavailable:
        return None
    return info if info.get("status") == "ok" else None


@daemon.command("status")
@index_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@reports_errors
def daemon_status(home, index_name, as_json):
    """Whether a daemon runs for the index: pid, socket, uptime, queries answered."""
    from retriever.daemon.client import build_id, socket_path
    from retriever.locations import index_folder

    folder = index_folder(home, index_name)
    info = _daemon_info(folder)
    if as_json:
        out = {"running": info is not None, "folder": str(folder), "socket": socket_path(folder)}
        if info is not None:
            out.update({k: v for k, v in info.items() if k != "status"}, current_build=info.get("build") == build_id())
        click.echo(json.dumps(out))
        return
    if info is None:
        click.echo(f"no daemon runs for index {index_name!r} ({folder})")
        return
    same = info.get("build") == build_id()
    rows = [
        ("pid", info["pid"]),
        ("index", info["folder"]),
        ("socket", info["socket"]),
        ("model id", info.get("model_id")),
        ("encoder", query_encoder_text(info.get("query_encoder"))),
        ("version", info["version"] + ("" if same else " (another build: replaced at the next search)")),
        ("started", f"{info['started_at']} ({duration(info['uptime_s'])} ago)"),
        ("queries", info["requests"]),
        ("idle", f"{duration(info['idle_s'])} of {duration(info['idle_timeout_s'])}"),
        ("memory", f"{info['rss_mb']:.0f} MB resident" if info.get("rss_mb") else "?"),
    ]
    for key, value in rows:
        click.echo(f"{key:<9} {value}")


@daemon.command("stop")
@index_options
@reports_errors
def daemon_stop(home, index_name):
    """Stop the daemon of the index (the next search starts a new one)."""
    from retriever.daemon.client import DaemonUnavailable, ask, is_running
    from retriever.locations import index_folder

    folder = index_folder(home, index_name)
    try:
        answer = ask(folder, {"op": "stop"}, timeout=30)
    except DaemonUnavailable:
        click.echo(f"no daemon runs for index {index_name!r}", err=True)
        return
    deadline = time.monotonic() + 10
    while is_running(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    click.echo(f"stopped the daemon of index {index_name!r} (pid {answer.get('pid')})", err=True)


@daemon.command("start")
@index_options
@click.option("--idle", "idle_s", type=click.FloatRange(min=1), envvar="RETRIEVER_DAEMON_IDLE", show_envvar=True,
              metavar="SECONDS", help="Exit after SECONDS without a query.  [default: 300]")
@click.option("--foreground", is_flag=True, help="Run in this process until stopped (for a service manager).")
@reports_errors
def daemon_start(home, index_name, idle_s, foreground):
    """Start the daemon of the index now (searches start it by themselves)."""
    from retriever.daemon.client import DEFAULT_IDLE_S, start_daemon
    from retriever.index import Index, check_name

    home_path = home_dir(home)
    Index.open(home_path, index_name).close()  # a missing index fails here, with its message
    folder = home_path / check_name(index_name)
    if foreground:
        from retriever.daemon.server import run_daemon

        group = click.get_current_context().find_root().command
        reason = run_daemon(folder, group, idle_s or DEFAULT_IDLE_S, log=lambda m: click.echo(m, err=True))
        click.echo(f"stopped: {reason}", err=True)
        return
    if not start_daemon(folder, idle_s):
        info = _daemon_info(folder)
        click.echo(f"a daemon runs already for index {index_name!r}" + (f" (pid {info['pid']})" if info else ""),
                   err=True)
        return
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = _daemon_info(folder)
        if info is not None:
            click.echo(f"started the daemon of index {index_name!r} (pid {info['pid']})", err=True)
            return
        time.sleep(0.1)
    raise RetrieverError(f"the daemon did not start in 2 minutes: see {folder / 'daemon.log'}")



COMMANDS = [daemon]
