"""Fixtures: a mock provider, a factory of real `llmrelay serve` processes that are always stopped, and a
real HTTP proxy (pproxy) on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mock_providers import MockProvider  # noqa: E402
from relaytest import RelayProcess, free_port  # noqa: E402


@pytest.fixture
def mock() -> Iterator[MockProvider]:
    with MockProvider() as provider:
        yield provider


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator:
    """start_relay(config_text, *args, env=None, workers=1, wait=True) -> RelayProcess"""
    started: list[RelayProcess] = []

    def start(
        config_text: str | None,
        *args: str,
        env: dict[str, str] | None = None,
        workers: int = 1,
        wait: bool = True,
        port: int | None = None,
        port_flag: bool = True,
    ) -> RelayProcess:
        relay = RelayProcess(
            tmp_path, config_text, ["--workers", str(workers), *args], env, port or free_port(), port_flag
        )
        started.append(relay)
        if wait:
            relay.wait_ready(workers=workers)
        return relay

    yield start
    for relay in started:
        pids = relay.worker_pids() if relay.process.poll() is None else []
        relay.stop(signal.SIGQUIT if relay.process.poll() is None else signal.SIGTERM)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def http_proxy(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A pproxy HTTP proxy on loopback: (its port, its verbose log)."""
    port = free_port()
    log_path = tmp_path / "pproxy.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "pproxy", "-l", f"http://127.0.0.1:{port}", "-v"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "pproxy is not listening"
                    time.sleep(0.05)
            yield port, log_path
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
