"""One HTTP/2 connection to a provider (`H2Connection`), carrying requests as `h2stream.H2Stream`s.

The h2 library is the state machine (bytes in, events out, frames queued); this module is its trio
glue, shaped for the pool's accounting rather than for generality:

- One reader task per connection (a trio system task: the pool has no nursery) feeds received bytes
  to h2 and hands each event to its stream: the response head, body bytes, trailers, the end, a
  reset. No task per stream: a request's own task sends its request and reads its response.
- Sending has no task: whoever queued frames calls `flush()`; when another task is already sending,
  the bytes are left to it (it loops until nothing is queued), so concurrent requests share writes.
  The reader never sends (its rare frames, acknowledgements and resets, leave from a task of their
  own), so it keeps reading however long a large request body takes to leave.
  A flush runs shielded from cancellation, bounded by the write timer instead: a write torn by a
  cancel scope would corrupt every stream of the connection.
- Stream places are counted by `reserved` alone, a plain integer changed only in synchronous code
  (`open_stream()` and `H2Stream.release()`), once each. So cancellation anywhere cannot make the
  count drift (the failure of httpcore #1022: "Max outbound streams is 100, 100 open" with nothing
  open). A stream released unfinished is reset (RST_STREAM CANCEL), which also closes it for h2.
- Flow control: the body bytes a response buffers are acknowledged (WINDOW_UPDATE, batched by h2)
  only as `read_body()` hands them on, so an unread response holds at most `STREAM_WINDOW` bytes. The
  connection window is the sum of the stream windows, so one slow reader never stalls the others.
  A request body is sent no faster than the server's windows allow.
- GOAWAY: the connection takes no new stream; streams up to the GOAWAY's last-stream-id finish,
  those above it fail as `unprocessed` (the server never saw them: the pool sends them again on
  another connection). h2 treats any received GOAWAY as the end of the connection and would refuse
  the frames of the streams still finishing, even those that came in the same read as the GOAWAY,
  so `_ClientState` puts its state machine back to open right there, while streams may finish.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import trio

from llmrelay.io.timers import TimerReason, TimerWheel
from llmrelay.io.transport import BrokenTransport, Transport
from llmrelay.proto.messages import Headers
from llmrelay.upstream.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from llmrelay.upstream.h2stream import SEND_HIGH_WATER, H2Stream

STREAM_WINDOW = 256 * 1024  # receive window per stream: what one unread response may buffer
MAX_STREAMS = 100  # streams per connection, whatever more the server allows
CONNECTION_WINDOW = STREAM_WINDOW * MAX_STREAMS
LAST_USABLE_ID = 2**31 - 1 - 2 * MAX_STREAMS  # stream ids run out at 2**31: retire the connection first
_DEFAULT_WINDOW = 65535
_WRITE = TimerReason.WRITE
_CANCEL = h2.errors.ErrorCodes.CANCEL
_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM


# How many closed streams' endings h2 remembers per connection (to tell a late frame on a closed stream
# from one on a stream that never was): enough for frames still in flight, not a whole history.
CLOSED_STREAMS_KEPT = 1024


class _ClientState(h2.connection.H2Connection):
    """h2's connection, except that a graceful GOAWAY leaves it open for the streams it lets finish
    (RFC 9113 6.8). This must happen inside `receive_data()`: the frames of those streams may follow
    the GOAWAY in the same bytes, and h2 would take them for a protocol error. It remembers how the
    last `CLOSED_STREAMS_KEPT` streams closed (h2 keeps 65,536: megabytes per long-lived connection)."""

    MAX_CLOSED_STREAMS = CLOSED_STREAMS_KEPT

    def _receive_goaway_frame(
        self, frame: hyperframe.frame.GoAwayFrame
    ) -> tuple[list[hyperframe.frame.Frame], list[h2.events.Event]]:
        result = super()._receive_goaway_frame(frame)
        last = frame.last_stream_id
        if frame.error_code == 0 and any(
            stream_id <= last and stream.open for stream_id, stream in self.streams.items() if stream_id % 2
        ):
            self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return result


class H2Connection:
    """An HTTP/2 connection over a transport whose TLS handshake selected "h2"."""

    def __init__(
        self,
        transport: Transport,
        wheel: TimerWheel,
        write_timeout: float,
        on_change: Callable[[H2Connection], None],
    ) -> None:
        self.transport = transport
        self.wheel = wheel
        self.write_timeout = write_timeout
        self.on_change = on_change  # capacity freed, going away, or closed: the pool looks again
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = _ClientState(config)
        self.streams: dict[int, H2Stream] = {}
        self.blocked: set[H2Stream] = set()  # streams waiting for send window
        self.reserved = 0  # stream places taken (opened or about to be): the one count that matters
        self.max_streams = 1  # until the server's SETTINGS say more
        self.ready = False
        self.going_away = False
        self.closed = False
        self.error: UpstreamError | None = None
        self.idle_since = 0.0
        self.streams_opened = 0
        self._queued = bytearray()
        self._sending = False
        self._drained = trio.lowlevel.ParkingLot()
        self._settled = trio.Event()  # the server's first SETTINGS arrived, or the connection failed
        self._write_timer = wheel.timer(self._write_expired)

    # -- setup -------------------------------------------------------------------------------------------
    async def start(self, timeout: float) -> None:
        """Send the preface and settings, start the reader, and wait for the server's SETTINGS (its
        stream limit is known before a stream is opened)."""
        state = self.h2
        codes = h2.settings.SettingCodes
        state.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                codes.ENABLE_PUSH: 0,
                codes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                codes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                codes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        try:  # (some servers refuse the connection when this setting is present at all)
            del state.local_settings[codes.ENABLE_CONNECT_PROTOCOL]
        except KeyError:
            pass
        state.initiate_connection()
        state.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        trio.lowlevel.spawn_system_task(self._read_loop, name="llmrelay h2 upstream reader")
        await self.flush()
        with trio.move_on_after(timeout):
            await self._settled.wait()
        if self.error is not None:
            raise UpstreamConnectError(f"HTTP/2 connection setup failed: {self.error.message}")
        if not self.ready:
            self.close()
            raise UpstreamTimeout(f"no HTTP/2 settings from the upstream within {timeout:g} s")

    # -- places --------------------------------------------------------------------------------------------
    def available(self) -> bool:
        return (
            self.ready
            and not self.going_away
            and not self.closed
            and self.reserved < self.max_streams
            and self.h2.highest_outbound_stream_id < LAST_USABLE_ID
        )

    def open_stream(self) -> H2Stream:
        """Take a stream place (the caller checked `available()`; nothing awaits in between)."""
        self.reserved += 1
        self.streams_opened += 1
        return H2Stream(self, self.wheel)

    def stream_released(self) -> None:
        if self.h2.highest_outbound_stream_id >= LAST_USABLE_ID:
            self.going_away = True  # (stream ids nearly used up: retire it like a GOAWAY would)
        if self.reserved == 0:
            self.idle_since = monotonic()
            if self.going_away and not self.closed:
                self.close()
                return
        self.on_change(self)

    # -- sending ---------------------------------------------------------------------------------------------
    def _take_output(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self._queued += data

    def queued(self) -> int:
        self._take_output()
        return len(self._queued)

    def reset(self, stream_id: int) -> None:
        """Reset a stream h2 still has open (queued; sent by the next flush)."""
        if self.closed:
            return
        stream = self.h2.streams.get(stream_id)
        if stream is None or stream.closed:
            return
        try:
            self.h2.reset_stream(stream_id, _CANCEL)
        except h2.exceptions.ProtocolError:  # (the connection is ending: nothing to reset)
            pass

    def acknowledge_nowait(self, stream_id: int, size: int) -> None:
        if not self.closed:
            try:
                self.h2.acknowledge_received_data(size, stream_id)
            except h2.exceptions.ProtocolError:
                pass

    async def acknowledge(self, stream_id: int, size: int) -> None:
        """Hand `size` received bytes back to the window (h2 batches the WINDOW_UPDATEs)."""
        self.acknowledge_nowait(stream_id, size)
        if self.queued():
            await self.flush()

    async def flush(self) -> None:
        """Send what is queued. One task sends at a time; another task's bytes queued meanwhile are
        sent by the same loop, so a caller that finds a send under way leaves at once."""
        self._take_output()
        if self._sending or not self._queued or self.closed:
            return
        self._sending = True
        try:
            with trio.CancelScope(shield=True):
                while self._queued and not self.closed:
                    data = bytes(self._queued)
                    self._queued.clear()
                    await self.transport.send_all(data, self._write_timer, self.write_timeout)
                    if self._drained:
                        self._drained.unpark_all()
                    self._take_output()
        except BrokenTransport as exc:
            if self._write_timer.fired is _WRITE:
                self._lost(UpstreamTimeout(f"upstream did not read for {self.write_timeout:g} s"))
            else:
                self._lost(UpstreamProtocolError(f"upstream HTTP/2 connection failed (request): {exc}"))
        finally:
            self._sending = False
            if self._drained:
                self._drained.unpark_all()

    async def drain(self, high_water: int = SEND_HIGH_WATER - 1) -> None:
        """Flush, and while another task is sending, wait until at most `high_water` bytes are queued."""
        await self.flush()
        while self._sending and len(self._queued) > high_water and not self.closed:
            await self._drained.park()

    def flush_soon(self) -> None:
        """Flush from a synchronous caller (an interrupt): in a task of its own, rare by design."""
        if not self._sending and not self.closed and self.queued():
            trio.lowlevel.spawn_system_task(self._flush_quietly, name="llmrelay h2 upstream flush")

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except Exception:  # (a system task must never raise; a failed flush already closed the connection)
            pass

    def _write_expired(self, _reason: TimerReason) -> None:
        self.transport.close()

    # -- receiving -------------------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        error: UpstreamError = UpstreamProtocolError("upstream closed the HTTP/2 connection")
        try:
            while not self.closed:
                data = await self.transport.receive()
                if not data:
                    break
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    error = UpstreamProtocolError(f"malformed upstream HTTP/2: {exc}")
                    self._take_output()  # (h2 queued its GOAWAY: send it on the way out)
                    await self.flush()
                    break
                for event in events:
                    handler = _HANDLERS.get(type(event))
                    if handler is not None:
                        handler(self, event)
                # The reader never sends itself: a flush may carry other tasks' request bodies for
                # long, and a reader stuck sending while the server waits for us to read deadlocks.
                self.flush_soon()
        except Exception as exc:  # a system task must never raise: end the connection instead
            error = UpstreamProtocolError(f"upstream HTTP/2 connection failed: {type(exc).__name__}")
        finally:
            self._lost(error)

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is None:
            return
        status = b""
        headers: Headers = []
        for name, value in event.headers or ():
            if name[:1] == b":":
                if name == b":status":
                    status = bytes(value)
            else:
                headers.append((bytes(name), bytes(value)))
        if len(status) != 3 or not status.isdigit() or status[:1] == b"0":
            self.reset(stream.stream_id)
            stream.fail(UpstreamProtocolError("malformed upstream response: no valid :status"))
            return
        stream.headers = headers
        stream.status = int(status)
        stream._wake()

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id or 0
        size = event.flow_controlled_length or 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.error is not None:
            self.acknowledge_nowait(stream_id, size)  # nobody will read it: the window comes back now
            return
        if event.data:
            stream._chunks.append(event.data)
        stream._unacked += size
        stream._wake()

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is not None:
            stream.trailers = [(bytes(name), bytes(value)) for name, value in event.headers or ()]

    def _on_end(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is None or stream.error is not None:
            return
        if not stream.status:
            stream.fail(UpstreamProtocolError("upstream ended the HTTP/2 stream without a response"))
            return
        stream._ended = True
        stream._wake()

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is None:
            return
        code = event.error_code
        name = code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)
        stream.fail(UpstreamProtocolError(f"upstream reset the HTTP/2 stream ({name})"), code == _REFUSED)

    def _on_window(self, event: h2.events.WindowUpdated) -> None:
        if not self.blocked:
            return
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream in self.blocked:
                stream._wake()
            return
        for stream in list(self.blocked):
            stream._wake()

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        self.max_streams = min(self.h2.remote_settings.max_concurrent_streams, MAX_STREAMS)
        for stream in list(self.blocked):  # (the initial window may have grown)
            stream._wake()
        if not self.ready:
            self.ready = True
            self._settled.set()
        self.on_change(self)

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        last = event.last_stream_id if event.last_stream_id is not None else 0
        code = event.error_code
        graceful = code == _NO_ERROR
        name = code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)
        self.going_away = True
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last:
                stream.fail(UpstreamProtocolError("upstream went away (GOAWAY) before processing the request"), True)
            elif not graceful:
                stream.fail(UpstreamProtocolError(f"upstream ended the HTTP/2 connection ({name})"))
        if self.reserved == 0:
            self.close()
            return
        self.on_change(self)

    # -- the end ------------------------------------------------------------------------------------------------
    def _lost(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        if not self.closed:
            self.closed = True
            self._write_timer.disarm()
            self.transport.close()
            for stream in list(self.streams.values()):
                stream.fail(error)
            self._settled.set()
            if self._drained:
                self._drained.unpark_all()
            self.on_change(self)

    def close(self) -> None:
        """Close now (synchronous): every stream still open fails."""
        self._lost(UpstreamProtocolError("the upstream HTTP/2 connection was closed"))


_HANDLERS: dict[type[h2.events.Event], Callable[[H2Connection, Any], None]] = {
    h2.events.ResponseReceived: H2Connection._on_response,
    h2.events.DataReceived: H2Connection._on_data,
    h2.events.TrailersReceived: H2Connection._on_trailers,
    h2.events.StreamEnded: H2Connection._on_end,
    h2.events.StreamReset: H2Connection._on_reset,
    h2.events.WindowUpdated: H2Connection._on_window,
    h2.events.RemoteSettingsChanged: H2Connection._on_settings,
    h2.events.ConnectionTerminated: H2Connection._on_goaway,
}
