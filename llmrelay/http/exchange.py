"""The protocol-independent request/response interface between an adapter and the relay.

An adapter (HTTP/1.1 today; HTTP/2 and WebSocket later) turns what arrives on a connection into an
`Exchange`: a parsed request head, a body to pull chunk by chunk, and methods to send the response.
The relay sees nothing else of the protocol. The response side is a small state machine
(`ResponsePhase`): headers, then body chunks, then the end, or an abort at any point.
"""

from __future__ import annotations

import enum
from typing import Protocol

import msgspec

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

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class ResponsePhase(enum.Enum):
    PENDING = "pending"  # nothing sent yet: an error status can still be chosen
    STREAMING = "streaming"  # headers sent, body under way
    DONE = "done"  # the response ended cleanly
    ABORTED = "aborted"  # the response was cut; the client must not take it as complete


_ALLOWED = {
    ResponsePhase.PENDING: {ResponsePhase.STREAMING, ResponsePhase.DONE, ResponsePhase.ABORTED},
    ResponsePhase.STREAMING: {ResponsePhase.STREAMING, ResponsePhase.DONE, ResponsePhase.ABORTED},
    ResponsePhase.DONE: set(),
    ResponsePhase.ABORTED: set(),
}


class InvalidPhase(RuntimeError):
    pass


def advance(current: ResponsePhase, new: ResponsePhase) -> ResponsePhase:
    """Check a response phase transition against the table."""
    if current is ResponsePhase.PENDING or (current is ResponsePhase.STREAMING and new is not ResponsePhase.PENDING):
        return new  # the transitions every response makes
    if new not in _ALLOWED[current]:
        raise InvalidPhase(f"response cannot go from {current.value} to {new.value}")
    return new


class Exchange(Protocol):
    """One request and its response, as the relay sees it."""

    head: RequestHead
    phase: ResponsePhase
    body_complete: bool

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
