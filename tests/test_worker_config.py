"""A worker process driven directly over its control pipe: a config it cannot apply (a CA file that
does not load) is reported with `ConfigRejected`; the worker keeps serving the generation it had, or,
at boot, exits with EXIT_BOOT_FAILED. The config is built past the config layer's own checks, as a
file that changed between validation and application would be."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec

from mock_providers import MockProvider
from relaytest import endpoint_config

from llmrelay.config.load import load_config_text
from llmrelay.control import (
    EXIT_BOOT_FAILED,
    Config,
    ConfigApplied,
    ConfigRejected,
    ControlMessage,
    Drain,
    FrameReader,
    Ready,
    Stopped,
    encode_frame,
)


class WorkerUnderTest:
    """`python -P -m llmrelay.worker` on a loopback socket, its control pipe held by the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.control, child = socket.socketpair()
        self.control.settimeout(15)
        self.reader = FrameReader()
        self.pending: list[ControlMessage] = []
        self.log = open(tmp_path / "worker.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "llmrelay.worker", "--control-fd", str(child.fileno()),
             "--listen-fd", str(self.listener.fileno()), "--slot", "0"],
            pass_fds=(child.fileno(), self.listener.fileno()),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        child.close()

    def send(self, message: object) -> None:
        self.control.sendall(encode_frame(message))

    def expect(self, kind: type, timeout: float = 15) -> ControlMessage:
        """The next message of type `kind` (others, heartbeats, are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self.pending:
                message = self.pending.pop(0)
                if isinstance(message, kind):
                    return message
            self.control.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.control.recv(65536)
            if not data:
                break
            self.pending += self.reader.feed(data)
        raise AssertionError(f"no {kind.__name__} from the worker")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.control.close()
        self.listener.close()
        self.log.close()


def _config(mock: MockProvider, ca_file: str | None = None) -> Config:
    text = endpoint_config("oai", mock) + '[endpoints.tls]\ntarget_base = "https://127.0.0.1:9/v1"\n'
    config = load_config_text(text, "test", environ={})
    if ca_file is not None:
        endpoints = [
            msgspec.structs.replace(e, upstreams=[msgspec.structs.replace(u, ca_file=ca_file) for u in e.upstreams])
            if e.name == "tls"
            else e
            for e in config.endpoints
        ]
        config = msgspec.structs.replace(config, endpoints=endpoints)
    return Config(config=config, generation=1)


def test_worker_keeps_its_generation_when_a_config_cannot_be_applied(mock: MockProvider, tmp_path: Path) -> None:
    worker = WorkerUnderTest(tmp_path)
    try:
        worker.send(_config(mock))
        assert worker.expect(ConfigApplied) == ConfigApplied(generation=1)
        worker.expect(Ready)
        bad = _config(mock, ca_file=str(tmp_path))  # a directory: IsADirectoryError in the worker
        worker.send(Config(config=bad.config, generation=2))
        rejected = worker.expect(ConfigRejected)
        assert isinstance(rejected, ConfigRejected) and rejected.generation == 2
        assert "IsADirectoryError" in rejected.error
        response = httpx.get(f"http://127.0.0.1:{worker.port}/health", timeout=5)
        assert response.status_code == 200 and response.json()["generation"] == 1
        assert httpx.get(f"http://127.0.0.1:{worker.port}/oai/v1/models", timeout=5).status_code == 200
        assert worker.process.poll() is None  # still alive, still serving generation 1
        worker.send(Drain(timeout=5, close_idle=True))
        worker.expect(Stopped)
        assert worker.process.wait(10) == 0
    finally:
        worker.close()


def test_worker_that_cannot_apply_its_first_config_reports_it_and_exits_boot_failed(mock: MockProvider, tmp_path: Path) -> None:
    worker = WorkerUnderTest(tmp_path)
    try:
        worker.send(_config(mock, ca_file=str(tmp_path / "missing.pem")))
        rejected = worker.expect(ConfigRejected)
        assert isinstance(rejected, ConfigRejected) and rejected.generation == 1
        assert "FileNotFoundError" in rejected.error
        assert worker.process.wait(10) == EXIT_BOOT_FAILED
    finally:
        worker.close()
