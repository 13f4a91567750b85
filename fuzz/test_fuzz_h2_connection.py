"""The sans-IO HTTP/2 server connection fed arbitrary frames, cut at arbitrary points, while a
simulated relay reads, answers, resets and releases its streams at random.

Whatever arrives: the only exception is `ConnectionFailed` (its GOAWAY queued); what the connection
writes always parses as frames; its bookkeeping holds (the open-stream count matches the streams
with a half open and never passes the limit, the bytes held per stream match their chunks, no window
we enforce goes below zero), and a body handed to the relay never passes the stream's window."""

from __future__ import annotations

import sys
from pathlib import Path

from hpack import Encoder
from hypothesis import given
from hypothesis import strategies as st
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from h2frames import parse_frames  # noqa: E402

from llmrelay.config.schema import Http2Section
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.proto.h2.connection import ConnectionFailed, Opened, Refused, ServerConnection, StreamGone
from llmrelay.proto.h2.frames import PREFACE
from llmrelay.proto.h2.request import response_fields

HTTP2 = Http2Section(max_concurrent_streams=3, initial_window_size=65535, connection_window_size=100_000)
STREAM_IDS = st.sampled_from([1, 3, 5, 7, 9, 11])
REQUESTS = st.sampled_from(
    [
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")],
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/p"), (b":authority", b"a")],
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/p"), (b":authority", b"a"), (b"content-length", b"20")],
        [(b":method", b"POST"), (b":path", b"/no-scheme"), (b":authority", b"a")],
    ]
)


@st.composite
def client_frame(draw: st.DrawFn, encoder: Encoder) -> bytes:
    kind = draw(st.integers(0, 9))
    stream_id = draw(STREAM_IDS)
    if kind <= 2:
        flags = {"END_HEADERS"} | draw(st.sets(st.just("END_STREAM")))
        if kind == 2:
            flags = draw(st.sets(st.just("END_STREAM")))  # a block continued below, or interrupted
        return HeadersFrame(stream_id, data=encoder.encode(draw(REQUESTS)), flags=flags).serialize()
    if kind == 3:
        return ContinuationFrame(stream_id, data=b"", flags=draw(st.sets(st.just("END_HEADERS")))).serialize()
    if kind in (4, 5):
        size = draw(st.sampled_from([0, 5, 20, 16384]))
        padding = draw(st.sampled_from([None, 0, 7]))
        flags = draw(st.sets(st.just("END_STREAM"))) | ({"PADDED"} if padding is not None else set())
        return DataFrame(stream_id, data=b"d" * size, pad_length=padding or 0, flags=flags).serialize()
    if kind == 6:
        return RstStreamFrame(stream_id, error_code=draw(st.integers(0, 13))).serialize()
    if kind == 7:
        settings = draw(st.dictionaries(st.sampled_from([1, 3, 4, 5]), st.sampled_from([0, 100, 16384, 70000]), max_size=2))
        return SettingsFrame(0, settings=settings).serialize()
    if kind == 8:
        return WindowUpdateFrame(draw(st.sampled_from([0, stream_id])), window_increment=draw(st.sampled_from([1, 1000, 65535]))).serialize()
    return draw(
        st.sampled_from(
            [PingFrame(0, opaque_data=b"12345678").serialize(), PriorityFrame(stream_id, depends_on=0).serialize(), GoAwayFrame(0).serialize()]
        )
    )


ACTIONS = st.lists(st.tuples(st.sampled_from(["read", "answer", "stream", "reset", "release"]), STREAM_IDS), max_size=6)


def check_bookkeeping(server: ServerConnection) -> None:
    table = server.table
    counted = [stream for stream in table.streams.values() if stream.counted]
    assert table.open_count == len(counted) <= HTTP2.max_concurrent_streams
    assert all(not stream.closed for stream in counted)
    assert table.receive_window >= 0
    for stream in table.streams.values():
        assert stream.unread == sum(flow for _, flow in stream.chunks)
        assert stream.receive_window >= 0
        assert stream.unread <= HTTP2.initial_window_size


def act(server: ServerConnection, action: str, stream_id: int, served: set[int]) -> None:
    if stream_id not in served:
        return
    try:
        if action == "read":
            while server.read(stream_id) is not None:
                pass
        elif action == "answer":
            server.send_headers(stream_id, response_fields(200, []), end_stream=False)
            window = server.sendable(stream_id)
            server.send_data(stream_id, b"r" * min(window, 30), end_stream=window >= 30)
        elif action == "stream":
            server.send_data(stream_id, b"", end_stream=False)
        elif action == "reset":
            server.reset(stream_id, 8)
        else:
            server.release(stream_id, complete=False)
            served.discard(stream_id)
    except StreamGone:
        pass


@given(st.data())
def test_arbitrary_frames_keep_the_books_straight(data: st.DataObject) -> None:
    encoder = Encoder()
    server = ServerConnection(HTTP2, HeadLimits(), "http", ("127.0.0.1", 1), 0.0)
    server.start()
    wire = PREFACE + SettingsFrame(0).serialize() + b"".join(data.draw(st.lists(client_frame(encoder), max_size=20)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=4)))
    pieces = [wire[start:end] for start, end in zip([0, *cuts], [*cuts, len(wire)])]
    served: set[int] = set()
    now = 0.0
    for piece in pieces:
        now += 1.0
        try:
            events = server.receive_data(piece, now)
        except ConnectionFailed:
            parse_frames(server.data_to_send())
            return
        for event in events:
            if isinstance(event, (Opened, Refused)):
                served.add(event.stream_id)
        for action, stream_id in data.draw(ACTIONS):
            act(server, action, stream_id, served)
        check_bookkeeping(server)
        parse_frames(server.data_to_send())
    for stream_id in list(served):
        server.release(stream_id, complete=False)
    check_bookkeeping(server)
    assert server.table.open_count == 0 and not server.table.streams
    parse_frames(server.data_to_send())
