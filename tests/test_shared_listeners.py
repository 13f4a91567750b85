"""One shared listening socket per address (macOS's mode, where SO_REUSEPORT does not spread
connections): the choice of mode, the sockets themselves, and real relays in that mode (forced with
LLMRELAY_LISTEN_MODE=shared) through load, rolling replacement, worker count changes and a reload that
moves the listener, losing nothing."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import httpx
import pytest

import test_rolling as rolling
from mock_providers import MockProvider
from relaytest import access_records, endpoint_config, wait_until

from supervisor.sockets import LISTEN_MODE_ENV, BindError, bind_slot_sockets, shared_listeners


def test_the_mode_follows_the_platform_unless_told() -> None:
    assert shared_listeners("darwin", {}) is True
    assert shared_listeners("linux", {}) is False
    assert shared_listeners("freebsd14", {}) is False
    assert shared_listeners("linux", {LISTEN_MODE_ENV: "shared"}) is True
    assert shared_listeners("darwin", {LISTEN_MODE_ENV: " ReusePort "}) is False
    assert shared_listeners("darwin", {LISTEN_MODE_ENV: "nonsense"}) is True  # (an unknown value: the platform's)


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()  # (outside trio: close_sockets also wakes trio tasks accepting on them)


def test_shared_sockets_are_copies_of_one_exclusive_socket() -> None:
    sockets = bind_slot_sockets("127.0.0.1", 0, 3, shared=True)
    try:
        port = sockets[0].getsockname()[1]
        assert len({s.fileno() for s in sockets}) == 3 and len({_inode(s) for s in sockets}) == 1
        assert all(s.getsockname()[1] == port and not s.getblocking() for s in sockets)
        with pytest.raises(BindError, match="address already in use"):  # nobody else joins it
            bind_slot_sockets("127.0.0.1", port, 1)
        joined = bind_slot_sockets("127.0.0.1", port, 1, join=True, shared=True, existing=sockets[1])
        assert _inode(joined[0]) == _inode(sockets[0])
        sockets[0].close()  # one slot's copy closed: the others still listen
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        close_all(joined)
    finally:
        close_all(sockets)


def test_reuseport_sockets_are_one_per_slot() -> None:
    sockets = bind_slot_sockets("127.0.0.1", 0, 2)
    try:
        assert len({_inode(s) for s in sockets}) == 2
    finally:
        close_all(sockets)


# -- real relays in the shared mode -------------------------------------------------------------------


@pytest.fixture
def shared_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LISTEN_MODE_ENV, "shared")


def _listen_inodes(pid: int, port: int) -> set[int]:
    """Inodes of the TCP sockets `pid` holds that listen on `port` (from /proc)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                listening.add(int(fields[9]))
    held = set()
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(entry)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise
        if target.startswith("socket:["):
            held.add(int(target[8:-1]))
    return held & listening


def test_workers_accept_from_one_socket_and_share_the_load(mock: MockProvider, start_relay, shared_mode: None) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock), workers=2)
    pids = relay.worker_pids()
    assert len(pids) == 2
    inodes = [_listen_inodes(pid, relay.port) for pid in pids]
    assert len(inodes[0]) == 1 and inodes[0] == inodes[1], inodes
    with httpx.Client(timeout=10) as client:  # new connections each time: either worker may take one
        for _ in range(60):
            assert client.get(relay.url("/oai/v1/models"), headers={"connection": "close"}).status_code == 200

    def serving_pids() -> set[str]:
        return {r["pid"] for r in access_records(relay) if r.get("endpoint") == "oai"}

    assert wait_until(lambda: len(serving_pids()) == 2, 5), serving_pids()  # (both took connections)


def test_rolling_replacement_and_reload_under_load(mock: MockProvider, start_relay, shared_mode: None) -> None:  # type: ignore[no-untyped-def]
    rolling.test_sigusr2_and_sighup_under_load_lose_nothing(mock, start_relay)


def test_worker_count_changes(mock: MockProvider, start_relay, shared_mode: None) -> None:  # type: ignore[no-untyped-def]
    rolling.test_worker_count_signals(mock, start_relay)


def test_a_reload_that_moves_the_listener(mock: MockProvider, start_relay, shared_mode: None) -> None:  # type: ignore[no-untyped-def]
    rolling.test_reload_that_moves_the_listener(mock, start_relay)
