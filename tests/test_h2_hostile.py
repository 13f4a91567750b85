"""Hostile HTTP/2 clients: each flood ends its own connection (GOAWAY with ENHANCE_YOUR_CALM, or the
protocol error h2 names) within bounded time, the handler sees (almost) nothing of it, and the
worker goes on serving another connection."""

from __future__ import annotations

from time import monotonic

import httpx
import trio
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from test_h2_server import FrameLog, Handler, h2_server, wait_for

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 11
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/stall"), (b":authority", b"relay.test")]


async def attack(port: int, payload: bytes, timeout: float = 5.0) -> tuple[FrameLog, float]:
    """Send the preface, SETTINGS and `payload`; read what comes back until the server closes.
    Returns the frames and how long the server took to close."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    log = FrameLog()
    started = monotonic()
    try:
        await stream.send_all(PREFACE + SettingsFrame(0).serialize() + payload)
    except trio.BrokenResourceError:
        pass
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            log.feed(data)
    await stream.aclose()
    return log, monotonic() - started


def goaway_code(log: FrameLog) -> int | None:
    codes = [int(frame.error_code) for frame in log.frames if isinstance(frame, GoAwayFrame)]
    return codes[-1] if codes else None


async def still_serving(url: str) -> None:
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        response = await client.get(url + "/fine")
        assert response.status_code == 200 and response.text == "GET /fine"


def headers_frame(encoder: Encoder, stream_id: int, fields=REQUEST, end_stream: bool = True) -> bytes:  # type: ignore[no-untyped-def]
    flags = ["END_HEADERS", "END_STREAM"] if end_stream else ["END_HEADERS"]
    return HeadersFrame(stream_id, data=encoder.encode(fields), flags=flags).serialize()


async def test_rapid_reset() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        encoder = Encoder()
        payload = b"".join(
            headers_frame(encoder, stream_id) + RstStreamFrame(stream_id, error_code=8).serialize()
            for stream_id in range(1, 4001, 2)
        )
        log, took = await attack(server.port, payload)
        assert goaway_code(log) == ENHANCE_YOUR_CALM and took < 3.0
        # streams opened and reset in the same read never reach the handler
        assert len(handler.started) < 250
        await wait_for(lambda: server.state.requests_in_flight == 0)
        await still_serving(server.url)


async def test_continuation_flood() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        block = Encoder().encode(REQUEST)
        payload = HeadersFrame(1, data=block).serialize() + ContinuationFrame(1, data=b"").serialize() * 10_000
        log, took = await attack(server.port, payload)
        assert goaway_code(log) == ENHANCE_YOUR_CALM and took < 3.0
        assert handler.started == []
        await still_serving(server.url)


async def test_a_header_block_growing_past_the_limit_without_end() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        payload = HeadersFrame(1, data=b"\x00" * 16384).serialize() + ContinuationFrame(1, data=b"\x00" * 16384).serialize() * 8
        log, took = await attack(server.port, payload)
        assert goaway_code(log) == ENHANCE_YOUR_CALM and took < 3.0
        await still_serving(server.url)


async def test_ping_flood() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        payload = PingFrame(0, opaque_data=b"12345678").serialize() * 5000
        log, took = await attack(server.port, payload)
        assert goaway_code(log) == ENHANCE_YOUR_CALM and took < 3.0
        acks = [frame for frame in log.frames if isinstance(frame, PingFrame)]
        assert len(acks) < 100  # the flood was not answered frame by frame
        await still_serving(server.url)


async def test_settings_flood() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        payload = SettingsFrame(0, settings={4: 65535}).serialize() * 2000
        log, took = await attack(server.port, payload)
        assert goaway_code(log) == ENHANCE_YOUR_CALM and took < 3.0
        await still_serving(server.url)


async def test_window_update_flood() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        payload = WindowUpdateFrame(0, window_increment=1).serialize() * 5000
        log, took = await attack(server.port, payload)
        assert goaway_code(log) == ENHANCE_YOUR_CALM and took < 3.0
        await still_serving(server.url)


async def test_zero_length_data_flood() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        encoder = Encoder()
        payload = headers_frame(encoder, 1, end_stream=False) + DataFrame(1, data=b"").serialize() * 5000
        log, took = await attack(server.port, payload)
        assert goaway_code(log) == ENHANCE_YOUR_CALM and took < 3.0
        await wait_for(lambda: server.state.requests_in_flight == 0)
        await still_serving(server.url)


async def test_hpack_bomb() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        encoder = Encoder()
        # one 4 KB field into the dynamic table, then a block of one-byte references to it
        first = encoder.encode([*REQUEST, (b"x-bomb", b"b" * 4000)])
        bomb = bytes([0x80 | 62]) * 4000  # ~16 MB once decoded
        payload = (
            HeadersFrame(1, data=first, flags=["END_HEADERS", "END_STREAM"]).serialize()
            + HeadersFrame(3, data=encoder.encode(REQUEST[:1]) + bomb[:16000], flags=["END_HEADERS", "END_STREAM"]).serialize()
        )
        log, took = await attack(server.port, payload)
        assert goaway_code(log) == ENHANCE_YOUR_CALM and took < 3.0
        assert b"/stall" not in handler.finished
        await wait_for(lambda: server.state.requests_in_flight == 0)
        await still_serving(server.url)


async def test_an_oversized_header_list_gets_431_and_the_connection_goes_on() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        encoder = Encoder()
        big = [*REQUEST[:2], (b":path", b"/big-head"), REQUEST[3], (b"x-big", b"v" * 36_000)]
        block = encoder.encode(big)
        frames = HeadersFrame(1, data=block[:16384], flags=["END_STREAM"]).serialize()
        rest = block[16384:]
        while rest:
            piece, rest = rest[:16384], rest[16384:]
            frames += ContinuationFrame(1, data=piece, flags=[] if rest else ["END_HEADERS"]).serialize()
        frames += headers_frame(encoder, 3, [*REQUEST[:2], (b":path", b"/after"), REQUEST[3]])
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(PREFACE + SettingsFrame(0).serialize() + frames)
        log = FrameLog()
        with trio.fail_after(5):
            while not (log.heads.get(1) and log.heads.get(3) and any(isinstance(f, DataFrame) and f.stream_id == 3 and "END_STREAM" in f.flags for f in log.frames)):
                log.feed(await stream.receive_some(65536))
        assert dict(log.heads[1][0])[b":status"] == b"431"
        assert dict(log.heads[3][0])[b":status"] == b"200"
        assert handler.started == [b"/after"]
        assert [(r.status, r.target) for r in handler.refusals] == [(431, b"/big-head")]
        await stream.aclose()


async def test_garbage_instead_of_a_preface_gets_goaway() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n" + b"x" * 100)
        log = FrameLog()
        with trio.fail_after(5):
            while data := await stream.receive_some(65536):
                log.feed(data)
        assert goaway_code(log) == 1  # PROTOCOL_ERROR
        await still_serving(server.url)
