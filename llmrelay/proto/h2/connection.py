"""The server side of one HTTP/2 connection, sans-IO (RFC 9113).

Bytes in (`receive_data`), stream events out (`Opened`, `Refused`, `Readable`, `Reset`, `Writable`,
`PeerGoingAway`), frames to send out (`data_to_send`). The relay's own state machine, written for
what a relay serves: requests from a client, responses from us, no server push, priorities ignored.

- **Frames.** `FrameReader` cuts the bytes; each frame is checked as RFC 9113 section 6 asks (stream
  ids, lengths, flags, padding) and a violation ends the connection with GOAWAY(its code) and
  `ConnectionFailed`, or, where the RFC makes it a stream error, resets that stream only. The abuse
  budgets of `guard` are charged before any frame of a read is processed.
- **Requests.** A header block (HEADERS and its CONTINUATION frames) is HPACK-decoded (`hpack_codec`),
  checked and translated (`request`): a malformed one is `Refused`, never `Opened`. A stream over
  SETTINGS_MAX_CONCURRENT_STREAMS is reset with REFUSED_STREAM before anyone sees it. A body longer
  or shorter than its content-length resets the stream (PROTOCOL_ERROR).
- **Flow control, both ways, bounded.** Body bytes are kept per stream until the relay reads them and
  only then handed back to the client (WINDOW_UPDATE once half a window was read): a slow reader slows
  the client, and what is held is bounded by the windows we announced. We send only within the
  client's windows (`sendable`).
- **Ends.** `go_away()` is the graceful GOAWAY: it names the last stream accepted, those go on, any
  stream opened above it is ignored without being seen (the GOAWAY tells the client it was not
  processed). A client's graceful GOAWAY lets its open streams finish; one with an error code ends
  the connection. Frames a client sends on a stream we reset are dropped (`QuietStreams`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hpack.exceptions import HPACKError, OversizedHeaderListError

from llmrelay.config.schema import Http2Section
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.proto.h2 import frames as fr
from llmrelay.proto.h2.events import (
    ConnectionFailed,
    Opened,
    PeerGoingAway,
    Readable,
    Refused,
    Reset,
    StreamEvent,
    StreamGone,
    Writable,
)
from llmrelay.proto.h2.frames import ErrorCodes, FrameError, FrameReader
from llmrelay.proto.h2.guard import FrameGuard
from llmrelay.proto.h2.hpack_codec import Decoder, Encoder
from llmrelay.proto.h2.request import MalformedRequest, decoded_list_limit, request_head
from llmrelay.proto.h2.streams import QuietStreams, ServerStream, StreamTable

__all__ = [
    "CANCEL", "ENHANCE_YOUR_CALM", "INTERNAL_ERROR", "NO_ERROR", "ConnectionFailed", "Opened", "PeerGoingAway",
    "Readable", "Refused", "Reset", "ServerConnection", "StreamEvent", "StreamGone", "Writable",
]

# hpack logs every decoded field, values included, at DEBUG: a relay run with debug logging would
# write its clients' credentials. Its logger stays above DEBUG (and `hpack_tuning` silences it).
logging.getLogger("hpack").setLevel(logging.INFO)

NO_ERROR = ErrorCodes.NO_ERROR
PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR
CANCEL = ErrorCodes.CANCEL
INTERNAL_ERROR = ErrorCodes.INTERNAL_ERROR
ENHANCE_YOUR_CALM = ErrorCodes.ENHANCE_YOUR_CALM
FLOW_CONTROL_ERROR = ErrorCodes.FLOW_CONTROL_ERROR
STREAM_CLOSED = ErrorCodes.STREAM_CLOSED
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = fr.DATA, fr.HEADERS, fr.PRIORITY, fr.RST_STREAM, fr.SETTINGS
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = fr.PUSH_PROMISE, fr.PING, fr.GOAWAY, fr.WINDOW_UPDATE, fr.CONTINUATION
_END_STREAM, _END_HEADERS = fr.END_STREAM, fr.END_HEADERS
_MAX_WINDOW = fr.MAX_WINDOW
_frame = fr.frame


class ServerConnection:
    """One client connection's HTTP/2 state (see the module's paragraph)."""

    def __init__(self, http2: Http2Section, limits: HeadLimits, scheme: str, client: tuple[str, int], now: float) -> None:
        self.limits = limits
        self.scheme = scheme
        self.client = client
        list_limit = decoded_list_limit(limits)
        self._settings = {
            fr.MAX_CONCURRENT_STREAMS: http2.max_concurrent_streams,
            fr.INITIAL_WINDOW_SIZE: http2.initial_window_size,
            fr.MAX_FRAME_SIZE: http2.max_frame_size,
            fr.MAX_HEADER_LIST_SIZE: list_limit,
            fr.ENABLE_CONNECT_PROTOCOL: 1,
        }
        self.max_concurrent_streams = http2.max_concurrent_streams
        self.reader = FrameReader(http2.max_frame_size)
        self.decoder = Decoder(max_header_list_size=list_limit)
        self.encoder = Encoder()
        self.guard = FrameGuard(list_limit, now)
        self._out: list[bytes] = []
        self._graceful_goaway = b""  # a graceful GOAWAY, sent after what the same turn queued
        self.table = StreamTable(http2.initial_window_size, http2.connection_window_size, self._out)
        self.streams = self.table.streams
        self.highest_stream = 0  # the highest stream id the client used: lower unknown ids are closed
        self.last_accepted = 0  # the highest stream id a request was taken (or answered) on
        self.accepting = True
        self.settings_received = False  # the client's preface and first SETTINGS arrived
        self.closed = False  # a GOAWAY with an error went either way: nothing more is sent
        self.send_window = fr.DEFAULT_WINDOW  # the connection's window for what we send
        self.initial_send_window = fr.DEFAULT_WINDOW  # a new stream's window for what we send
        self.max_outbound_frame_size = fr.DEFAULT_MAX_FRAME_SIZE
        self._block_stream = 0  # the stream of a header block still waiting for CONTINUATION
        self._block_flags = 0
        self._block: list[bytes] = []

    def start(self) -> None:
        """Queue our SETTINGS and the connection window's opening."""
        self._out.append(fr.settings_frame(self._settings))
        window = self.table.connection_window
        if window > fr.DEFAULT_WINDOW:
            self._out.append(fr.window_update_frame(0, window - fr.DEFAULT_WINDOW))
            self.table.receive_window = window

    @property
    def open_streams(self) -> int:
        """Streams with a half still open (SETTINGS_MAX_CONCURRENT_STREAMS)."""
        return self.table.open_count

    @property
    def quiet(self) -> QuietStreams:
        """Streams reset or refused: late frames on them are dropped."""
        return self.table.quiet

    # -- input ------------------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> list[StreamEvent]:
        """The events `data` brings; ConnectionFailed when the connection must end."""
        problem = self.guard.check(data, now)
        if problem is not None:
            self.fail(ENHANCE_YOUR_CALM, problem)
        out: list[StreamEvent] = []
        try:
            for kind, flags, stream_id, payload in self.reader.frames(data):
                if self._block_stream:
                    self._continuation(kind, flags, stream_id, payload, out)
                elif not self.settings_received and kind != _SETTINGS:
                    raise FrameError(PROTOCOL_ERROR, "the client's first frame is not SETTINGS")
                elif kind == _DATA:
                    self._data(flags, stream_id, payload, out)
                elif kind == _HEADERS:
                    fragment, self_dependent = fr.header_fragment(flags, stream_id, payload)
                    if flags & _END_HEADERS:
                        self._header_block(stream_id, flags, self_dependent, fragment, out)
                    else:
                        self._block_stream, self._block_flags, self._block = stream_id, flags | self_dependent << 8, [fragment]
                elif kind == _WINDOW_UPDATE:
                    self._window_update(stream_id, fr.window_increment(payload), out)
                elif kind == _RST_STREAM:
                    self._rst_stream(stream_id, fr.reset_code(stream_id, payload), out)
                elif kind == _SETTINGS:
                    self._settings_frame(flags, stream_id, payload, out)
                elif kind == _PING:
                    answer = fr.ping_answer(flags, stream_id, payload)
                    if answer is not None:
                        self._out.append(answer)
                elif kind == _PRIORITY:
                    fr.check_priority(stream_id, payload)
                elif kind == _GOAWAY:
                    error_code = fr.goaway_code(stream_id, payload)
                    self.accepting = False
                    self.closed = self.closed or error_code != NO_ERROR
                    out.append(PeerGoingAway(error_code))
                elif kind == _PUSH_PROMISE:
                    raise FrameError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
                elif kind == _CONTINUATION:
                    raise FrameError(PROTOCOL_ERROR, "CONTINUATION outside a header block")
                # other types are extensions we do not speak: ignored (RFC 9113 section 5.5)
        except FrameError as exc:
            self.fail(exc.error_code, exc.reason)
        return out

    def fail(self, error_code: int, reason: str) -> None:
        """End the connection with GOAWAY(`error_code`); raises ConnectionFailed."""
        if not self.closed:
            self.closed = True
            self.accepting = False
            self._out.append(fr.goaway_frame(self.last_accepted, error_code))
        raise ConnectionFailed(int(error_code), reason)

    def _continuation(self, kind: int, flags: int, stream_id: int, payload: bytes, out: list[StreamEvent]) -> None:
        if kind != _CONTINUATION or stream_id != self._block_stream:
            raise FrameError(PROTOCOL_ERROR, "a header block interrupted by another frame")
        self._block.append(payload)
        if flags & _END_HEADERS:
            block, self._block = b"".join(self._block), []
            self._block_stream = 0
            self._header_block(stream_id, self._block_flags, bool(self._block_flags >> 8), block, out)

    def _header_block(self, stream_id: int, flags: int, self_dependent: bool, block: bytes, out: list[StreamEvent]) -> None:
        try:  # (decoded whatever happens to the stream: the HPACK state is the connection's)
            fields = self.decoder.decode(block, raw=True)
        except OversizedHeaderListError:
            raise FrameError(ENHANCE_YOUR_CALM, "a header list over the limit (HPACK bomb)") from None
        except HPACKError as exc:
            raise FrameError(ErrorCodes.COMPRESSION_ERROR, f"an undecodable header block: {exc}") from None
        end_stream = bool(flags & _END_STREAM)
        if stream_id > self.highest_stream:
            self._open(stream_id, fields, end_stream, self_dependent, out)
            return
        stream = self.streams.get(stream_id)
        if stream is not None and stream.remote_open:
            if not end_stream:  # trailers must end the stream (RFC 9113 section 8.1)
                self._stream_error(stream_id, PROTOCOL_ERROR, out)
            else:  # request trailers are dropped; the body ends
                self._remote_end(stream_id, stream, out)
        elif not self._quiet(stream_id, stream):
            self._stream_error(stream_id, STREAM_CLOSED, out)

    def _open(
        self, stream_id: int, fields: Sequence[tuple[bytes, bytes]], ended: bool, self_dependent: bool, out: list[StreamEvent]
    ) -> None:
        self.highest_stream = stream_id
        if not self.accepting:
            # Above the GOAWAY's last stream: never served, and ignored (RFC 9113 section 6.8) rather
            # than reset, since the GOAWAY already tells the client to retry it elsewhere; some
            # clients (httpcore) fail a request whose RST_STREAM they read before that GOAWAY.
            return
        if self_dependent:
            self._stream_error(stream_id, PROTOCOL_ERROR, out)
            return
        table = self.table
        if table.open_count >= self.max_concurrent_streams:
            self._out.append(fr.rst_stream_frame(stream_id, ErrorCodes.REFUSED_STREAM))
            table.quiet.add(stream_id)
            return
        self.last_accepted = stream_id
        stream = table.open(stream_id, ended, self.initial_send_window)
        try:
            head = request_head(fields, ended, self.scheme, self.client, self.limits)
        except MalformedRequest as exc:
            out.append(Refused(stream_id, exc))
            return
        if not ended:
            stream.expected_length = head.body_length
        out.append(Opened(stream_id, head))

    def _data(self, flags: int, stream_id: int, payload: bytes, out: list[StreamEvent]) -> None:
        data = fr.data_content(flags, stream_id, payload)
        flow = len(payload)  # (padding included)
        table = self.table
        if flow > table.receive_window:
            raise FrameError(FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        table.receive_window -= flow
        stream = self.streams.get(stream_id)
        if stream is None or not stream.remote_open:
            if stream_id > self.highest_stream:
                raise FrameError(PROTOCOL_ERROR, f"DATA on stream {stream_id}, which was never opened")
            table.hand_back(flow)  # nobody reads it
            if not self._quiet(stream_id, stream):
                self._stream_error(stream_id, STREAM_CLOSED, out)
            return
        if flow > stream.receive_window:
            table.hand_back(flow)
            self._stream_error(stream_id, FLOW_CONTROL_ERROR, out)
            return
        stream.receive_window -= flow
        if flow:
            stream.chunks.append((data, flow))
            stream.unread += flow
        if data:
            stream.received_length += len(data)
            expected = stream.expected_length
            if expected is not None and stream.received_length > expected:
                self._stream_error(stream_id, PROTOCOL_ERROR, out)
                return
        if flags & _END_STREAM:
            self._remote_end(stream_id, stream, out)
        else:
            out.append(Readable(stream_id))

    def _remote_end(self, stream_id: int, stream: ServerStream, out: list[StreamEvent]) -> None:
        expected = stream.expected_length
        if expected is not None and stream.received_length != expected:
            self._stream_error(stream_id, PROTOCOL_ERROR, out)
            return
        self.table.remote_end(stream)
        out.append(Readable(stream_id))

    def _quiet(self, stream_id: int, stream: ServerStream | None) -> bool:
        """Whether a late frame on this closed stream is dropped without an answer."""
        return (
            (stream is not None and stream.reset)
            or stream_id in self.table.quiet
            or (not self.accepting and stream_id > self.last_accepted)
        )

    def _window_update(self, stream_id: int, increment: int, out: list[StreamEvent]) -> None:
        if stream_id == 0:
            if not increment:
                raise FrameError(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0 on the connection")
            self.send_window += increment
            if self.send_window > _MAX_WINDOW:
                raise FrameError(FLOW_CONTROL_ERROR, "the connection's window grew past 2^31-1")
            out.append(Writable(0))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.highest_stream:
                raise FrameError(PROTOCOL_ERROR, f"WINDOW_UPDATE on stream {stream_id}, which was never opened")
            return  # a closed stream: nothing to send on it any more
        if stream.reset:
            return
        if not increment:
            self._stream_error(stream_id, PROTOCOL_ERROR, out)
            return
        stream.send_window += increment
        if stream.send_window > _MAX_WINDOW:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR, out)
            return
        out.append(Writable(stream_id))

    def _rst_stream(self, stream_id: int, error_code: int, out: list[StreamEvent]) -> None:
        if stream_id > self.highest_stream:
            raise FrameError(PROTOCOL_ERROR, f"RST_STREAM on stream {stream_id}, which was never opened")
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.reset:
            self.table.close_by_reset(stream_id, stream)
            out.append(Reset(stream_id, error_code))

    def _settings_frame(self, flags: int, stream_id: int, payload: bytes, out: list[StreamEvent]) -> None:
        settings = fr.settings_received(flags, stream_id, payload)
        if settings is None:
            return  # (our settings apply from the start: every window we announced is at least the default)
        writable = False
        for code, value in settings:
            if code == fr.INITIAL_WINDOW_SIZE:
                delta = value - self.initial_send_window
                self.initial_send_window = value
                for stream in self.streams.values():  # (a window may go below zero: RFC 9113 section 6.9.2)
                    stream.send_window += delta
                    if stream.send_window > _MAX_WINDOW:
                        raise FrameError(FLOW_CONTROL_ERROR, "a stream's window grew past 2^31-1")
                writable = True
            elif code == fr.MAX_FRAME_SIZE:
                self.max_outbound_frame_size = value
                writable = True
            elif code == fr.HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
        self._out.append(fr.SETTINGS_ACK)
        self.settings_received = True
        if writable:
            out.append(Writable(0))

    def _stream_error(self, stream_id: int, error_code: int, out: list[StreamEvent]) -> None:
        """Reset one stream for its protocol error; whoever serves it is told (`Reset`)."""
        stream = self.streams.get(stream_id)
        self._out.append(fr.rst_stream_frame(stream_id, error_code))
        self.table.quiet.add(stream_id)
        if stream is not None and not stream.reset:
            self.table.close_by_reset(stream_id, stream)
            out.append(Reset(stream_id, int(error_code)))

    # -- request bodies ---------------------------------------------------------------------------
    def read(self, stream_id: int) -> bytes | None:
        """The next body chunk received on `stream_id` (handed back to the client's window now), or
        None when none is waiting."""
        return self.table.read(stream_id)

    def body_ended(self, stream_id: int) -> bool:
        """Whether the client ended its side and every chunk was read."""
        stream = self.streams.get(stream_id)
        return stream is None or (stream.ended and not stream.chunks)

    def was_reset(self, stream_id: int) -> bool:
        stream = self.streams.get(stream_id)
        return stream is None or stream.reset

    # -- responses --------------------------------------------------------------------------------
    def _sending(self, stream_id: int) -> ServerStream:
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open or self.closed:
            raise StreamGone("stream reset" if stream is not None and stream.reset else "stream closed")
        return stream

    def send_headers(self, stream_id: int, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        stream = self._sending(stream_id)
        block = self.encoder.encode(fields)
        self._out.append(fr.header_frames(stream_id, block, end_stream, self.max_outbound_frame_size))
        if end_stream:
            self.table.local_end(stream)

    def sendable(self, stream_id: int) -> int:
        """How many body bytes `stream_id` may send now (the smaller of its window and the
        connection's); StreamGone when it can send no more."""
        stream = self._sending(stream_id)
        window = min(stream.send_window, self.send_window)
        return window if window > 0 else 0

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Send `data` (within `sendable()`), cut into frames of the client's maximum size."""
        stream = self._sending(stream_id)
        size = len(data)
        if size > stream.send_window or size > self.send_window:
            raise StreamGone("a send beyond the client's window")
        stream.send_window -= size
        self.send_window -= size
        flags = _END_STREAM if end_stream else 0
        limit = self.max_outbound_frame_size
        if size <= limit:
            self._out.append(_frame(_DATA, flags, stream_id, data))
            frames = 1
        else:
            frames = 0
            for start in range(0, size, limit):
                last = start + limit >= size
                self._out.append(_frame(_DATA, flags if last else 0, stream_id, data[start : start + limit]))
                frames += 1
        self.guard.data_frames_sent(frames)
        if end_stream:
            self.table.local_end(stream)

    def end_stream(self, stream_id: int) -> None:
        stream = self._sending(stream_id)
        self._out.append(_frame(_DATA, _END_STREAM, stream_id))
        self.table.local_end(stream)

    def reset(self, stream_id: int, error_code: int) -> None:
        """Reset `stream_id` (a no-op once it is closed); what the client sent is handed back."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._reset(stream_id, stream, error_code)

    def _reset(self, stream_id: int, stream: ServerStream, error_code: int) -> None:
        if stream.closed:
            return
        self.table.close_by_reset(stream_id, stream)
        if not self.closed:
            self._out.append(fr.rst_stream_frame(stream_id, error_code))

    def release(self, stream_id: int, complete: bool) -> None:
        """Whoever served `stream_id` is done. An unfinished response is reset (INTERNAL_ERROR); a
        finished one whose request is still coming is reset with NO_ERROR (RFC 9113 section 8.1),
        so the client stops sending a body nobody reads."""
        stream = self.table.release(stream_id)
        if stream is not None and not stream.closed:
            self._reset(stream_id, stream, NO_ERROR if complete and not stream.local_open else INTERNAL_ERROR)

    def answer(self, stream_id: int, fields: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole small response (a refusal), or a reset when it cannot leave in one go."""
        try:
            if body and self.sendable(stream_id) >= len(body):
                self.send_headers(stream_id, fields, end_stream=False)
                self.send_data(stream_id, body, end_stream=True)
            else:
                self.send_headers(stream_id, fields, end_stream=True)
        except StreamGone:
            pass

    # -- the connection ---------------------------------------------------------------------------
    def go_away(self) -> None:
        """A graceful GOAWAY: streams up to `last_accepted` go on, none is accepted after it."""
        if self.accepting and not self.closed:
            self._graceful_goaway = fr.goaway_frame(self.last_accepted, NO_ERROR)  # (after the frames queued with it)
        self.accepting = False

    def data_to_send(self) -> bytes:
        out = self._out
        if self._graceful_goaway:
            out.append(self._graceful_goaway)
            self._graceful_goaway = b""
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data
