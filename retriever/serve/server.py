"""Running the app under uvicorn, with the discovery file (serve.json) in the index folder for as
long as the server accepts connections."""

from __future__ import annotations

import ipaddress
import os
import threading
from typing import Callable

from retriever import __version__
from retriever.serve.client import ServerInfo, now_iso, remove_discovery, write_discovery
from retriever.serve.service import Service

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_hosts(port: int) -> list[str]:
    """Host header values a loopback server accepts (DNS rebinding guard)."""
    return [f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")] + ["127.0.0.1", "localhost", "[::1]"]


class Server:
    """uvicorn over create_app(service): `run()` blocks (the CLI), `start()` runs it in a thread
    (tests, benchmarks). port 0 picks a free port; `info` holds the real one once started."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 on_started: Callable[[ServerInfo], None] | None = None, log_level: str = "warning"):
        import uvicorn

        self.service = service
        self.host, self.port, self.token = host, port, token
        self.on_started = on_started
        self.info: ServerInfo | None = None
        self._thread: threading.Thread | None = None
        self._app = None
        outer = self

        class _Uvicorn(uvicorn.Server):
            async def startup(self, sockets=None):
                await super().startup(sockets)
                if self.started:
                    outer._started(self)

            async def shutdown(self, sockets=None):
                # before uvicorn re-raises a captured SIGTERM/SIGINT, which may end the process
                remove_discovery(outer.service.index.folder, os.getpid())
                await super().shutdown(sockets)

            def install_signal_handlers(self):  # in a thread there are none to install
                if threading.current_thread() is threading.main_thread():
                    super().install_signal_handlers()

        self._config = uvicorn.Config(self._make_app, factory=True, host=host, port=port, log_level=log_level,
                                      access_log=False, lifespan="off", timeout_graceful_shutdown=5)
        self._server = _Uvicorn(self._config)

    def _make_app(self):
        return self._app

    def _started(self, server) -> None:
        port = self.port
        for s in getattr(server, "servers", []):
            for sock in s.sockets:
                port = sock.getsockname()[1]
                break
        self.port = port
        self.info = ServerInfo(pid=os.getpid(), host=self.host, port=port, token_required=self.token is not None,
                               version=__version__, started_at=now_iso(), index_folder=str(self.service.index.folder))
        # The Host check needs the real port: the app reads the allowed set on each request.
        if self._allowed is not None:
            self._allowed.update(loopback_hosts(port))  # the app's guard holds this very set
        write_discovery(self.service.index.folder, self.info)
        if self.on_started:
            self.on_started(self.info)

    def _build(self) -> None:
        from retriever.serve.app import create_app

        self._allowed: set[str] | None = None
        if is_loopback(self.host):
            self._allowed = set(loopback_hosts(self.port)) if self.port else {"-"}  # filled in on start
        self._app = create_app(self.service, token=self.token, allowed_hosts=self._allowed)

    def run(self) -> None:
        self._build()
        try:
            self._server.run()
        finally:
            remove_discovery(self.service.index.folder, os.getpid())

    def start(self, timeout: float = 20.0) -> ServerInfo:
        self._build()
        started = threading.Event()
        previous = self.on_started

        def on_started(info):
            if previous:
                previous(info)
            started.set()

        self.on_started = on_started
        self._thread = threading.Thread(target=self._serve_in_thread, daemon=True, name="retriever-serve")
        self._thread.start()
        if not started.wait(timeout) or self.info is None:
            raise RuntimeError("the server did not start")
        return self.info

    def _serve_in_thread(self) -> None:
        try:
            self._server.run()
        finally:
            remove_discovery(self.service.index.folder, os.getpid())

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

