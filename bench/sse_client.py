"""An asyncio HTTP/1.1 client for SSE streams that notes when each event arrives.

wrk sees a stream only as a whole; this client reads the raw socket, de-chunks the body itself and
time-stamps every SSE event as the read that completes it returns. When the mock stamps its events
(`x-mock-stamp: 1`: the CLOCK_MONOTONIC time of the write, in the event's JSON), each event's one-way
delay from the mock's write to the client's read is exact, with no clock skew (same machine).

Two drivers:

- `latency_run`: C clients, each sending streams one after the other on a keep-alive connection for
  a duration: time to first byte (request written -> first response byte), time to the first event,
  and the one-way delay of every event;
- `hold_run`: N streams open at once (connections opened at a bounded rate), each on its own
  connection: how many complete, how many fail and why.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.wrk import STREAM_BODY

STAMP = re.compile(rb'"x_mock_sent_ns":(\d+)')
READ_SIZE = 65_536
MAX_RESPONSE = 16 * 1024 * 1024
MAX_HEAD = 65_536


class ProtocolError(Exception):
    """The response could not be parsed."""


@dataclass
class StreamSample:
    """One response: status, when its bytes and events arrived (monotonic ns)."""

    sent_ns: int
    status: int = 0
    first_byte_ns: int = 0
    done_ns: int = 0
    keep_alive: bool = True
    event_arrivals: list[int] = field(default_factory=list)
    event_delays: list[int] = field(default_factory=list)  # arrival - mock's stamp, for stamped events


@dataclass
class StreamRun:
    """What a driver saw: completed streams, errors by kind, and timings in milliseconds."""

    started: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ttfb_ms: list[float] = field(default_factory=list)
    first_event_ms: list[float] = field(default_factory=list)
    event_delay_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    peak_open: int = 0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def add(self, sample: StreamSample) -> None:
        if not 200 <= sample.status < 300:
            self.errors[f"status {sample.status}"] += 1
            return
        self.completed += 1
        self.ttfb_ms.append((sample.first_byte_ns - sample.sent_ns) / 1e6)
        if sample.event_arrivals:
            self.first_event_ms.append((sample.event_arrivals[0] - sample.sent_ns) / 1e6)
        self.event_delay_ms.extend(delay / 1e6 for delay in sample.event_delays)
        self.total_ms.append((sample.done_ns - sample.sent_ns) / 1e6)


class ResponseParser:
    """Incremental parser of one HTTP/1.1 response with a chunked or Content-Length body."""

    def __init__(self, sample: StreamSample) -> None:
        self.sample = sample
        self.buf = b""
        self.in_head = True
        self.chunked = False
        self.remaining = 0  # Content-Length bytes still to come
        self.sse = b""
        self.done = False
        self.size = 0

    def feed(self, data: bytes, now: int) -> None:
        self.size += len(data)
        if self.size > MAX_RESPONSE:
            raise ProtocolError("response too large")
        self.buf += data
        if self.in_head:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise ProtocolError("response head too large")
                return
            self._head(self.buf[:end].lower())
            self.buf = self.buf[end + 4 :]
            self.in_head = False
        if self.chunked:
            self._chunks(now)
        else:
            take = min(self.remaining, len(self.buf))
            self.remaining -= take
            self.buf = self.buf[take:]
            self.done = self.remaining == 0
        if self.done:
            self.sample.done_ns = now

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"http/1."):
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        self.sample.status = int(parts[1])
        self.sample.keep_alive = parts[0] == b"http/1.1"
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            value = value.strip()
            if name == b"transfer-encoding" and b"chunked" in value:
                self.chunked = True
            elif name == b"content-length":
                length = int(value)
            elif name == b"connection":
                self.sample.keep_alive = value != b"close"
        if not self.chunked:
            if length is None:
                raise ProtocolError("response without length")
            self.remaining = length

    def _chunks(self, now: int) -> None:
        while not self.done:
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self.buf[:line_end].split(b";", 1)[0], 16)
            if size == 0:
                if len(self.buf) < line_end + 4:
                    return
                self.buf = self.buf[line_end + 4 :]
                self.done = True
                return
            if len(self.buf) < line_end + 2 + size + 2:
                return
            self.sse += self.buf[line_end + 2 : line_end + 2 + size]
            self.buf = self.buf[line_end + 4 + size :]
            self._events(now)

    def _events(self, now: int) -> None:
        while True:
            end = self.sse.find(b"\n\n")
            if end < 0:
                return
            event, self.sse = self.sse[:end], self.sse[end + 2 :]
            if not event.strip() or event.startswith(b":"):
                continue
            self.sample.event_arrivals.append(now)
            stamp = STAMP.search(event)
            if stamp is not None:
                self.sample.event_delays.append(now - int(stamp.group(1)))


def build_request(url: str, events: int, delay_ms: float, stamp: bool, close: bool = False) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = STREAM_BODY.encode()
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer sk-bench-not-a-key\r\nAccept: text/event-stream\r\n"
        f"x-mock-events: {events}\r\nx-mock-delay-ms: {delay_ms:g}\r\n"
        + ("x-mock-stamp: 1\r\n" if stamp else "")
        + ("Connection: close\r\n" if close else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return host, port, head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> StreamSample:
    sample = StreamSample(sent_ns=time.monotonic_ns())
    writer.write(request)
    parser = ResponseParser(sample)
    while not parser.done:
        data = await reader.read(READ_SIZE)
        now = time.monotonic_ns()
        if not data:
            raise ProtocolError("connection closed mid-response" if sample.first_byte_ns else "connection closed")
        if not sample.first_byte_ns:
            sample.first_byte_ns = now
        parser.feed(data, now)
    return sample


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ProtocolError):
        return str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}"
    return type(exc).__name__


async def latency_run(
    url: str, *, clients: int, duration: float, events: int, delay_ms: float, max_streams: int = 100_000
) -> StreamRun:
    """`clients` loops of sequential stamped streams on keep-alive connections, for `duration` s."""
    host, port, request = build_request(url, events, delay_ms, stamp=True)
    run = StreamRun()
    stream_timeout = events * delay_ms / 1000.0 + 30.0
    started = time.monotonic()
    end = started + duration

    async def client() -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while time.monotonic() < end and run.started < max_streams:
                if connection is None:
                    connection = await asyncio.wait_for(asyncio.open_connection(host, port), 10.0)
                reader, writer = connection
                run.started += 1
                try:
                    sample = await asyncio.wait_for(_exchange(reader, writer, request), stream_timeout)
                except (OSError, ProtocolError, TimeoutError, ValueError) as exc:
                    run.errors[_error_kind(exc)] += 1
                    writer.close()
                    connection = None
                    continue
                run.add(sample)
                if not sample.keep_alive:
                    writer.close()
                    connection = None
        except (OSError, TimeoutError) as exc:
            run.errors[f"connect: {_error_kind(exc)}"] += 1
        finally:
            if connection is not None:
                connection[1].close()

    await asyncio.gather(*(client() for _ in range(clients)))
    run.duration_s = time.monotonic() - started
    return run


async def hold_run(
    url: str, *, streams: int, events: int, delay_ms: float, open_rate: float, connect_timeout: float = 30.0
) -> StreamRun:
    """Open `streams` streams at `open_rate` per second, each on its own connection; wait for all."""
    host, port, request = build_request(url, events, delay_ms, stamp=False, close=True)
    run = StreamRun()
    stream_timeout = events * delay_ms / 1000.0 + 60.0
    open_now = 0
    started = time.monotonic()

    async def one() -> None:
        nonlocal open_now
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), connect_timeout)
        except (OSError, TimeoutError) as exc:
            run.errors[f"connect: {_error_kind(exc)}"] += 1
            return
        open_now += 1
        run.peak_open = max(run.peak_open, open_now)
        run.started += 1
        try:
            run.add(await asyncio.wait_for(_exchange(reader, writer, request), stream_timeout))
        except (OSError, ProtocolError, TimeoutError, ValueError) as exc:
            run.errors[_error_kind(exc)] += 1
        finally:
            open_now -= 1
            writer.close()

    tasks: list[asyncio.Task[None]] = []
    batch = max(1, int(open_rate / 20))
    for first in range(0, streams, batch):
        tasks.extend(asyncio.create_task(one()) for _ in range(min(batch, streams - first)))
        await asyncio.sleep(batch / open_rate)
    await asyncio.gather(*tasks)
    run.duration_s = time.monotonic() - started
    return run
