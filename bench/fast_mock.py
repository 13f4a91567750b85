"""A mock LLM provider fast enough not to be the bottleneck of a relay benchmark.

N processes (``--processes``, default: one per CPU) each run a stdlib-asyncio ``Protocol`` HTTP/1.1
server on their own SO_REUSEPORT socket, so the kernel spreads connections over them. Parsing is
minimal (find ``\\r\\n\\r\\n``, read a ``Content-Length`` or chunked body) and every answer is made of
bytes computed once at start-up.

What a request gets:

- non-streamed: an OpenAI ``chat.completion`` JSON body (about 600 bytes), or an Anthropic
  ``message`` when the path contains ``/messages``;
- streamed (SSE, ``Transfer-Encoding: chunked``, each event written as its own chunk with its own
  ``send``): when the JSON body says ``"stream": true`` or the request has ``x-mock-events``. The
  OpenAI form is N ``chat.completion.chunk`` events (the last one carries ``finish_reason``) then
  ``data: [DONE]``; the Anthropic form (path contains ``/messages``) is ``message_start``,
  ``content_block_start``, N ``content_block_delta``, ``content_block_stop``, ``message_delta``,
  ``message_stop``.

Request headers steer single requests:

``x-mock-events: N``     N content events (default 20; this header alone asks for a stream).
``x-mock-delay-ms: M``   wait M ms before each content event (the first one too); the response head
                         and the framing events before the first content event leave at once.
``x-mock-stamp: 1``      each content event carries ``"x_mock_sent_ns": T``, the ``CLOCK_MONOTONIC``
                         time (ns) just before its write: a client on the same machine gets each
                         event's one-way delay without clock skew.

``GET /_mock/stats`` answers the counters of all processes together: streams in progress
(``active_streams``), streams and requests since start.

``--ports N`` makes every process listen on N ports (the first one ``--port``, the others free ones)
and answer the same on each: N upstreams of one endpoint served by the same processes, so that a
relay with several upstreams is measured against the same mock as a relay with one.

Run it: ``python bench/fast_mock.py --port 9100 --processes 2`` prints ``ready PORT`` (``ready PORT
PORT2 ...`` with ``--ports``) once every process listens, and stops on SIGTERM/SIGINT (or after ``--lifetime`` seconds, or when its parent
dies). ``python bench/fast_mock.py --selftest`` starts it and measures its own ceiling with wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_EVENTS = 20
MAX_EVENTS = 100_000
MAX_DELAY_MS = 600_000.0
MAX_HEAD = 65_536
MAX_BODY = 64 * 1024 * 1024
MAX_CACHED_PLANS = 64
BACKLOG = 4096
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
CREATED = 1_700_000_000

ANSWER = (
    "Hello! This is the llmrelay benchmark mock speaking. Every answer it gives is the same canned "
    "text, so each response costs the same to produce and the relay is what gets measured."
)
OPENAI_COMPLETION = {
    "id": "chatcmpl-bench0123456789abcdefghijklmn",
    "object": "chat.completion",
    "created": CREATED,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": ANSWER, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 41,
        "total_tokens": 53,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
    "system_fingerprint": "fp_bench0001",
}
ANTHROPIC_MESSAGE = {
    "id": "msg_bench0123456789abcdefghij",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [{"type": "text", "text": ANSWER}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 41},
}


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
STAMP_MARK = b"@STAMP@"  # where a stamped event gets `"x_mock_sent_ns":T,`


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json_head(length: int, close: bool) -> bytes:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(length)), ("x-request-id", "req_bench")]
    if close:
        headers.append(("Connection", "close"))
    return _head("200 OK", headers)


def _sse_head(close: bool) -> bytes:
    headers = [
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Cache-Control", "no-cache"),
        ("Transfer-Encoding", "chunked"),
        ("x-request-id", "req_bench"),
    ]
    if close:
        headers.append(("Connection", "close"))
    return _head("200 OK", headers)


@dataclass(frozen=True)
class StreamPlan:
    """The bytes of one SSE answer: chunks before, the N content events (templates), chunks after."""

    before: tuple[bytes, ...]  # already chunk-encoded
    events: tuple[tuple[bytes, bytes], ...]  # event text split at STAMP_MARK (not chunk-encoded)
    plain: tuple[bytes, ...]  # the events chunk-encoded without a stamp
    after: tuple[bytes, ...]  # already chunk-encoded, the last chunk included

    def event(self, index: int, stamp: bool) -> bytes:
        if not stamp:
            return self.plain[index]
        left, right = self.events[index]
        return _chunk(b'%s"x_mock_sent_ns":%d,%s' % (left, time.monotonic_ns(), right))


def _plan(before: list[bytes], events: list[bytes], after: list[bytes]) -> StreamPlan:
    split = tuple((left, right) for left, _, right in (event.partition(STAMP_MARK) for event in events))
    return StreamPlan(
        before=tuple(_chunk(data) for data in before),
        events=split,
        plain=tuple(_chunk(left + right) for left, right in split),
        after=tuple(_chunk(data) for data in after) + (LAST_CHUNK,),
    )


def openai_stream(events: int) -> StreamPlan:
    """N `chat.completion.chunk` events, the last with `finish_reason: stop`, then `[DONE]`."""
    body: list[bytes] = []
    for index in range(events):
        last = index == events - 1
        delta: dict[str, str] = {"content": f" w{index}"}
        if index == 0:
            delta = {"role": "assistant", **delta}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": "stop" if last else None}
        text = _json(
            {
                "id": "chatcmpl-bench0123456789abcdefghijklmn",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": "gpt-4o-mini-2024-07-18",
                "system_fingerprint": "fp_bench0001",
                "choices": [choice],
            }
        )
        body.append(b"data: {" + STAMP_MARK + text[1:] + b"\n\n")
    return _plan([], body, [b"data: [DONE]\n\n"])


def anthropic_stream(events: int) -> StreamPlan:
    """The Anthropic messages event sequence with N `content_block_delta` events."""

    def event(name: str, data: dict[str, object]) -> bytes:
        return b"event: %s\ndata: %s\n\n" % (name.encode(), _json(data))

    start_message = {**ANTHROPIC_MESSAGE, "content": [], "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 1}}
    before = [
        event("message_start", {"type": "message_start", "message": start_message}),
        event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    deltas = []
    for index in range(events):
        text = _json({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" w{index}"}})
        deltas.append(b"event: content_block_delta\ndata: {" + STAMP_MARK + text[1:] + b"\n\n")
    after = [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": events}},
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return _plan(before, deltas, after)


class Responses:
    """Every answer's bytes, computed once per process (stream plans on first use, a bounded cache)."""

    def __init__(self) -> None:
        self.openai = _json(OPENAI_COMPLETION)
        self.anthropic = _json(ANTHROPIC_MESSAGE)
        self.full: dict[tuple[bool, bool], bytes] = {}
        for anthropic in (False, True):
            body = self.anthropic if anthropic else self.openai
            for close in (False, True):
                self.full[(anthropic, close)] = _json_head(len(body), close) + body
        self.sse_heads = {close: _sse_head(close) for close in (False, True)}
        self._plans: dict[tuple[bool, int], StreamPlan] = {}

    def plan(self, anthropic: bool, events: int) -> StreamPlan:
        key = (anthropic, events)
        found = self._plans.get(key)
        if found is None:
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            found = self._plans[key] = anthropic_stream(events) if anthropic else openai_stream(events)
        return found


RESPONSES = Responses()


class Counters:
    """Per-process request and stream counters in an anonymous shared mapping made before the fork.

    Each process writes only its own slot, so no lock is needed; `GET /_mock/stats` on any process
    sums every slot: `{"active_streams": ..., "streams": ..., "requests": ...}`.
    """

    FIELDS = 3  # active streams, streams started, requests
    SLOT = struct.Struct("<3q")

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.memory = mmap.mmap(-1, self.SLOT.size * processes)  # MAP_SHARED | MAP_ANONYMOUS
        self.slot = 0
        self.values = [0, 0, 0]

    def add(self, active: int, streams: int, requests: int) -> None:
        values = self.values
        values[0] += active
        values[1] += streams
        values[2] += requests
        self.SLOT.pack_into(self.memory, self.slot * self.SLOT.size, *values)

    def totals(self) -> bytes:
        sums = [0, 0, 0]
        for slot in range(self.processes):
            for index, value in enumerate(self.SLOT.unpack_from(self.memory, slot * self.SLOT.size)):
                sums[index] += value
        return _json({"active_streams": sums[0], "streams": sums[1], "requests": sums[2]})


COUNTERS = Counters(1)


def _header(lower_head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lower case) in a lower-cased request head, or None."""
    at = lower_head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    end = lower_head.find(b"\r\n", start)
    return lower_head[start : end if end >= 0 else len(lower_head)].strip()


def _chunked_body(buf: bytes, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body beginning at `start`: (body, end offset), or None while incomplete."""
    parts: list[bytes] = []
    at = start
    total = 0
    while True:
        line_end = buf.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(buf[at:line_end].split(b";", 1)[0], 16)
        at = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", at - 2)
            return (b"".join(parts), trailer_end + 4) if trailer_end >= 0 else None
        if len(buf) < at + size + 2:
            return None
        total += size
        if total > MAX_BODY:
            raise ValueError("body too large")
        parts.append(buf[at : at + size])
        at += size + 2


class MockProtocol(asyncio.Protocol):
    """One client connection: requests one after the other (pipelined ones wait their turn)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False  # a delayed or paused stream is being written
        self.closed = False
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio only sets it when the socket's proto says TCP; ours say 0
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self._process()

    def _fail(self, status: str) -> None:
        assert self.transport is not None
        self.transport.write(_head(status, [("Content-Length", "0"), ("Connection", "close")]))
        self.transport.close()
        self.closed = True

    def _process(self) -> None:
        """Answer every complete request in the buffer, until one starts a stream that must wait."""
        while not self.busy and not self.closed and self.buf:
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail("431 Request Header Fields Too Large")
                return
            lower = buf[:end].lower()
            body_start = end + 4
            try:
                length = _header(lower, b"content-length")
                if length is not None:
                    size = int(length)
                    if size > MAX_BODY:
                        raise ValueError("body too large")
                    if len(buf) < body_start + size:
                        return
                    body, consumed = buf[body_start : body_start + size], body_start + size
                elif b"chunked" in (_header(lower, b"transfer-encoding") or b""):
                    decoded = _chunked_body(buf, body_start)
                    if decoded is None:
                        return
                    body, consumed = decoded
                else:
                    body, consumed = b"", body_start
            except ValueError:
                self._fail("400 Bad Request")
                return
            self.buf = buf[consumed:]
            self._respond(lower, body)

    def _respond(self, lower: bytes, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        request_line = lower[: lower.find(b"\r\n")] if b"\r\n" in lower else lower
        close = _header(lower, b"connection") == b"close" or request_line.endswith(b"http/1.0")
        if request_line.startswith(b"get /_mock/stats"):
            stats = COUNTERS.totals()
            transport.write(_json_head(len(stats), close) + stats)
            return
        anthropic = b"/messages" in request_line
        events_value = _header(lower, b"x-mock-events")
        stream = events_value is not None or b'"stream":true' in body.replace(b" ", b"")
        if not stream:
            COUNTERS.add(0, 0, 1)
            transport.write(RESPONSES.full[(anthropic, close)])
            if close:
                transport.close()
                self.closed = True
            return
        try:
            events = min(MAX_EVENTS, max(1, int(events_value))) if events_value else DEFAULT_EVENTS
            delay_value = _header(lower, b"x-mock-delay-ms")
            delay = min(MAX_DELAY_MS, max(0.0, float(delay_value))) / 1000.0 if delay_value else 0.0
        except ValueError:
            self._fail("400 Bad Request")
            return
        stamp = _header(lower, b"x-mock-stamp") not in (None, b"0")
        plan = RESPONSES.plan(anthropic, events)
        COUNTERS.add(1, 1, 1)
        transport.write(RESPONSES.sse_heads[close])
        for data in plan.before:
            transport.write(data)
        if delay == 0.0 and self.writable.is_set():
            for index in range(events):
                if transport.is_closing():  # the client went away: asyncio would log every later write
                    break
                transport.write(plan.event(index, stamp))
            self._finish(plan, close)
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self._stream(plan, events, delay, stamp, close))

    async def _stream(self, plan: StreamPlan, events: int, delay: float, stamp: bool, close: bool) -> None:
        transport = self.transport
        assert transport is not None
        for index in range(events):
            if delay:
                await asyncio.sleep(delay)
            await self.writable.wait()
            if self.closed or transport.is_closing():
                COUNTERS.add(-1, 0, 0)
                return
            transport.write(plan.event(index, stamp))
        self._finish(plan, close)
        self.busy = False
        self._process()

    def _finish(self, plan: StreamPlan, close: bool) -> None:
        assert self.transport is not None
        COUNTERS.add(-1, 0, 0)
        if self.transport.is_closing():
            return
        for data in plan.after:
            self.transport.write(data)
        if close:
            self.transport.close()
            self.closed = True


def listen_socket(host: str, port: int, listen: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(BACKLOG)
    return sock


async def _serve(host: str, ports: list[int], ready_fd: int, parent: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    servers = [await loop.create_server(MockProtocol, sock=listen_socket(host, port), backlog=BACKLOG) for port in ports]
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    while not stop.is_set() and os.getppid() == parent:  # ends with the launcher, at the latest
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass
    for server in servers:
        server.close()


def _child(host: str, ports: list[int], ready_fd: int, parent: int, slot: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    COUNTERS.slot = slot
    code = 0
    try:
        asyncio.run(_serve(host, ports, ready_fd, parent))
    except BaseException:  # noqa: BLE001 - report and exit the forked child, never return into the parent's code
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def serve(
    host: str, port: int, processes: int, lifetime: float, announce: Callable[[list[int]], None], ports: int = 1
) -> int:
    """Fork `processes` servers on `host:port` (0: a free port) and `ports - 1` more free ports,
    announce the ports, wait; exit status."""
    placeholders = [listen_socket(host, port if index == 0 else 0, listen=False) for index in range(max(1, ports))]
    numbers = [sock.getsockname()[1] for sock in placeholders]  # held by the placeholders; never accepted on
    parent = os.getpid()
    launcher_parent = os.getppid()
    read_fd, write_fd = os.pipe()
    children: list[int] = []
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    global COUNTERS
    COUNTERS = Counters(processes)
    try:
        for slot in range(processes):
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _child(host, numbers, write_fd, parent, slot)
            children.append(pid)
        os.close(write_fd)
        ready = b""
        deadline = time.monotonic() + READY_TIMEOUT
        while len(ready) < processes and time.monotonic() < deadline:
            readable, _, _ = select.select([read_fd], [], [], 0.2)
            if readable:
                data = os.read(read_fd, 64)
                if not data:
                    break
                ready += data
        os.close(read_fd)
        if len(ready) < processes:
            print(f"fast_mock: only {len(ready)} of {processes} processes started", file=sys.stderr)
            return 1
        announce(numbers)
        deadline = time.monotonic() + lifetime
        while not stopping and time.monotonic() < deadline and os.getppid() == launcher_parent:
            pid, _status = os.waitpid(-1, os.WNOHANG)
            if pid:
                print(f"fast_mock: process {pid} exited unexpectedly", file=sys.stderr)
                children.remove(pid)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        _stop_children(children)
        for sock in placeholders:
            sock.close()


def _stop_children(children: list[int]) -> None:
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT
    remaining = set(children)
    while remaining and time.monotonic() < deadline:
        for pid in list(remaining):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                remaining.discard(pid)
        time.sleep(0.05)
    for pid in remaining:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def selftest(processes_list: list[int], duration: int, connections: int) -> int:
    """Start the mock with each process count and measure it directly with wrk; print a table."""
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench.cpu import CpuMeter
    from bench.targets import MockServer, cpu_seconds
    from bench.wrk import CHAT_BODY, STREAM_BODY, WrkScript, have_wrk, run_wrk

    if not have_wrk():
        print("wrk is not installed (apt-get install wrk): no self-test")
        return 1
    cases = [
        ("JSON", CHAT_BODY, {}),
        ("SSE 20 events", STREAM_BODY, {"x-mock-events": "20"}),
    ]
    print(f"fast_mock ceiling: wrk -t1 -c{connections} -d{duration}s, on {os.cpu_count()} CPUs\n")
    print("| answer | mock processes | requests/s | p50 ms | p99 ms | errors | mock CPU µs/req | background CPUs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for processes in processes_list:
        with MockServer(processes=processes) as mock:
            for name, body, headers in cases:
                with WrkScript(body, headers) as script:
                    run_wrk(mock.url("/v1/chat/completions"), script, connections=connections, duration=1)
                    meter = CpuMeter(mock.pids)
                    before = cpu_seconds(mock.pids())
                    meter.start()
                    result = run_wrk(mock.url("/v1/chat/completions"), script, connections=connections, duration=duration)
                    background = meter.stop()
                    per_request = (cpu_seconds(mock.pids()) - before) / max(1, result.requests) * 1e6
                print(
                    f"| {name} | {processes} | {result.rps:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.errors} "
                    f"| {per_request:.0f} | {background:.2f} |"
                )
    print("\n(background CPUs: other processes on the machine during the run; 1.00 = one core taken away)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ports", type=int, default=1, help="listen on this many ports (--port and free ones)")
    parser.add_argument("--lifetime", type=float, default=6 * 3600.0, help="exit after this many seconds")
    parser.add_argument("--selftest", action="store_true", help="measure the mock's own ceiling with wrk")
    parser.add_argument("--duration", type=int, default=5, help="--selftest: seconds per measurement")
    parser.add_argument("--connections", type=int, default=64, help="--selftest: wrk connections")
    args = parser.parse_args(argv)
    if args.selftest:
        counts = sorted({1, max(1, args.processes)})
        return selftest(counts, args.duration, args.connections)

    def announce(ports: list[int]) -> None:
        print("ready " + " ".join(str(port) for port in ports), flush=True)

    return serve(args.host, args.port, max(1, args.processes), args.lifetime, announce, max(1, args.ports))


if __name__ == "__main__":
    sys.exit(main())
