"""What every protocol shares: a parsed request head, and the phases a response goes through.

The response side is a small state machine (`ResponsePhase`, moved by `ResponseEvent`s through the
`TRANSITIONS` table): headers, then body chunks, then the end, or an abort at any point. Each
protocol's server keeps one per exchange; the table is the only authority on what may come next.
"""

from __future__ import annotations

import enum

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


# (phase, event) -> next phase. A missing pair is an illegal move (a head after a head, a body before
# the head or after the end, an end without a head). Aborting a response that already ended changes
# nothing, so an abort is always safe to call.
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
