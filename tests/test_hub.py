"""The hub probe (retriever.encoders.hub.hub_reachable) against fake hubs on this machine: one that
answers, one that refuses, one whose connection hangs, one whose name lookup hangs. The suite's
HF_HUB_OFFLINE guard (tests/conftest.py: no test may download) is lifted here, and HF_ENDPOINT
points at the fake hub, so the probe's own code runs."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from retriever.encoders.hub import hub_reachable


@pytest.fixture
def hub_env(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def point_at(port: int, host: str = "127.0.0.1") -> None:
        monkeypatch.setenv("HF_ENDPOINT", f"http://{host}:{port}")

    return point_at


def _listening(backlog: int = 8) -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(backlog)
    return server


def test_a_hub_that_answers(hub_env):
    server = _listening()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    hub_env(server.getsockname()[1])
    try:
        assert hub_reachable(timeout=2.0) is True
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def test_a_hub_that_refuses(hub_env):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the connection is refused at once
    hub_env(port)
    start = time.monotonic()
    assert hub_reachable(timeout=2.0) is False
    assert time.monotonic() - start < 1.0


def test_a_hub_whose_connection_hangs(hub_env):
    # A listener that never accepts, with its queue full: the kernel drops further SYNs, so a
    # new connection hangs as it would towards a firewalled host.
    server = _listening(backlog=0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.2)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
            pytest.skip("this kernel accepts connections beyond a full listen queue: no hang to test")
        except TimeoutError:
            pass
        finally:
            probe.close()
        hub_env(port)
        start = time.monotonic()
        assert hub_reachable(timeout=0.8) is False
        assert 0.7 < time.monotonic() - start < 2.0  # bounded by the timeout, not the kernel's minutes
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def test_a_name_lookup_that_hangs_is_bounded_too(hub_env, monkeypatch):
    # getaddrinfo ignores socket timeouts: the probe runs in a thread it stops waiting for.
    real = socket.getaddrinfo

    def slow_lookup(host, *args, **kwargs):
        if host == "hub.invalid":
            time.sleep(5)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    hub_env(443, host="hub.invalid")
    start = time.monotonic()
    assert hub_reachable(timeout=0.5) is False
    assert time.monotonic() - start < 1.5


def test_hub_offline_answers_at_once_without_a_connection(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed while offline"))
    assert hub_reachable() is False
