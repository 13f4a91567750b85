"""The HTTP/2 server connection against raw frames (RFC 9113): which violations end the connection
(GOAWAY with the right code), which reset one stream, and which late frames are dropped quietly."""

from __future__ import annotations

import pytest
from hpack import Decoder as ReferenceDecoder
from hpack import Encoder as ReferenceEncoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from h2frames import parse_frames as parse
from llmrelay.config.schema import Http2Section
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.proto.h2.connection import ConnectionFailed, Opened, PeerGoingAway, Readable, Reset, ServerConnection, StreamGone, Writable
from llmrelay.proto.h2.frames import PREFACE, ErrorCodes
from llmrelay.proto.h2.request import response_fields

HTTP2 = Http2Section(max_concurrent_streams=2, initial_window_size=65535, connection_window_size=65535)
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"), (b":authority", b"relay.test")]


class Client:
    """Raw frames to a server connection that has seen the preface and the client's SETTINGS."""

    def __init__(self, http2: Http2Section = HTTP2) -> None:
        self.server = ServerConnection(http2, HeadLimits(), "http", ("127.0.0.1", 1), 0.0)
        self.server.start()
        self.encoder = ReferenceEncoder()
        self.now = 0.0
        self.send(PREFACE + SettingsFrame(0).serialize())
        self.frames()

    def send(self, data: bytes) -> list[object]:
        self.now += 1.0  # (well within every budget)
        return list(self.server.receive_data(data, self.now))

    def headers(self, stream_id: int, fields: list[tuple[bytes, bytes]], end_stream: bool = False, **extra: object) -> bytes:
        flags = {"END_HEADERS"} | ({"END_STREAM"} if end_stream else set()) | ({"PRIORITY"} if "depends_on" in extra else set())
        return HeadersFrame(stream_id, data=self.encoder.encode(fields), flags=flags, **extra).serialize()  # type: ignore[arg-type]

    def frames(self) -> list[Frame]:
        return parse(self.server.data_to_send())

    def resets(self) -> dict[int, int]:
        return {f.stream_id: f.error_code for f in self.frames() if isinstance(f, RstStreamFrame)}


def goaway_code(client: Client, data: bytes) -> int:
    with pytest.raises(ConnectionFailed) as caught:
        client.send(data)
    goaways = [f for f in client.frames() if isinstance(f, GoAwayFrame)]
    assert goaways and goaways[0].error_code == caught.value.error_code
    return caught.value.error_code


def test_a_stream_over_the_concurrency_limit_is_refused_and_the_next_one_accepted() -> None:
    client = Client()
    events = client.send(client.headers(1, POST) + client.headers(3, POST) + client.headers(5, POST))
    assert [e.stream_id for e in events if isinstance(e, Opened)] == [1, 3]
    assert client.resets() == {5: ErrorCodes.REFUSED_STREAM}
    client.server.send_headers(1, response_fields(200, []), end_stream=True)
    client.server.release(1, complete=True)  # (its body was still coming: reset with NO_ERROR)
    assert client.resets() == {1: ErrorCodes.NO_ERROR}
    assert client.server.open_streams == 1
    events = client.send(client.headers(7, POST, end_stream=True))
    assert [e.stream_id for e in events if isinstance(e, Opened)] == [7]


def test_a_body_longer_or_shorter_than_its_content_length_resets_the_stream() -> None:
    client = Client()
    events = client.send(client.headers(1, [*POST, (b"content-length", b"3")]) + DataFrame(1, data=b"four").serialize())
    assert isinstance(events[0], Opened) and Reset(1, ErrorCodes.PROTOCOL_ERROR) in events
    events = client.send(client.headers(3, [*POST, (b"content-length", b"3")]) + DataFrame(3, data=b"tw", flags=["END_STREAM"]).serialize())
    assert Reset(3, ErrorCodes.PROTOCOL_ERROR) in events
    assert client.resets() == {1: ErrorCodes.PROTOCOL_ERROR, 3: ErrorCodes.PROTOCOL_ERROR}
    events = client.send(client.headers(5, [*POST, (b"content-length", b"3")]) + DataFrame(5, data=b"abc", flags=["END_STREAM"]).serialize())
    assert events[-1] == Readable(5) and client.server.read(5) == b"abc" and client.server.body_ended(5)


def test_late_data_on_a_stream_we_reset_is_dropped_quietly_and_its_window_given_back() -> None:
    client = Client()
    client.send(client.headers(1, POST))
    client.server.reset(1, ErrorCodes.CANCEL)
    assert client.resets() == {1: ErrorCodes.CANCEL}
    for _ in range(3):
        assert client.send(DataFrame(1, data=b"z" * 16384).serialize()) == []
    frames = client.frames()
    assert not any(isinstance(f, RstStreamFrame) for f in frames)
    assert sum(f.window_increment for f in frames if isinstance(f, WindowUpdateFrame) and f.stream_id == 0) >= 32768


def test_data_after_the_client_ended_its_stream_resets_it_with_stream_closed() -> None:
    client = Client()
    client.send(client.headers(1, POST, end_stream=True))
    events = client.send(DataFrame(1, data=b"more").serialize())
    assert events == [Reset(1, ErrorCodes.STREAM_CLOSED)]
    assert client.resets() == {1: ErrorCodes.STREAM_CLOSED}
    with pytest.raises(StreamGone):
        client.server.sendable(1)


def test_data_beyond_a_stream_window_resets_it_and_beyond_the_connection_window_ends_it() -> None:
    client = Client(Http2Section(initial_window_size=65535, connection_window_size=200_000))
    data = b"".join(DataFrame(1, data=b"w" * 16384).serialize() for _ in range(4)) + DataFrame(1, data=b"w" * 10).serialize()
    events = client.send(client.headers(1, POST) + data)  # 65,546 bytes: 11 past the stream's window
    assert Reset(1, ErrorCodes.FLOW_CONTROL_ERROR) in events
    client = Client()
    client.send(client.headers(1, POST) + client.headers(3, POST))
    data = b"".join(DataFrame(1 + 2 * (n % 2), data=b"w" * 16384).serialize() for n in range(5))
    assert goaway_code(client, data) == ErrorCodes.FLOW_CONTROL_ERROR


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (DataFrame(9, data=b"x").serialize(), ErrorCodes.PROTOCOL_ERROR),  # DATA on a stream never opened
        (WindowUpdateFrame(9, window_increment=1).serialize(), ErrorCodes.PROTOCOL_ERROR),
        (RstStreamFrame(9, error_code=8).serialize(), ErrorCodes.PROTOCOL_ERROR),
        (WindowUpdateFrame(0, window_increment=0).serialize(), ErrorCodes.PROTOCOL_ERROR),
        (WindowUpdateFrame(0, window_increment=2**31 - 1).serialize(), ErrorCodes.FLOW_CONTROL_ERROR),
        (HeadersFrame(1, data=b"\x82").serialize() + PingFrame(0).serialize(), ErrorCodes.PROTOCOL_ERROR),  # interrupted block
        (HeadersFrame(1, data=b"\x82").serialize() + ContinuationFrame(3, data=b"", flags=["END_HEADERS"]).serialize(), ErrorCodes.PROTOCOL_ERROR),
        (HeadersFrame(1, data=b"\xff\xff\xff\xff\xff\xff", flags=["END_HEADERS"]).serialize(), ErrorCodes.COMPRESSION_ERROR),
        (b"\x00\x00\x04\x05\x04\x00\x00\x00\x01\x00\x00\x00\x02", ErrorCodes.PROTOCOL_ERROR),  # PUSH_PROMISE
        (b"\x00\x00\x05\x02\x00\x00\x00\x00\x00" + bytes(5), ErrorCodes.PROTOCOL_ERROR),  # PRIORITY on stream 0
    ],
)
def test_connection_errors(frames: bytes, code: ErrorCodes) -> None:
    assert goaway_code(Client(), frames) == code


def test_the_first_frame_must_be_settings() -> None:
    server = ServerConnection(HTTP2, HeadLimits(), "http", ("127.0.0.1", 1), 0.0)
    server.start()
    with pytest.raises(ConnectionFailed) as caught:
        server.receive_data(PREFACE + PingFrame(0).serialize(), 0.0)
    assert caught.value.error_code == ErrorCodes.PROTOCOL_ERROR


def test_request_trailers_end_the_body_and_headers_without_end_stream_reset() -> None:
    client = Client()
    events = client.send(
        client.headers(1, POST) + DataFrame(1, data=b"body").serialize() + client.headers(1, [(b"x-checksum", b"1")], end_stream=True)
    )
    assert events[-1] == Readable(1) and client.server.read(1) == b"body" and client.server.body_ended(1)
    client.send(client.headers(3, POST))
    assert client.send(client.headers(3, [(b"x-t", b"1")])) == [Reset(3, ErrorCodes.PROTOCOL_ERROR)]


def test_a_stream_depending_on_itself_is_reset_and_the_hpack_state_kept() -> None:
    client = Client()
    events = client.send(client.headers(1, POST, end_stream=True, depends_on=1, stream_weight=16))
    assert not any(isinstance(e, Opened) for e in events)
    assert client.resets() == {1: ErrorCodes.PROTOCOL_ERROR}
    events = client.send(client.headers(3, POST, end_stream=True))  # (encoded against the same table)
    assert isinstance(events[0], Opened) and events[0].head.target == b"/up"


def test_ping_settings_and_windows() -> None:
    client = Client()
    client.send(PingFrame(0, opaque_data=b"probe123").serialize())
    (pong,) = client.frames()
    assert isinstance(pong, PingFrame) and pong.flags == {"ACK"} and pong.opaque_data == b"probe123"
    client.send(client.headers(1, POST, end_stream=True))
    assert client.server.sendable(1) == 65535
    events = client.send(SettingsFrame(0, settings={4: 100, 5: 20000}).serialize())
    assert events == [Writable(0)] and client.server.sendable(1) == 100
    assert [type(f) for f in client.frames()] == [SettingsFrame]  # its ACK
    assert client.send(WindowUpdateFrame(1, window_increment=0).serialize()) == [Reset(1, ErrorCodes.PROTOCOL_ERROR)]


def test_large_frames_when_the_client_allows_them() -> None:
    client = Client()
    client.send(SettingsFrame(0, settings={5: 20000}).serialize() + client.headers(1, POST, end_stream=True))
    client.frames()
    client.server.send_headers(1, response_fields(200, []), end_stream=False)
    client.server.send_data(1, b"d" * 30000, end_stream=True)
    data = [f for f in client.frames() if isinstance(f, DataFrame)]
    assert [len(f.data) for f in data] == [20000, 10000] and data[-1].flags == {"END_STREAM"}


def test_a_smaller_header_table_from_the_client_is_honoured() -> None:
    client = Client()
    client.send(SettingsFrame(0, settings={1: 0}).serialize() + client.headers(1, POST, end_stream=True))
    client.frames()
    client.server.send_headers(1, response_fields(200, [(b"x-a", b"b")]), end_stream=True)
    (headers,) = client.frames()
    decoder = ReferenceDecoder()
    decoder.max_allowed_table_size = 0
    assert isinstance(headers, HeadersFrame)
    assert decoder.decode(headers.data, raw=True) == [(b":status", b"200"), (b"x-a", b"b")]


def test_the_client_goaway_with_an_error_ends_sending_and_a_graceful_one_does_not() -> None:
    client = Client()
    client.send(client.headers(1, POST, end_stream=True))
    assert client.send(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize()) == [PeerGoingAway(0)]
    client.server.send_headers(1, response_fields(200, []), end_stream=True)  # still answered
    assert client.send(client.headers(3, POST, end_stream=True)) == []  # no new stream after it
    client = Client()
    client.send(client.headers(1, POST, end_stream=True))
    assert client.send(GoAwayFrame(0, last_stream_id=0, error_code=2).serialize()) == [PeerGoingAway(2)]
    with pytest.raises(StreamGone):
        client.server.send_headers(1, response_fields(200, []), end_stream=True)
