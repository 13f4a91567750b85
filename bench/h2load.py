"""h2load (nghttp2) as the load generator of the HTTP/2 scenario: its command line and its figures.

h2load speaks HTTP/2 (h2c by prior knowledge on `http://`, ALPN h2 on `https://`) with many streams
per connection, and HTTP/1.1 with `--h1`. It posts a body file; with `--h1` it keeps one request in
flight per connection when it posts, so an HTTP/1.1 run at the same number of requests in flight as
`clients` connections of `streams` streams uses `clients × streams` connections.

Its summary has no percentiles: `--log-file` writes one line per request (start µs, status, µs until
the end of the response; the whole stream for SSE), from which p50 and p99 are taken. A timed run
(`-D`) counts the requests done within the duration; those still in flight at the end are neither
done nor errors. h2load does not reconnect after a GOAWAY in a timed run: the proxies measured with it
must not close connections after N requests (nginx `keepalive_requests`, llmrelay
`max_requests_per_connection`), or the run dwindles.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

EXTRA_TIMEOUT = 30.0  # seconds h2load may run beyond its duration before it is killed

_FINISHED = re.compile(r"^finished in ([\d.]+)(m?s), ([\d.]+) req/s", re.M)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", re.M
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_PROTOCOL = re.compile(r"^Application protocol: (\S+)", re.M)


def have_h2load() -> bool:
    return shutil.which("h2load") is not None


def version() -> str:
    try:
        done = subprocess.run(["h2load", "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "h2load missing"
    return done.stdout.strip() or "h2load ?"


def in_flight_shape(clients: int, streams: int, protocol: str) -> str:
    """How `clients` × `streams` requests in flight are carried in `protocol` ("h1" or "h2")."""
    if protocol == "h1":
        return f"HTTP/1.1, {clients * streams} connections"
    return f"{clients} connection{'s' if clients > 1 else ''} × {streams} streams"


@dataclass(frozen=True)
class H2loadResult:
    protocol: str  # what h2load says it spoke: h2c, h2 or http/1.1
    duration_s: float
    started: int
    done: int
    succeeded: int
    errored: int  # stream or connection failures (resets, closes)
    timeout: int
    status_4xx: int
    status_5xx: int
    p50_ms: float
    p99_ms: float

    @property
    def requests(self) -> int:
        """Requests completed with a 2xx or 3xx answer."""
        return self.succeeded

    @property
    def rps(self) -> float:
        return self.succeeded / self.duration_s if self.duration_s else 0.0

    def error_counts(self) -> dict[str, int]:
        return {"non-2xx": self.status_4xx + self.status_5xx, "errored": self.errored, "timeout": self.timeout}


def h2load_command(
    url: str,
    body_file: str,
    headers: dict[str, str],
    *,
    clients: int,
    streams: int,
    protocol: str,
    duration: int,
    log_file: str,
    threads: int = 1,
    timeout: float = 10.0,
) -> list[str]:
    """The h2load command line: `clients` connections of `streams` streams ("h2"), or as many
    requests in flight on HTTP/1.1 connections ("h1"), for `duration` seconds."""
    connections = clients if protocol == "h2" else clients * streams
    command = ["h2load", f"-c{connections}", f"-t{max(1, min(threads, connections))}"]
    command += [f"-m{streams}"] if protocol == "h2" else ["--h1", "-m1"]
    command += [f"-D{max(1, duration)}", f"-N{max(1, round(timeout))}", "-d", body_file, "--log-file", log_file]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    return command + [url]


def parse_output(stdout: str, log_lines: list[str]) -> H2loadResult | None:
    """h2load's summary and the latencies of its log file, or None when it printed no summary."""
    finished, counts = _FINISHED.search(stdout), _REQUESTS.search(stdout)
    if finished is None or counts is None:
        return None
    status = _STATUS.search(stdout)
    protocol = _PROTOCOL.search(stdout)
    latencies = sorted(int(fields[2]) for line in log_lines if len(fields := line.split("\t")) >= 3 and fields[1] != "-1")
    seconds = float(finished.group(1)) / (1000.0 if finished.group(2) == "ms" else 1.0)
    return H2loadResult(
        protocol=protocol.group(1) if protocol else "?",
        duration_s=seconds,
        started=int(counts.group(2)),
        done=int(counts.group(3)),
        succeeded=int(counts.group(4)),
        errored=int(counts.group(6)),
        timeout=int(counts.group(7)),
        status_4xx=int(status.group(3)) if status else 0,
        status_5xx=int(status.group(4)) if status else 0,
        p50_ms=_percentile(latencies, 50) / 1000.0,
        p99_ms=_percentile(latencies, 99) / 1000.0,
    )


def _percentile(ordered: list[int], q: float) -> float:
    if not ordered:
        return float("nan")
    return float(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))])


def run_h2load(
    url: str,
    body: str,
    headers: dict[str, str],
    *,
    clients: int,
    streams: int,
    protocol: str,
    duration: int,
    threads: int = 1,
    timeout: float = 10.0,
) -> H2loadResult:
    """POST `body` (JSON) for `duration` seconds; raises RuntimeError when h2load gives no summary or
    speaks another protocol than `protocol` (a TLS listener that did not select h2 in ALPN)."""
    with tempfile.TemporaryDirectory(prefix="llmrelay-bench-h2load-") as scratch:
        body_file, log_file = Path(scratch) / "body.json", Path(scratch) / "requests.log"
        body_file.write_text(body)
        all_headers = {"content-type": "application/json", "authorization": "Bearer sk-bench-not-a-key", **headers}
        command = h2load_command(
            url, str(body_file), all_headers, clients=clients, streams=streams, protocol=protocol,
            duration=duration, log_file=str(log_file), threads=threads, timeout=timeout,
        )  # fmt: skip
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + timeout + EXTRA_TIMEOUT, check=False,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        log_lines = log_file.read_text().splitlines() if log_file.exists() else []
    result = parse_output(completed.stdout, log_lines)
    if result is None:
        tail = (completed.stdout + completed.stderr).strip()[-500:]
        raise RuntimeError(f"h2load gave no summary (exit {completed.returncode}): {tail}")
    wanted = ("h2", "h2c") if protocol == "h2" else ("http/1.1",)
    if result.protocol not in wanted:
        raise RuntimeError(f"h2load spoke {result.protocol}, not {' or '.join(wanted)}, to {url}")
    if result.done == 0:  # h2c to a server that does not speak it: no answer, and no error either
        raise RuntimeError(f"h2load got no answer in {duration} s from {url} ({result.started} requests started)")
    return result
