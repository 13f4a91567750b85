"""Relay overhead against a direct run, measured on this machine in one run.

Starts the mock provider from `tests/` and one `llmrelay serve` process on loopback, then measures, for
the same requests sent directly to the mock and through the relay:

- latency of sequential non-streamed requests on a keep-alive connection (median, p99);
- the relay's CPU time per relayed request (from /proc, supervisor and workers together);
- time to first byte of a 20-event SSE stream, and the delay each event gains on its way through.

Run: `.venv/bin/python bench/relay_overhead.py [--requests N] [--streams N]`. It prints a table
with the direct figure, the relayed figure and their difference or ratio. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mock_providers import MockProvider  # noqa: E402

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLOCK_TICKS


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequential_latency(url: str, count: int) -> list[float]:
    timings = []
    with httpx.Client(timeout=30) as client:
        client.post(url, json=CHAT)  # warm the connection
        for _ in range(count):
            started = time.perf_counter()
            response = client.post(url, json=CHAT)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200
    return timings


def stream_timing(mock: MockProvider, url: str, events: int, gap: float) -> tuple[float, list[float]]:
    """Time to first byte, and for each event its arrival minus the moment the mock sent it."""
    arrivals: list[float] = []
    with httpx.Client(timeout=30) as client:
        started = time.monotonic()
        with client.stream(
            "POST",
            url,
            json={**CHAT, "stream": True},
            headers={"x-mock-events": str(events), "x-mock-delay": str(gap)},
        ) as response:
            first = None
            for line in response.iter_lines():
                if line.startswith("data: "):
                    now = time.monotonic()
                    first = first or now
                    arrivals.append(now)
    sent = mock.event_times[len(mock.requests) - 1]
    delays = [a - s for a, s in zip(arrivals, sent)]
    return (first or started) - started, delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--streams", type=int, default=5)
    args = parser.parse_args()

    with MockProvider() as mock, tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        config = Path(workdir) / "bench.toml"
        config.write_text(
            f'[server]\naccess_log = false\nlog_level = "warning"\n'
            f'[endpoints.oai]\ntarget_base = "{mock.base_url}/v1"\nprovider = "openai"\n'
        )
        relay = subprocess.Popen(
            [sys.executable, "-m", "llmrelay", "serve", "--config", str(config), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            relay_base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(relay_base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            direct_url = mock.base_url + "/v1/chat/completions"
            relay_url = relay_base + "/oai/v1/chat/completions"

            direct = sequential_latency(direct_url, args.requests)
            pids = [relay.pid, *children_of(relay.pid)]
            cpu_before = cpu_seconds(pids)
            relayed = sequential_latency(relay_url, args.requests)
            cpu_per_request = (cpu_seconds(pids) - cpu_before) / (args.requests + 1)

            direct_ttfb, relay_ttfb, added = [], [], []
            for _ in range(args.streams):
                ttfb, direct_delays = stream_timing(mock, direct_url, 20, 0.02)
                direct_ttfb.append(ttfb)
                ttfb, relay_delays = stream_timing(mock, relay_url, 20, 0.02)
                relay_ttfb.append(ttfb)
                added.append(statistics.median(relay_delays) - statistics.median(direct_delays))
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(30)

    ms = 1000.0
    rows = [
        ("non-streamed latency, median (ms)", statistics.median(direct) * ms, statistics.median(relayed) * ms),
        ("non-streamed latency, p99 (ms)", percentile(direct, 0.99) * ms, percentile(relayed, 0.99) * ms),
        ("SSE time to first byte, median (ms)", statistics.median(direct_ttfb) * ms, statistics.median(relay_ttfb) * ms),
    ]
    print(f"{'figure':<40} {'direct':>10} {'relayed':>10} {'added':>10} {'ratio':>7}")
    for name, d, r in rows:
        print(f"{name:<40} {d:>10.3f} {r:>10.3f} {r - d:>10.3f} {r / d if d else float('nan'):>7.2f}")
    print(f"{'added delay per SSE event, median (ms)':<40} {'':>10} {'':>10} {statistics.median(added) * ms:>10.3f}")
    print(f"{'relay CPU per request (us)':<40} {'':>10} {cpu_per_request * 1e6:>10.0f}")
    print(f"({args.requests} sequential requests each way, {args.streams} streams of 20 events 20 ms apart)")


if __name__ == "__main__":
    main()
