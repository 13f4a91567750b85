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
