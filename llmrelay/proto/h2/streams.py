"""The state of one HTTP/2 stream on the server side, and the bounded memory of streams gone.

A stream the client opened is `open` both ways; each side closes its half with END_STREAM, and a
RST_STREAM (sent or received) closes both at once (RFC 9113 section 5.1). The connection counts a
stream against SETTINGS_MAX_CONCURRENT_STREAMS until both halves are closed.

Besides its state, a stream keeps its flow-control windows (what we may still send; what the client
may still send before we hand bytes back) and the request body received but not read yet, with the
flow-controlled size of each chunk (padding included), so that the window is handed back only as the
relay reads.
"""

from __future__ import annotations

from collections import deque

from llmrelay.proto.h2.frames import DEFAULT_WINDOW, window_update_frame

REMEMBERED = 1024  # streams whose late frames are dropped quietly (see `QuietStreams`)


class ServerStream:
    """One request's stream (see the module's paragraph)."""

    __slots__ = (
        "remote_open", "local_open", "reset", "ended", "counted", "send_window", "receive_window", "unacked",
        "chunks", "unread", "expected_length", "received_length",
    )

    def __init__(self, ended: bool, send_window: int, receive_window: int) -> None:
        self.remote_open = not ended  # the client may still send DATA (or trailers)
        self.local_open = True  # we may still send
        self.reset = False  # closed by RST_STREAM, sent or received
        self.ended = ended  # the client's END_STREAM arrived (the chunks may still hold the last bytes)
        self.counted = True  # counted among the connection's open streams
        self.send_window = send_window
        self.receive_window = receive_window
        self.unacked = 0  # bytes read by the relay, not handed back to the client yet
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.unread = 0  # flow-controlled bytes held in `chunks`
        self.expected_length: int | None = None  # content-length, when the request gave one
        self.received_length = 0

    @property
    def closed(self) -> bool:
        return not self.remote_open and not self.local_open


class QuietStreams:
    """Streams we reset or refused, newest last: frames the client sent on them before it saw the
    RST_STREAM are dropped without an answer (RFC 9113 section 5.4.2). Bounded: past `REMEMBERED`
    streams the oldest is forgotten, and a very late frame on it is answered with RST_STREAM
    (STREAM_CLOSED), which costs the client nothing."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[int, None] = {}

    def add(self, stream_id: int) -> None:
        ids = self._ids
        ids[stream_id] = None
        if len(ids) > REMEMBERED:
            del ids[next(iter(ids))]

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class StreamTable:
    """A connection's streams: which are open (counted against SETTINGS_MAX_CONCURRENT_STREAMS),
    which were reset (`quiet`), and the request bodies held, handed back to the client's windows as
    the relay reads them. The WINDOW_UPDATE frames owed go to `out`, each once half a window waits
    to be handed back: a small body costs none."""

    __slots__ = ("streams", "quiet", "open_count", "stream_window", "connection_window", "receive_window", "_unacked", "_out")

    def __init__(self, stream_window: int, connection_window: int, out: list[bytes]) -> None:
        self.streams: dict[int, ServerStream] = {}
        self.quiet = QuietStreams()
        self.open_count = 0
        self.stream_window = stream_window  # what each stream may receive before we read it
        self.connection_window = connection_window  # what all of them may, together
        self.receive_window = DEFAULT_WINDOW  # what the client may still send on the connection
        self._unacked = 0  # bytes read (or dropped) on the connection, not handed back yet
        self._out = out

    def open(self, stream_id: int, ended: bool, send_window: int) -> ServerStream:
        stream = self.streams[stream_id] = ServerStream(ended, send_window, self.stream_window)
        self.open_count += 1
        return stream

    def count_closed(self, stream: ServerStream) -> None:
        if stream.counted:
            stream.counted = False
            self.open_count -= 1

    def remote_end(self, stream: ServerStream) -> None:
        stream.ended = True
        stream.remote_open = False
        if not stream.local_open:
            self.count_closed(stream)

    def local_end(self, stream: ServerStream) -> None:
        stream.local_open = False
        if not stream.remote_open:
            self.count_closed(stream)

    def close_by_reset(self, stream_id: int, stream: ServerStream) -> None:
        """RST_STREAM went either way: both halves close, the unread body is dropped and its bytes
        handed back to the connection's window."""
        stream.reset = True
        stream.remote_open = stream.local_open = False
        self.count_closed(stream)
        self.quiet.add(stream_id)
        stream.chunks.clear()
        if stream.unread:
            self.hand_back(stream.unread)
            stream.unread = 0

    def read(self, stream_id: int) -> bytes | None:
        """The next body chunk held for `stream_id` (handed back to the client's windows now), or
        None when none is waiting."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.chunks:
            return None
        data, flow = stream.chunks.popleft()
        if flow:
            stream.unread -= flow
            self.hand_back(flow)
            if stream.remote_open:  # (a stream the client ended needs no more window)
                unacked = stream.unacked + flow
                if unacked >= self.stream_window >> 1:
                    stream.receive_window += unacked
                    self._out.append(window_update_frame(stream_id, unacked))
                    unacked = 0
                stream.unacked = unacked
        return data

    def hand_back(self, flow: int) -> None:
        """`flow` bytes of the connection's window were read or dropped."""
        unacked = self._unacked + flow
        if unacked >= self.connection_window >> 1:
            self.receive_window += unacked
            self._out.append(window_update_frame(0, unacked))
            unacked = 0
        self._unacked = unacked

    def release(self, stream_id: int) -> ServerStream | None:
        """Forget `stream_id` (its server is done); what it still held is handed back."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None and stream.unread:
            self.hand_back(stream.unread)
            stream.unread = 0
        return stream
