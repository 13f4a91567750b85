"""The protocol-independent request/response interface between a protocol driver and the relay.

A driver (HTTP/1.1 or HTTP/2) turns what arrives on a connection into an `Exchange`: a parsed request
head, a body to pull chunk by chunk, and methods to send the response. The relay sees nothing else of
the protocol. The response phases and their table are sans-IO (`llmrelay.proto.messages`).

A request that opens a byte stream instead of a response body (an HTTP/1.1 `Upgrade: websocket`, an
HTTP/2 extended CONNECT with `:protocol = websocket`, a `CONNECT host:port`) is answered with
`open_tunnel()`: the driver sends the head that opens it (101 on HTTP/1.1 upgrades, 200 otherwise)
and hands back a `Tunnel`, the client's side of the bytes, whatever carries them (the raw
connection, or an HTTP/2 stream's DATA frames).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from llmrelay.io.timers import TimerReason
from llmrelay.proto.messages import Headers, RequestHead, ResponsePhase

ErrorFormat = Callable[[int, str], tuple[Headers, bytes]]


class Tunnel(Protocol):
    """The client's side of an opened tunnel: bytes both ways until either side ends."""

    async def receive(self) -> bytes:
        """The client's next bytes; b"" once it ended its side (or left)."""
        ...

    async def send(self, data: bytes) -> None:
        """Send bytes to the client; ClientDisconnected when it is gone."""
        ...

    async def send_eof(self) -> None:
        """End our side (HTTP/2: END_STREAM; HTTP/1.1: the write half of the connection)."""
        ...

    def close(self) -> None:
        """End the tunnel uncleanly now (HTTP/2: RST_STREAM; HTTP/1.1: close the connection)."""
        ...


class Exchange(Protocol):
    """One request and its response, as the relay sees it."""

    head: RequestHead
    phase: ResponsePhase
    body_complete: bool
    # How an error this driver answers by itself (a malformed or oversized body, a body timeout, an
    # internal error) is written: the relay sets its route's provider shape once it knows the route.
    error_format: ErrorFormat
    timed_out: TimerReason | None  # why the connection's timer cancelled the exchange (BODY, WRITE), if it did

    def close_when_done(self) -> None:
        """Do not reuse the connection after this response (HTTP/1.1: `Connection: close`)."""
        ...

    async def receive_body(self) -> bytes:
        """The next chunk of the request body; b"" once it is complete."""
        ...

    async def send_head(self, status: int, headers: Headers) -> None: ...

    async def flush(self) -> None:
        """Send what is buffered now (a response head waits to leave with the first body bytes)."""
        ...

    async def send_body(self, data: bytes) -> None: ...

    async def end(self, data: bytes = b"", trailers: Headers | None = None) -> None:
        """End the response; `data`, when given, is its last body bytes; `trailers` leave after it
        (HTTP/2 trailing HEADERS; HTTP/1.1 sends them only on a chunked response)."""
        ...

    async def open_tunnel(self, status: int, headers: Headers) -> Tunnel:
        """Answer a request that opens a tunnel (`head.websocket`, or method CONNECT) with `status`
        (101 or 200) and `headers`, and return the client's side of the bytes. The exchange is over
        for the relay when the tunnel ends."""
        ...

    async def abort(self) -> None:
        """End the response uncleanly, so the client cannot mistake it for a complete one."""
        ...


class Refusal(msgspec.Struct, frozen=True):
    """A request the driver refused before the relay saw it (a head the strict parser refused, or one
    that did not arrive in time): reported so that it gets an access-log line like any other."""

    client: tuple[str, int]
    method: bytes  # b"" when the request line never arrived whole
    target: bytes
    status: int
    outcome: str  # "rejected", "header_timeout"
    duration: float  # seconds


class RequestHandler(Protocol):
    """What a driver serves its requests with (the relay)."""

    async def __call__(self, exchange: Exchange) -> None: ...

    def refused(self, refusal: Refusal) -> None:
        """Record a request that was refused before it became an exchange."""
        ...


def plain_error(status: int, message: str) -> tuple[Headers, bytes]:
    """An error in the generic shape, for a request whose route is not known (yet)."""
    body = msgspec.json.encode({"error": {"message": message, "type": "invalid_request_error", "code": status}})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
    ]
    return headers, body
