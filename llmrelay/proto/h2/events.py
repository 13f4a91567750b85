"""What the HTTP/2 server connection (`connection`) tells its driver: one event per thing a stream's
server must act on, and the two exceptions of its interface."""

from __future__ import annotations

import msgspec

from llmrelay.proto.h2.request import MalformedRequest
from llmrelay.proto.messages import RequestHead


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
    """`stream_id` was reset (by the client, or by us for its protocol error): whoever serves it must stop."""

    stream_id: int
    error_code: int


class Writable(msgspec.Struct, gc=False):
    """A send window grew: `stream_id`'s, or every stream's when 0."""

    stream_id: int


class PeerGoingAway(msgspec.Struct, gc=False):
    """The client sent GOAWAY: graceful (NO_ERROR, its open streams may still be answered) or not."""

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
