"""The handshakes that open a tunnel through an upstream proxy, over a trio stream.

* HTTP `CONNECT host:port` (for https targets behind an `http://` or `https://` proxy): the proxy's
  answer is read by our own strict response parser; anything but a 2xx is the proxy refusing.
* SOCKS5 (RFC 1928, with RFC 1929 username/password): the messages are built and read by `socksio`
  (sans-IO); `socks5h://` lets the proxy resolve the target's name, `socks5://` resolves it here.

A plain-http target behind an HTTP proxy needs no handshake: its requests are forwarded in absolute
form with `Proxy-Authorization` (see `dial`). Errors are `UpstreamProxyError`s whose message never
quotes the proxy's credentials.
"""

from __future__ import annotations

import base64
import ipaddress
import socket

import trio
from socksio import exceptions as socks_errors
from socksio.socks5 import (
    SOCKS5AType,
    SOCKS5AuthMethod,
    SOCKS5AuthMethodsRequest,
    SOCKS5AuthReply,
    SOCKS5Command,
    SOCKS5CommandRequest,
    SOCKS5Reply,
    SOCKS5ReplyCode,
    SOCKS5UsernamePasswordReply,
    SOCKS5UsernamePasswordRequest,
)

from llmrelay.proto.h1.client import parse_response_head
from llmrelay.proto.h1.fields import REASONS
from llmrelay.proto.h1.framing import FramingError
from llmrelay.upstream.errors import UpstreamProxyError

MAX_CONNECT_RESPONSE = 16384


def basic_credentials(username: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


def authority(host: str, port: int) -> bytes:
    """`host:port` as a request target or Host value (an IPv6 address in brackets)."""
    name = host.encode("ascii") if host.isascii() else host.encode("idna")
    return b"[%s]:%d" % (name, port) if b":" in name else b"%s:%d" % (name, port)


class _Reader:
    """Exact reads from a stream, for the handshakes (few bytes, once per connection)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _more(self) -> None:
        try:
            data = await self.stream.receive_some(4096)
        except (trio.BrokenResourceError, OSError) as exc:
            raise UpstreamProxyError(f"upstream proxy connection failed during its handshake: {exc}") from None
        if not data:
            raise UpstreamProxyError("upstream proxy closed the connection during its handshake")
        self.buffer += data

    async def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            await self._more()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    async def until(self, marker: bytes, limit: int) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            if len(self.buffer) > limit:
                raise UpstreamProxyError("upstream proxy sent an oversized handshake answer")
            await self._more()
        end += len(marker)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data


async def _send(stream: trio.abc.Stream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, OSError) as exc:
        raise UpstreamProxyError(f"upstream proxy connection failed during its handshake: {exc}") from None


async def http_connect(stream: trio.abc.Stream, host: str, port: int, credentials: bytes | None) -> None:
    """Open a tunnel to host:port with `CONNECT`; UpstreamProxyError when the proxy refuses."""
    target = authority(host, port)
    head = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (target, target)
    if credentials is not None:
        head += b"Proxy-Authorization: %s\r\n" % credentials
    await _send(stream, head + b"\r\n")
    reader = _Reader(stream)
    answer = await reader.until(b"\r\n\r\n", MAX_CONNECT_RESPONSE)
    try:
        response = parse_response_head(answer[:-4], b"HEAD")  # (no body follows a CONNECT answer we keep)
    except FramingError as exc:
        raise UpstreamProxyError(f"upstream proxy sent a malformed CONNECT answer: {exc}") from None
    if not 200 <= response.status < 300:
        reason = REASONS.get(response.status, b"").decode()
        raise UpstreamProxyError(f"upstream proxy refused the tunnel: {response.status} {reason}".rstrip())
    if reader.buffer:
        raise UpstreamProxyError("upstream proxy sent bytes before the tunnel was used")


async def socks5_connect(
    stream: trio.abc.Stream, host: str, port: int, auth: tuple[str, str] | None, remote_dns: bool
) -> None:
    """Open a SOCKS5 tunnel to host:port; UpstreamProxyError when the proxy refuses or misbehaves."""
    try:
        await _socks5(stream, host, port, auth, remote_dns)
    except socks_errors.SOCKSError as exc:
        raise UpstreamProxyError(f"SOCKS5 proxy handshake failed: {exc or type(exc).__name__}") from None


async def _socks5(stream: trio.abc.Stream, host: str, port: int, auth: tuple[str, str] | None, remote_dns: bool) -> None:
    reader = _Reader(stream)
    method = SOCKS5AuthMethod.USERNAME_PASSWORD if auth is not None else SOCKS5AuthMethod.NO_AUTH_REQUIRED
    await _send(stream, SOCKS5AuthMethodsRequest([method]).dumps())
    chosen = SOCKS5AuthReply.loads(await reader.exactly(2)).method
    if chosen != method:
        raise UpstreamProxyError("SOCKS5 proxy handshake failed: it accepts none of the offered authentication methods")
    if auth is not None:
        username, password = auth
        await _send(stream, SOCKS5UsernamePasswordRequest(username.encode(), password.encode()).dumps())
        if not SOCKS5UsernamePasswordReply.loads(await reader.exactly(2)).success:
            raise UpstreamProxyError("SOCKS5 proxy handshake failed: username and password refused")
    await _send(stream, (await _command(host, port, remote_dns)).dumps())
    head = await reader.exactly(5)  # VER REP RSV ATYP and the first address byte
    atype = head[3:4]
    if atype == SOCKS5AType.IPV4_ADDRESS:
        rest = 4 - 1 + 2
    elif atype == SOCKS5AType.IPV6_ADDRESS:
        rest = 16 - 1 + 2
    elif atype == SOCKS5AType.DOMAIN_NAME:
        rest = head[4] + 2
    else:
        raise UpstreamProxyError("SOCKS5 proxy handshake failed: malformed reply")
    reply = SOCKS5Reply.loads(head + await reader.exactly(rest))
    if reply.reply_code != SOCKS5ReplyCode.SUCCEEDED:
        reason = reply.reply_code.name.lower().replace("_", " ")
        raise UpstreamProxyError(f"SOCKS5 proxy refused the connection: {reason}")
    if reader.buffer:
        raise UpstreamProxyError("SOCKS5 proxy sent bytes before the tunnel was used")


async def _command(host: str, port: int, remote_dns: bool) -> SOCKS5CommandRequest:
    """The CONNECT command for host:port: an address as it is, a name for the proxy to resolve
    (socks5h), or a name resolved here first (socks5)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if remote_dns:
            return SOCKS5CommandRequest(SOCKS5Command.CONNECT, SOCKS5AType.DOMAIN_NAME, host.encode("idna"), port)
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UpstreamProxyError(f"cannot resolve the upstream host {host!r} for the SOCKS5 proxy: {exc}") from None
        address = ipaddress.ip_address(str(infos[0][4][0]))
    if address.version == 4:
        return SOCKS5CommandRequest(SOCKS5Command.CONNECT, SOCKS5AType.IPV4_ADDRESS, address.packed, port)
    return SOCKS5CommandRequest(SOCKS5Command.CONNECT, SOCKS5AType.IPV6_ADDRESS, address.packed, port)
