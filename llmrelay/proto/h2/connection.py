"""The server side of one HTTP/2 connection, sans-IO: h2's state machine behind the relay's terms.

Bytes in (`receive_data`), stream events out (`Opened`, `Refused`, `Readable`, `Reset`, `Writable`,
`PeerGoingAway`), frames to send out (`data_to_send`). What it adds to h2:

- settings from the config (`[server.http2]` and the head limits) and a connection window opened to
  `connection_window_size` at once;
- the abuse budgets of `guard` checked before h2 parses anything, and every protocol error turned into
  `ConnectionFailed` with the GOAWAY already queued;
- request heads checked and translated (`request`): a malformed one is `Refused`, never `Opened`;
- request bodies kept per stream until the relay reads them, and only then acknowledged to the client
  (WINDOW_UPDATE), so a slow reader slows the client and the memory held is bounded by the windows;
- a graceful GOAWAY that names the last stream actually accepted: h2's own `close_connection` closes
  its state machine at once, which would leave no way to finish the open streams, so that frame is
  written here and h2 goes on serving the streams below it. Any stream opened above it is ignored
  (the GOAWAY tells the client it was not processed) without being seen by anyone.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import h2.events as ev
import msgspec
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from llmrelay.config.schema import Http2Section
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.proto.h2.guard import FrameGuard
from llmrelay.proto.h2.h2state import ServerState, server_configuration
from llmrelay.proto.h2.hpack_codec import Decoder, Encoder
from llmrelay.proto.h2.request import MalformedRequest, decoded_list_limit, request_head
from llmrelay.proto.messages import RequestHead

# hpack logs every decoded field, values included, at DEBUG: a relay run with debug logging would
# write its clients' credentials. Its logger stays above DEBUG (and `hpack_tuning` silences it).
logging.getLogger("hpack").setLevel(logging.INFO)

DEFAULT_WINDOW = 65535  # every window's size before SETTINGS / WINDOW_UPDATE (RFC 9113 section 6.9.2)
NO_ERROR = ErrorCodes.NO_ERROR
CANCEL = ErrorCodes.CANCEL
INTERNAL_ERROR = ErrorCodes.INTERNAL_ERROR
ENHANCE_YOUR_CALM = ErrorCodes.ENHANCE_YOUR_CALM


class Opened(msgspec.Struct, gc=False):
    """A request to serve on `stream_id`."""

    stream_id: int
    head: RequestHead


class Refused(msgspec.Struct, gc=False):
    """A request refused before anyone saw it: answer `error.status` (or reset), and log it."""

    stream_id: int
    error: MalformedRequest


class Readable(msgspec.Struct, gc=False):
    """Body bytes, or the end of the body, arrived for `stream_id`."""

    stream_id: int


class Reset(msgspec.Struct, gc=False):
    """The client reset `stream_id`: whoever serves it must stop."""

    stream_id: int
    error_code: int


class Writable(msgspec.Struct, gc=False):
    """A send window grew: `stream_id`'s, or every stream's when 0."""

    stream_id: int


class PeerGoingAway(msgspec.Struct, gc=False):
    """The client sent GOAWAY: h2 sends nothing more after it, so the connection is over."""

    error_code: int


StreamEvent = Opened | Refused | Readable | Reset | Writable | PeerGoingAway


class ConnectionFailed(Exception):
    """The connection must end; its GOAWAY is queued in `data_to_send()`."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.reason = reason


class StreamGone(Exception):
    """A send on a stream that is closed or reset."""


class _Inbound:
    """One stream's received body: chunks not read yet, with their flow-controlled sizes."""

    __slots__ = ("chunks", "ended", "reset", "unread")

    def __init__(self, ended: bool) -> None:
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.ended = ended  # END_STREAM arrived (the chunks may still hold the last bytes)
        self.reset = False
        self.unread = 0  # flow-controlled bytes held, not yet handed back to the client


class ServerConnection:
    """h2 plus the relay's rules for one client connection (see the module's paragraph)."""

    def __init__(self, http2: Http2Section, limits: HeadLimits, scheme: str, client: tuple[str, int], now: float) -> None:
        self.limits = limits
        self.scheme = scheme
        self.client = client
        list_limit = decoded_list_limit(limits)
        h2c = ServerState(server_configuration())
        h2c.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: http2.max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: http2.initial_window_size,
                SettingCodes.MAX_FRAME_SIZE: http2.max_frame_size,
                SettingCodes.MAX_HEADER_LIST_SIZE: list_limit,
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        h2c.max_inbound_frame_size = http2.max_frame_size
        # HPACK is the relay's own (`hpack_codec`): hpack's costs several times its CPU per request.
        h2c.decoder = Decoder(max_header_list_size=list_limit)  # type: ignore[assignment]
        h2c.encoder = Encoder()  # type: ignore[assignment]
        self.h2 = h2c
        self.guard = FrameGuard(list_limit, now)
        self.streams: dict[int, _Inbound] = {}
        self.last_accepted = 0  # the highest stream id a request was taken (or answered) on
        self.accepting = True
        self.settings_received = False  # the client's preface and first SETTINGS arrived
        self._connection_window = http2.connection_window_size
        self._extra = b""  # frames written here rather than by h2 (the graceful GOAWAY)
        self._dispatch: dict[type[ev.Event], Callable[[Any, list[StreamEvent]], None]] = {
            ev.RequestReceived: self._request,
            ev.DataReceived: self._data,
            ev.StreamEnded: self._ended,
            ev.StreamReset: self._reset,
            ev.WindowUpdated: self._window,
            ev.RemoteSettingsChanged: self._settings,
            ev.ConnectionTerminated: self._terminated,
            ev.TrailersReceived: self._ignore,  # request trailers are dropped (the end comes as StreamEnded)
        }

    def start(self) -> None:
        """Queue our SETTINGS and the connection window's opening."""
        h2c = self.h2
        h2c.initiate_connection()
        if self._connection_window > DEFAULT_WINDOW:
            h2c.increment_flow_control_window(self._connection_window - DEFAULT_WINDOW)

    # -- input ------------------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> list[StreamEvent]:
        """The events `data` brings; ConnectionFailed when the connection must end."""
        problem = self.guard.check(data, now)
        if problem is not None:
            self.fail(ENHANCE_YOUR_CALM, problem)
        try:
            h2_events = self.h2.receive_data(data)
        except ProtocolError as exc:  # h2 queued its GOAWAY (but for a wrong preface)
            if self.h2.state_machine.state is not ConnectionState.CLOSED:
                self._close(exc.error_code)
            raise ConnectionFailed(int(exc.error_code), str(exc) or type(exc).__name__) from None
        out: list[StreamEvent] = []
        dispatch = self._dispatch
        for event in h2_events:
            handle = dispatch.get(type(event))
            if handle is not None:
                handle(event, out)
        return out

    def fail(self, error_code: int, reason: str) -> None:
        """End the connection with GOAWAY(`error_code`); raises ConnectionFailed."""
        self._close(error_code)
        raise ConnectionFailed(int(error_code), reason)

    def _close(self, error_code: int) -> None:
        try:
            self.h2.close_connection(error_code, last_stream_id=self.last_accepted)
        except ProtocolError:
            pass  # already closed: its GOAWAY went out before

    def _request(self, event: ev.RequestReceived, out: list[StreamEvent]) -> None:
        stream_id = event.stream_id
        if not self.accepting:
            # Above the GOAWAY's last stream: never served, and ignored (RFC 9113 section 6.8) rather
            # than reset, since the GOAWAY already tells the client to retry it elsewhere; some
            # clients (httpcore) fail a request whose RST_STREAM they read before that GOAWAY.
            return
        self.last_accepted = stream_id
        ended = event.stream_ended is not None
        try:
            head = request_head(event.headers, ended, self.scheme, self.client, self.limits)
        except MalformedRequest as exc:
            out.append(Refused(stream_id, exc))
            self.streams[stream_id] = _Inbound(ended)
            return
        self.streams[stream_id] = _Inbound(ended)
        out.append(Opened(stream_id, head))

    def _data(self, event: ev.DataReceived, out: list[StreamEvent]) -> None:
        stream_id = event.stream_id
        flow = event.flow_controlled_length or 0
        inbound = self.streams.get(stream_id)
        if inbound is None or inbound.reset:
            if flow:
                self.h2.acknowledge_received_data(flow, stream_id)  # nobody reads it: hand it back now
            return
        data = event.data or b""
        if data or flow:
            inbound.chunks.append((data, flow))
            inbound.unread += flow
        out.append(Readable(stream_id))

    def _ended(self, event: ev.StreamEnded, out: list[StreamEvent]) -> None:
        inbound = self.streams.get(event.stream_id)
        if inbound is not None:
            inbound.ended = True
            out.append(Readable(event.stream_id))

    def _reset(self, event: ev.StreamReset, out: list[StreamEvent]) -> None:
        inbound = self.streams.get(event.stream_id)
        if inbound is not None and not inbound.reset:
            self._drop_body(event.stream_id, inbound)
            out.append(Reset(event.stream_id, int(event.error_code or 0)))

    def _window(self, event: ev.WindowUpdated, out: list[StreamEvent]) -> None:
        out.append(Writable(event.stream_id or 0))

    def _settings(self, event: ev.RemoteSettingsChanged, out: list[StreamEvent]) -> None:
        self.settings_received = True
        changed = event.changed_settings
        if SettingCodes.INITIAL_WINDOW_SIZE in changed or SettingCodes.MAX_FRAME_SIZE in changed:
            out.append(Writable(0))

    def _terminated(self, event: ev.ConnectionTerminated, out: list[StreamEvent]) -> None:
        self.accepting = False
        out.append(PeerGoingAway(int(event.error_code or 0)))

    def _ignore(self, event: ev.Event, out: list[StreamEvent]) -> None:
        pass

    # -- request bodies ---------------------------------------------------------------------------
    def read(self, stream_id: int) -> bytes | None:
        """The next body chunk received on `stream_id` (handed back to the client's window now), or
        None when none is waiting."""
        inbound = self.streams.get(stream_id)
        if inbound is None or not inbound.chunks:
            return None
        data, flow = inbound.chunks.popleft()
        if flow:
            inbound.unread -= flow
            self._acknowledge(flow, stream_id)
        return data

    def body_ended(self, stream_id: int) -> bool:
        """Whether the client ended its side and every chunk was read."""
        inbound = self.streams.get(stream_id)
        return inbound is None or (inbound.ended and not inbound.chunks)

    def was_reset(self, stream_id: int) -> bool:
        inbound = self.streams.get(stream_id)
        return inbound is None or inbound.reset

    def _acknowledge(self, flow: int, stream_id: int) -> None:
        try:
            self.h2.acknowledge_received_data(flow, stream_id)
        except ProtocolError:
            pass  # the connection is closed: nothing more to hand back

    def _drop_body(self, stream_id: int, inbound: _Inbound) -> None:
        inbound.reset = True
        inbound.chunks.clear()
        if inbound.unread:
            self._acknowledge(inbound.unread, stream_id)
            inbound.unread = 0

    # -- responses --------------------------------------------------------------------------------
    def send_headers(self, stream_id: int, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        try:
            self.h2.send_headers(stream_id, fields, end_stream=end_stream)
        except (StreamClosedError, ProtocolError) as exc:
            raise StreamGone(str(exc)) from None

    def sendable(self, stream_id: int) -> int:
        """How many body bytes `stream_id` may send now (the smaller of its window and the
        connection's); StreamGone when it can send no more."""
        inbound = self.streams.get(stream_id)
        if inbound is None or inbound.reset:
            raise StreamGone("stream reset")
        try:
            return self.h2.local_flow_control_window(stream_id)
        except (StreamClosedError, ProtocolError) as exc:
            raise StreamGone(str(exc)) from None

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Send `data` (within `sendable()`), cut into frames of the client's maximum size."""
        h2c = self.h2
        size = len(data)
        limit = h2c.max_outbound_frame_size
        try:
            if size <= limit:
                h2c.send_data(stream_id, data, end_stream=end_stream)
                frames = 1
            else:
                view = memoryview(data)
                frames = 0
                for start in range(0, size, limit):
                    last = start + limit >= size
                    h2c.send_data(stream_id, view[start : start + limit], end_stream=end_stream and last)
                    frames += 1
        except (StreamClosedError, ProtocolError) as exc:
            raise StreamGone(str(exc)) from None
        self.guard.data_frames_sent(frames)

    def end_stream(self, stream_id: int) -> None:
        try:
            self.h2.end_stream(stream_id)
        except (StreamClosedError, ProtocolError) as exc:
            raise StreamGone(str(exc)) from None

    def reset(self, stream_id: int, error_code: int) -> None:
        """Reset `stream_id` (a no-op once it is closed); what the client sent is handed back."""
        inbound = self.streams.get(stream_id)
        if inbound is not None and not inbound.reset:
            self._drop_body(stream_id, inbound)
        self._reset_quietly(stream_id, error_code)

    def _reset_quietly(self, stream_id: int, error_code: int) -> None:
        try:
            self.h2.reset_stream(stream_id, error_code)
        except (StreamClosedError, ProtocolError, KeyError):
            pass

    def release(self, stream_id: int, complete: bool) -> None:
        """Whoever served `stream_id` is done. An unfinished response is reset (INTERNAL_ERROR); a
        finished one whose request is still coming is reset with NO_ERROR (RFC 9113 section 8.1),
        so the client stops sending a body nobody reads."""
        inbound = self.streams.pop(stream_id, None)
        if inbound is None:
            return
        if not complete:
            if not inbound.reset:
                self._drop_body(stream_id, inbound)
                self._reset_quietly(stream_id, INTERNAL_ERROR)
            return
        if not inbound.ended and not inbound.reset:
            self._drop_body(stream_id, inbound)
            self._reset_quietly(stream_id, NO_ERROR)
        elif inbound.unread:
            self._acknowledge(inbound.unread, stream_id)

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
        if not self.accepting:
            return
        self.accepting = False
        frame = GoAwayFrame(stream_id=0, last_stream_id=self.last_accepted, error_code=NO_ERROR)
        self._extra += frame.serialize()

    def data_to_send(self) -> bytes:
        data = self.h2.data_to_send()
        if self._extra:
            data, self._extra = data + self._extra, b""
        return data
