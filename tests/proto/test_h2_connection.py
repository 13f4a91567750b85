"""The sans-IO HTTP/2 server connection, driven by an h2 client in memory: settings, windows given
back only as bodies are read, refusals, resets, and the graceful GOAWAY."""

from __future__ import annotations

import h2.events as ev
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame

from llmrelay.config.schema import Http2Section
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.proto.h2.connection import (
    ENHANCE_YOUR_CALM,
    ConnectionFailed,
    Opened,
    Readable,
    Refused,
    Reset,
    ServerConnection,
    StreamGone,
    Writable,
)
from llmrelay.proto.h2.request import decoded_list_limit, response_fields

HTTP2 = Http2Section(max_concurrent_streams=10, initial_window_size=100_000, connection_window_size=300_000)
LIMITS = HeadLimits(max_header_bytes=4096, max_header_count=20)
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"), (b":authority", b"relay.test")]


class Pair:
    """A server connection and an h2 client talking through byte strings."""

    def __init__(self) -> None:
        self.server = ServerConnection(HTTP2, LIMITS, "http", ("127.0.0.1", 1), 0.0)
        self.server.start()
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.to_client()
        self.now = 0.0

    def start(self) -> None:
        """The client's preface and SETTINGS in, our ACK out."""
        self.to_server()
        self.to_client()

    def send_data(self, stream_id: int, data: bytes) -> None:
        for start in range(0, len(data), 16384):
            self.client.send_data(stream_id, data[start : start + 16384])

    def to_server(self) -> list[object]:
        return list(self.server.receive_data(self.client.data_to_send(), self.now))

    def to_client(self) -> list[ev.Event]:
        return self.client.receive_data(self.server.data_to_send())


def test_settings_and_windows_come_from_the_config() -> None:
    pair = Pair()
    settings = pair.client.remote_settings
    assert settings.max_concurrent_streams == 10
    assert settings.initial_window_size == 100_000
    assert settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
    assert settings.max_header_list_size == decoded_list_limit(LIMITS)
    # the connection window was opened to connection_window_size
    assert pair.client.outbound_flow_control_window == 300_000
    pair.to_server()
    assert pair.server.settings_received


def test_a_request_and_its_body_flow_control() -> None:
    pair = Pair()
    pair.to_server()
    pair.to_client()
    pair.client.send_headers(1, REQUEST)
    pair.send_data(1, b"a" * 60_000)
    events = pair.to_server()
    assert isinstance(events[0], Opened) and events[0].head.target == b"/up" and events[0].head.body_length is None
    assert isinstance(events[1], Readable)
    pair.to_client()
    # nothing read yet: the client's windows stay used
    assert pair.client.local_flow_control_window(1) == 40_000
    chunks = []
    while (chunk := pair.server.read(1)) is not None:
        chunks.append(chunk)
    assert b"".join(chunks) == b"a" * 60_000
    pair.to_client()
    assert pair.client.local_flow_control_window(1) == 100_000  # handed back once read
    assert pair.server.read(1) is None and not pair.server.body_ended(1)
    pair.client.end_stream(1)
    pair.to_server()
    assert pair.server.read(1) is None and pair.server.body_ended(1)


def test_a_response_is_sent_within_the_client_window() -> None:
    pair = Pair()
    pair.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    pair.to_server()
    pair.to_client()
    pair.to_server()
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.to_server()
    pair.server.send_headers(1, response_fields(200, []), end_stream=False)
    assert pair.server.sendable(1) == 1000
    pair.server.send_data(1, b"b" * 1000, end_stream=False)
    assert pair.server.sendable(1) == 0
    events = pair.to_client()
    received = sum(len(e.data) for e in events if isinstance(e, ev.DataReceived))
    assert received == 1000
    pair.client.acknowledge_received_data(1000, 1)
    pair.client.increment_flow_control_window(500, 1)
    assert any(isinstance(e, Writable) and e.stream_id == 1 for e in pair.to_server())
    assert pair.server.sendable(1) >= 500


def test_a_malformed_request_is_refused_and_the_connection_goes_on() -> None:
    pair = Pair()
    pair.client.config.validate_outbound_headers = False  # (h2 would strip the malformed field)
    pair.client.config.normalize_outbound_headers = False
    pair.start()
    pair.client.send_headers(1, [*REQUEST, (b"connection", b"close")], end_stream=True)
    pair.client.send_headers(3, REQUEST, end_stream=True)
    events = pair.to_server()
    assert isinstance(events[0], Refused) and events[0].error.status == 400
    assert [e.stream_id for e in events if isinstance(e, Opened)] == [3]


def test_a_client_reset_drops_the_body_and_gives_the_window_back() -> None:
    pair = Pair()
    pair.start()
    for stream_id in (1, 3, 5, 7):
        pair.client.send_headers(stream_id, REQUEST)
        pair.send_data(stream_id, b"c" * 50_000)
        pair.to_server()
        pair.to_client()
        pair.client.reset_stream(stream_id, 8)
        events = pair.to_server()
        assert any(isinstance(e, Reset) and e.stream_id == stream_id for e in events)
        assert pair.server.was_reset(stream_id)
        with pytest.raises(StreamGone):
            pair.server.sendable(stream_id)
        pair.to_client()
    # 200 000 bytes nobody read: the connection window got them back (h2 hands back by halves)
    assert pair.client.outbound_flow_control_window >= 300_000 - 50_000


def test_release_resets_a_finished_stream_whose_body_is_still_coming() -> None:
    pair = Pair()
    pair.client.send_headers(1, REQUEST)
    pair.to_server()
    pair.server.send_headers(1, response_fields(200, []), end_stream=True)
    pair.server.release(1, complete=True)
    resets = [e for e in pair.to_client() if isinstance(e, ev.StreamReset)]
    assert resets and resets[0].error_code == 0  # NO_ERROR: stop sending, the answer is complete


def test_release_of_an_unfinished_response_resets_it_with_an_error() -> None:
    pair = Pair()
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.to_server()
    pair.server.send_headers(1, response_fields(200, []), end_stream=False)
    pair.server.release(1, complete=False)
    resets = [e for e in pair.to_client() if isinstance(e, ev.StreamReset)]
    assert resets and resets[0].error_code == 2  # INTERNAL_ERROR


def test_graceful_goaway_names_the_last_accepted_stream_and_refuses_later_ones() -> None:
    pair = Pair()
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.client.send_headers(3, REQUEST, end_stream=True)
    pair.to_server()
    pair.server.go_away()
    pair.client.send_headers(5, REQUEST, end_stream=True)
    events = pair.to_server()
    assert not any(isinstance(e, Opened) for e in events)  # stream 5 is never served
    # the open streams are still answered after the GOAWAY
    pair.server.send_headers(3, response_fields(200, []), end_stream=True)
    client_events = pair.to_client()
    goaway = [e for e in client_events if isinstance(e, ev.ConnectionTerminated)]
    assert goaway and goaway[0].last_stream_id == 3 and goaway[0].error_code == 0
    # stream 5 is ignored, not reset: the GOAWAY's last stream id (3) already tells the client
    assert not [e for e in client_events if isinstance(e, ev.StreamReset)]


def test_a_spent_budget_ends_the_connection_with_enhance_your_calm() -> None:
    pair = Pair()
    pair.to_server()
    raw = HeadersFrame(1, data=b"\x82").serialize() + ContinuationFrame(1, data=b"").serialize() * 40
    with pytest.raises(ConnectionFailed) as caught:
        pair.server.receive_data(raw, 0.0)
    assert caught.value.error_code == ENHANCE_YOUR_CALM
    goaway = [e for e in pair.to_client() if isinstance(e, ev.ConnectionTerminated)]
    assert goaway and goaway[0].error_code == ENHANCE_YOUR_CALM


def test_a_protocol_error_ends_the_connection_with_its_goaway() -> None:
    pair = Pair()
    with pytest.raises(ConnectionFailed) as caught:
        pair.server.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + ContinuationFrame(1, data=b"").serialize(), 0.0)  # a naked CONTINUATION
    assert caught.value.error_code == 1  # PROTOCOL_ERROR
    assert any(isinstance(e, ev.ConnectionTerminated) for e in pair.to_client())


def test_a_wrong_preface_gets_a_goaway_too() -> None:
    pair = Pair()
    with pytest.raises(ConnectionFailed) as caught:
        pair.server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0.0)
    assert caught.value.error_code == 1  # PROTOCOL_ERROR
    assert any(isinstance(e, ev.ConnectionTerminated) for e in pair.to_client())


def test_a_long_lived_connection_remembers_a_bounded_number_of_closed_streams() -> None:
    """Streams are forgotten once released; the streams whose late frames are dropped are bounded."""
    pair = Pair()
    pair.start()
    for stream_id in range(1, 2 * 3000, 2):
        pair.client.send_headers(stream_id, [(b":method", b"GET"), *REQUEST[1:]], end_stream=True)
        pair.to_server()
        pair.server.send_headers(stream_id, response_fields(200, []), end_stream=True)
        pair.server.release(stream_id, True)
        pair.to_client()
    assert len(pair.server.quiet) <= 1024
    assert not pair.server.streams and pair.server.open_streams == 0
