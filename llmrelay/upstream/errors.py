"""Upstream failures, each carrying the status the client should get and a message safe to show.

Messages name what failed (connect, proxy, timeout, protocol) and never carry a header value, a key or
a proxy credential.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """An upstream request failed; `status` is what the client gets, `reason` a short log word."""

    status = 502
    reason = "upstream_error"
    counts_against_upstream = True  # False when the fault is local (no free pool slot)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UpstreamConnectError(UpstreamError):
    reason = "connect_failed"


class UpstreamProxyError(UpstreamError):
    reason = "proxy_failed"


class UpstreamProtocolError(UpstreamError):
    reason = "bad_response"


class UpstreamTimeout(UpstreamError):
    status = 504
    reason = "timeout"


class UpstreamPoolFull(UpstreamError):
    status = 503
    reason = "pool_exhausted"
    counts_against_upstream = False
