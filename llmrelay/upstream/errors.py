"""Upstream failures, each carrying the status the client should get and a message safe to show.

Messages name what failed (connect, proxy, timeout, protocol) and never carry a header value, a key or
a proxy credential.
"""

from __future__ import annotations

import httpcore
import socksio.exceptions


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


def _detail(exc: BaseException) -> str:
    """The most telling message in an exception chain (httpcore often wraps an empty one)."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen).strip()
        if text:
            return text[:200]
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def translate(exc: Exception, phase: str, via_proxy: bool = False) -> UpstreamError:
    """Map an httpcore exception raised during `phase` ("request" or "body") to ours.

    With `via_proxy`, a connect failure is the proxy's: the target is reached through it.
    """
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, httpcore.PoolTimeout):
        return UpstreamPoolFull("no upstream connection became free in time")
    if isinstance(exc, httpcore.ConnectTimeout):
        return UpstreamTimeout("timed out connecting to the upstream")
    if isinstance(exc, (httpcore.ReadTimeout, httpcore.WriteTimeout)):
        return UpstreamTimeout(f"upstream timed out ({phase})")
    if isinstance(exc, socksio.exceptions.SOCKSError):
        return UpstreamProxyError(f"SOCKS5 proxy handshake failed: {_detail(exc)}")
    if isinstance(exc, httpcore.ProxyError):
        return UpstreamProxyError(f"upstream proxy refused the connection: {_detail(exc)}")
    if isinstance(exc, httpcore.ConnectError):
        if via_proxy:
            return UpstreamProxyError(f"cannot connect through the upstream proxy: {_detail(exc)}")
        return UpstreamConnectError(f"cannot connect to the upstream: {_detail(exc)}")
    if isinstance(exc, httpcore.UnsupportedProtocol):
        return UpstreamConnectError(f"unsupported upstream URL: {_detail(exc)}")
    if isinstance(exc, httpcore.LocalProtocolError):
        # h11 quotes the offending header value, which may be a key: never pass it on.
        return UpstreamProtocolError("the upstream request could not be encoded")
    if isinstance(exc, httpcore.ProtocolError):
        return UpstreamProtocolError(f"malformed upstream response: {_detail(exc)}")
    if isinstance(exc, (httpcore.NetworkError, OSError)):
        return UpstreamProtocolError(f"upstream connection failed ({phase}): {_detail(exc)}")
    return UpstreamProtocolError(f"upstream failure ({phase}): {type(exc).__name__}")
