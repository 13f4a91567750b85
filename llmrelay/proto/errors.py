"""Errors at the protocol boundary: each carries what the client should get (or says it is gone)."""

from __future__ import annotations


class RequestRejected(Exception):
    """The request must not be relayed: answer `status` with `message`, then close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


class ClientDisconnected(Exception):
    """The client went away (or stalled past the write timeout) before the exchange ended."""


class InvalidResponseHead(Exception):
    """A response head (from upstream) that this protocol cannot carry; nothing was sent yet."""
