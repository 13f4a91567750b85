"""wrk as the load generator: a Lua script per request shape, and its summary read back as JSON.

The script sets a POST with a JSON body and headers, and its `done()` hook writes one line
``WRK_JSON {...}`` with the request count, duration, error counts (connect, read, write, timeout, and
``status``: responses that were not 2xx/3xx) and latency percentiles in microseconds. wrk counts an
SSE response when its chunked body is complete, so for streams the latency is the whole stream's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from types import TracebackType

CHAT_BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in one sentence."}], "max_tokens": 64},
    separators=(",", ":"),
)
STREAM_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello in one sentence."}],
        "max_tokens": 64,
        "stream": True,
    },
    separators=(",", ":"),
)
EXTRA_TIMEOUT = 30.0  # seconds wrk may run beyond its duration before it is killed

_DONE_HOOK = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,' ..
    '"max_us":%.0f,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


class WrkScript:
    """A temporary Lua script that sends POST `body` with `headers` (a context manager)."""

    def __init__(self, body: str, headers: dict[str, str] | None = None) -> None:
        lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body)}", 'wrk.headers["Content-Type"] = "application/json"']
        lines.append('wrk.headers["Authorization"] = "Bearer sk-bench-not-a-key"')
        for name, value in (headers or {}).items():
            lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")  # ASCII: JSON escapes are Lua's
        fd, self.path = tempfile.mkstemp(prefix="llmrelay-bench-", suffix=".lua")
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n" + _DONE_HOOK)

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        os.unlink(self.path)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    connect: int
    read: int
    write: int
    status: int
    timeout: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        """Non-2xx/3xx responses plus socket errors (connect, read, write, timeout)."""
        return self.status + self.connect + self.read + self.write + self.timeout

    def error_detail(self) -> str:
        parts = [f"{name} {count}" for name, count in self.error_counts().items() if count]
        return ", ".join(parts) or "none"

    def error_counts(self) -> dict[str, int]:
        return {"non-2xx": self.status, "connect": self.connect, "read": self.read, "write": self.write, "timeout": self.timeout}


def wrk_command(url: str, script: str, *, connections: int, duration: int, threads: int = 1, timeout: float = 10.0) -> list[str]:
    """The wrk command line for `duration` seconds (integer: wrk's own granularity)."""
    threads = max(1, min(threads, connections))
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, duration)}s",
        f"--timeout={max(1, round(timeout))}s",
        "--latency",
        "-s",
        script,
        url,
    ]


def parse_summary(stdout: str) -> WrkResult | None:
    """The `WRK_JSON` line our script's `done()` hook printed, or None."""
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON ") :])
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=data["duration_us"] / 1e6,
                connect=int(data["connect"]),
                read=int(data["read"]),
                write=int(data["write"]),
                status=int(data["status"]),
                timeout=int(data["timeout"]),
                p50_ms=data["p50_us"] / 1000.0,
                p90_ms=data["p90_us"] / 1000.0,
                p99_ms=data["p99_us"] / 1000.0,
                max_ms=data["max_us"] / 1000.0,
            )
    return None


def run_wrk(
    url: str,
    script: str,
    *,
    connections: int,
    duration: int,
    threads: int = 1,
    timeout: float = 10.0,
) -> WrkResult:
    """Run wrk for `duration` seconds and return its summary."""
    command = wrk_command(url, script, connections=connections, duration=duration, threads=threads, timeout=timeout)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + timeout + EXTRA_TIMEOUT, check=False
    )
    result = parse_summary(completed.stdout)
    if result is None:
        raise RuntimeError(f"wrk gave no summary (exit {completed.returncode}): {completed.stderr.strip()[-500:]}")
    return result
