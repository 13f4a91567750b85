"""Fixtures: a mock provider, and a factory of real `llmrelay serve` processes that are always stopped."""

from __future__ import annotations

import os
import signal
import sys
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
