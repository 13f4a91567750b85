"""The protocol-independent request/response interface between an adapter and the relay.

An adapter (HTTP/1.1 today; HTTP/2 and WebSocket later) turns what arrives on a connection into an
`Exchange`: a parsed request head, a body to pull chunk by chunk, and methods to send the response.
The relay sees nothing else of the protocol. The response side is a small state machine
(`ResponsePhase`, moved by `ResponseEvent`s through the `TRANSITIONS` table): headers, then body
chunks, then the end, or an abort at any point.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol

import msgspec

from llmrelay.io.timers import TimerReason

Headers = list[tuple[bytes, bytes]]


class RequestHead(msgspec.Struct):
    method: bytes
    target: bytes  # path and query, as received
    headers: Headers  # names lower-cased, in order
    http_version: bytes
    scheme: str  # of the listener: "http" or "https"
    client: tuple[str, int]
    body_length: int | None  # Content-Length (0 when absent), or None when chunked
    has_body: bool
    keep_alive: bool = True  # False: HTTP/1.0, or `Connection: close`
    expect_continue: bool = False
    websocket: bool = False  # `Upgrade: websocket` with `Connection: upgrade` (HTTP/1.1)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class ResponsePhase(enum.IntEnum):  # (an int's hash: the transition lookup below stays one dict access)
    PENDING = 0  # nothing sent yet: an error status can still be chosen
    STREAMING = 1  # headers sent, body under way
    DONE = 2  # the response ended cleanly
    ABORTED = 3  # the response was cut; the client must not take it as complete


class ResponseEvent(enum.IntEnum):
    HEAD = 0
    BODY = 1
    END = 2
    ABORT = 3


# The only authority on what a response may do next: (phase, event) -> next phase. A missing pair is
# an illegal move (a head after a head, a body before the head or after the end, an end without a
# head). Aborting a response that already ended changes nothing, so an abort is always safe to call.
TRANSITIONS: dict[tuple[ResponsePhase, ResponseEvent], ResponsePhase] = {
    (ResponsePhase.PENDING, ResponseEvent.HEAD): ResponsePhase.STREAMING,
    (ResponsePhase.PENDING, ResponseEvent.ABORT): ResponsePhase.ABORTED,
    (ResponsePhase.STREAMING, ResponseEvent.BODY): ResponsePhase.STREAMING,
    (ResponsePhase.STREAMING, ResponseEvent.END): ResponsePhase.DONE,
    (ResponsePhase.STREAMING, ResponseEvent.ABORT): ResponsePhase.ABORTED,
    (ResponsePhase.DONE, ResponseEvent.ABORT): ResponsePhase.DONE,
    (ResponsePhase.ABORTED, ResponseEvent.ABORT): ResponsePhase.ABORTED,
}


class InvalidPhase(RuntimeError):
    pass


def advance(current: ResponsePhase, event: ResponseEvent) -> ResponsePhase:
    """The phase after `event`, by the table; InvalidPhase when the table has no such move."""
    try:
        return TRANSITIONS[current, event]
    except KeyError:
        raise InvalidPhase(f"a response cannot take {event.name} while {current.name}") from None


ErrorFormat = Callable[[int, str], tuple[Headers, bytes]]


class Exchange(Protocol):
    """One request and its response, as the relay sees it."""

    head: RequestHead
    phase: ResponsePhase
    body_complete: bool
    # How an error this adapter answers by itself (a malformed or oversized body, a body timeout, an
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

    async def end(self, data: bytes = b"") -> None:
        """End the response; `data`, when given, is its last body bytes."""
        ...

    async def abort(self) -> None:
        """End the response uncleanly, so the client cannot mistake it for a complete one."""
        ...


class Refusal(msgspec.Struct, frozen=True):
    """A request the adapter refused before the relay saw it (a head the strict parser refused, or one
    that did not arrive in time): reported so that it gets an access-log line like any other."""

    client: tuple[str, int]
    method: bytes  # b"" when the request line never arrived whole
    target: bytes
    status: int
    outcome: str  # "rejected", "header_timeout"
    duration: float  # seconds


class RequestHandler(Protocol):
    """What an adapter serves its requests with (the relay)."""

    async def __call__(self, exchange: Exchange) -> None: ...

    def refused(self, refusal: Refusal) -> None:
        """Record a request that was refused before it became an exchange."""
        ...
