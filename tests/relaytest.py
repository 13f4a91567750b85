"""Test helpers: free ports, config snippets, and real `llmrelay serve` processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from mock_providers import MockProvider

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RelayProcess:
    """One `llmrelay serve` supervisor (and its workers) started for a test."""

    def __init__(
        self,
        workdir: Path,
        config_text: str | None,
        args: list[str],
        env: dict[str, str] | None,
        port: int,
        port_flag: bool = True,
    ):
        self.workdir = workdir
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"relay-{port}.log"
        self.config_path: Path | None = None
        command = [sys.executable, "-m", "llmrelay", "serve", *args]
        if port_flag:
            command += ["--port", str(port)]
        if config_text is not None:
            self.config_path = workdir / f"relay-{port}.toml"
            self.config_path.write_text(config_text)
            os.chmod(self.config_path, 0o600)
            command += ["--config", str(self.config_path)]
        full_env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "PORT")}
        full_env.update(env or {})
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command, cwd=workdir, env=full_env, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return self.base_url + path

    def wait_ready(self, timeout: float = 20.0, workers: int = 1, statuses: tuple[int, ...] = (200,)) -> None:
        """Wait until `workers` workers said they are ready and `/health` answers one of `statuses`
        (add 503 for a relay with an endpoint that has nothing usable)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"relay exited with {self.process.returncode}:\n{self.logs()}")
            if self.logs().count("ready (pid") >= workers:
                try:
                    if httpx.get(self.url("/health"), timeout=2).status_code in statuses:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"relay not ready after {timeout} s:\n{self.logs()}")

    def worker_pids(self) -> list[int]:
        """Live children of the supervisor, read from /proc."""
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[1]) == self.pid:
                children.append(int(entry.name))
        return sorted(children)

    def logs(self) -> str:
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log_file.close()
        return self.process.returncode


CHAT_STREAM = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


class BackgroundStream:
    """A streamed chat completion through the relay, read in a thread: its `data:` lines, in order.

    `started` is set at the first one; `errors` holds what the client raised (a cut stream, say).
    """

    def __init__(self, relay: RelayProcess, delay: float, events: int, timeout: float = 20.0, path: str = "/oai") -> None:
        self.events: list[str] = []
        self.errors: list[Exception] = []
        self.started = threading.Event()
        self._request = (relay.url(f"{path}/v1/chat/completions"), {"x-mock-delay": str(delay), "x-mock-events": str(events)}, timeout)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        url, headers, timeout = self._request
        try:
            with httpx.stream("POST", url, json=CHAT_STREAM, headers=headers, timeout=timeout) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line)
                        self.started.set()
        except httpx.HTTPError as exc:
            self.errors.append(exc)

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)


def endpoint_config(name: str, mock: "MockProvider", provider: str = "openai", base: str = "/v1", **keys: object) -> str:
    """A `[endpoints.NAME]` TOML section pointing at `mock`."""
    lines = [f"[endpoints.{name}]", f'target_base = "{mock.base_url}{base}"', f'provider = "{provider}"']
    for key, value in keys.items():
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


# -- several upstreams per endpoint -----------------------------------------------------------------


def upstreams_config(endpoint: str, upstreams: list[dict[str, object]], **keys: object) -> str:
    """`[endpoints.ENDPOINT]` with `keys`, then one `[[endpoints.ENDPOINT.upstreams]]` table per dict."""
    lines = [f"[endpoints.{endpoint}]"] + [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    for entry in upstreams:
        lines += ["", f"[[endpoints.{endpoint}.upstreams]]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in entry.items() if value is not None]
    return "\n".join(lines) + "\n"


def wait_until(predicate, timeout: float, step: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something true (returned) or `timeout` passes (its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


ACCESS_LOGGER = "llmrelay.access:"


def access_records(relay: RelayProcess) -> list[dict[str, str]]:
    """The `key=value` fields of every access log line the relay wrote so far (`pid` added)."""
    records = []
    for line in relay.logs().splitlines():
        head, found, rest = line.partition(ACCESS_LOGGER)
        if not found:
            continue
        fields: dict[str, str] = {}
        pid = head.rsplit("[", 1)[-1].split("]", 1)[0]
        if pid.isdigit():
            fields["pid"] = pid
        for token in rest.split():
            name, equals, value = token.partition("=")
            if equals and name.isidentifier():
                fields[name] = value
        records.append(fields)
    return records


def access_records_matching(
    relay: RelayProcess, keep: Callable[[dict[str, str]], bool], count: int, timeout: float = 5.0
) -> list[dict[str, str]]:
    """The access records `keep` accepts, once there are at least `count` of them (or when `timeout`
    passes): a line is written just after its answer ends, so a client can see the answer first."""

    def found() -> list[dict[str, str]]:
        return [record for record in access_records(relay) if keep(record)]

    records = found()
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        time.sleep(0.02)
        records = found()
    return records


def access_record(relay: RelayProcess, request_id: str, timeout: float = 5.0) -> dict[str, str]:
    """The access log fields of the request sent with `x-request-id: request_id` (waits for the line)."""

    def find() -> dict[str, str] | None:
        for record in access_records(relay):
            if record.get("rid") == request_id:
                return record
        return None

    record = wait_until(find, timeout)
    if record is None:
        raise AssertionError(f"no access log line with rid={request_id}:\n{relay.logs()[-4000:]}")
    return record


_fresh_client: httpx.Client | None = None
_fresh_lock = threading.Lock()


def fresh_connections() -> httpx.Client:
    """A shared client that opens a new connection for every request (so any worker may answer),
    without the new TLS context that every `httpx.get` builds (about 0.1 s each)."""
    global _fresh_client
    with _fresh_lock:
        if _fresh_client is None:
            _fresh_client = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))
        return _fresh_client


def get_health(relay: RelayProcess, client: httpx.Client | None = None) -> tuple[int, dict, int]:
    """(status code, JSON payload, pid of the worker that answered) of `GET /health`; without a
    client, over a new connection (so any worker may answer)."""
    response = (client or fresh_connections()).get(relay.url("/health"))
    return response.status_code, response.json(), int(response.headers["x-llmrelay-worker"])


def upstream_health(relay: RelayProcess, endpoint: str, upstream: str) -> dict:
    return get_health(relay)[1]["endpoints"][endpoint]["upstreams"][upstream]


def run_load(send, count: int, concurrency: int, timeout: float = 60.0) -> list:  # type: ignore[no-untyped-def]
    """Call `send(client, index)` for index in range(count) from `concurrency` threads, each with its
    own keep-alive `httpx.Client`; the results (or the exceptions raised) in index order. Stops handing
    out work after `timeout` seconds (the missing results are `TimeoutError`s)."""
    results: list = [TimeoutError("not sent")] * count
    lock = threading.Lock()
    next_index = [0]
    deadline = time.monotonic() + timeout

    def worker() -> None:
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                with lock:
                    index = next_index[0]
                    if index >= count:
                        return
                    next_index[0] += 1
                try:
                    results[index] = send(client, index)
                except Exception as exc:  # noqa: BLE001 - reported to the caller
                    results[index] = exc

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 15)
    return results
