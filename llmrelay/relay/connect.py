"""Forward-proxy mode: `CONNECT host:port` opens a TCP tunnel to an allowed destination.

Off unless `[server.connect] enabled = true`. A CONNECT request (HTTP/1.1, or a plain HTTP/2 CONNECT)
is judged in this order, each refusal answered and the connection closed:

| check                                                   | refusal |
|---------------------------------------------------------|---------|
| tunnels enabled                                         | 405     |
| a relay key in Proxy-Authorization (when `auth = true`) | 407 with Proxy-Authenticate (Bearer and Basic) |
| the target is a strict `host:port`                      | 400     |
| it matches the allow-list (`proto.authority`)           | 403     |
| a host name resolves to public addresses only           | 403 (502 when it does not resolve) |
| the connection is made within `connect_timeout`         | 502, 504 when it times out |

The key is a `Bearer` token or the password of `Basic` credentials, compared in constant time with
the keys of `connect_keys`. The tunnel reaches one of the addresses that were checked, never the name
looked up a second time, also through the `proxy_url` of `via_endpoint` (an HTTP CONNECT or SOCKS5
proxy, given the address), so a name that resolves elsewhere the next time cannot reach inside.
Then `200` opens the tunnel, pumped by `tunnel` under `idle_timeout`, registered with the
`ResponseRegistry` so the drain deadline cuts it. One access-log line per tunnel: the destination
(as the path), the address reached (as the upstream), bytes each way, duration, how it ended.
Neither the Proxy-Authorization value nor any part of it is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import socket
import ssl

import trio

from llmrelay.config.resolved import RelayConfig
from llmrelay.config.schema import ConnectSection
from llmrelay.io.logsafe import one_line
from llmrelay.io.transport import SocketTransport, StreamTransport, Transport
from llmrelay.proto.authority import AllowList, Authority, AuthorityError, IPAddress, address_refusal, parse_authority
from llmrelay.proto.messages import Headers, ResponsePhase
from llmrelay.relay import accesslog
from llmrelay.relay.credentials import KeyRing
from llmrelay.relay.runtime import RelayRuntime
from llmrelay.relay.streams import ActiveResponse, ResponseRegistry
from llmrelay.relay.tunnel import TunnelPump, refuse
from llmrelay.server.exchange import Exchange, plain_error
from llmrelay.upstream.dial import ProxyURL, connect_failure, ssl_context
from llmrelay.upstream.errors import UpstreamError, UpstreamProxyError
from llmrelay.upstream.proxies import basic_credentials, http_connect, socks5_connect

log = logging.getLogger("llmrelay.relay")

# Seconds the other direction may go on after one side closed its half of the tunnel.
CONNECT_LINGER = 5.0
CHALLENGES: Headers = [
    (b"proxy-authenticate", b'Bearer realm="llmrelay"'),
    (b"proxy-authenticate", b'Basic realm="llmrelay"'),
]
ALLOWED_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


def proxy_key(headers: Headers) -> bytes | None:
    """The relay key in the one Proxy-Authorization field: a Bearer token, or the password of Basic
    credentials (`user:key`, any user). None when absent, repeated or malformed."""
    values = [value for name, value in headers if name == b"proxy-authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    scheme = scheme.lower()
    if scheme == b"bearer":
        return token or None
    if scheme == b"basic":
        try:
            decoded = base64.b64decode(token, validate=True)
        except binascii.Error:
            return None
        _, colon, password = decoded.partition(b":")
        return password if colon and password else None
    return None


class ConnectPolicy:
    """`[server.connect]` of one config generation, compiled: keys, allow-list, the proxy to use."""

    __slots__ = ("section", "keys", "allow", "via", "via_name", "via_credentials", "via_tls")

    def __init__(self, config: RelayConfig) -> None:
        section = config.server.connect
        self.section: ConnectSection = section
        self.keys = KeyRing(config.connect_keys)
        self.allow = AllowList(section.allow) if section.enabled else AllowList([])
        self.via: ProxyURL | None = None
        self.via_name = "-"
        self.via_credentials: bytes | None = None
        self.via_tls: ssl.SSLContext | None = None
        if section.enabled and section.via_endpoint is not None:
            for endpoint in config.endpoints:
                # The endpoint's first upstream says how it leaves the network (its proxy_url);
                # without one, tunnels go direct.
                if endpoint.name == section.via_endpoint and endpoint.upstreams:
                    upstream = endpoint.upstreams[0]
                    self.via_name = endpoint.name
                    if upstream.proxy_url is not None:
                        self.via = proxy = ProxyURL(upstream.proxy_url)
                        if proxy.auth is not None and proxy.scheme in ("http", "https"):
                            self.via_credentials = basic_credentials(*proxy.auth)
                        if proxy.scheme == "https":
                            self.via_tls = ssl_context(upstream.proxy_ca_file)


class Refused(Exception):
    """A CONNECT that is not opened: the status and message it is answered with."""

    def __init__(self, status: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome


class ConnectTunnels:
    """Serves the CONNECT requests of one worker (`Relay` holds one)."""

    def __init__(self, responses: ResponseRegistry) -> None:
        self._responses = responses
        self._policy: tuple[RelayRuntime, ConnectPolicy] | None = None

    def policy(self, runtime: RelayRuntime) -> ConnectPolicy:
        cached = self._policy
        if cached is None or cached[0] is not runtime:
            cached = self._policy = (runtime, ConnectPolicy(runtime.config))
        return cached[1]

    async def serve(self, exchange: Exchange, runtime: RelayRuntime, record: accesslog.AccessRecord) -> None:
        policy = self.policy(runtime)
        record.endpoint = policy.via_name
        active = ActiveResponse(exchange)
        session = trio.CancelScope()
        active.interrupt = session.cancel  # the drain deadline ends the tunnel, wherever it is
        self._responses.add(active)
        try:
            with session:
                try:
                    await self._open(exchange, policy, record)
                except Refused as refusal:
                    await self._refuse(exchange, refusal, record)
            if active.cut_by_drain:
                record.outcome = "cut_at_drain_deadline"
                if exchange.phase is ResponsePhase.PENDING:
                    cut = Refused(503, "the relay is shutting down and its drain deadline passed", record.outcome)
                    await self._refuse(exchange, cut, record)
        finally:
            self._responses.discard(active)

    async def _refuse(self, exchange: Exchange, refusal: Refused, record: accesslog.AccessRecord) -> None:
        record.outcome = refusal.outcome
        headers, body = plain_error(refusal.status, refusal.message)
        if refusal.status == 407:
            headers += CHALLENGES
        elif refusal.status == 405:
            headers.append((b"allow", ALLOWED_METHODS))
        await refuse(exchange, refusal.status, headers, body, record)

    async def _open(self, exchange: Exchange, policy: ConnectPolicy, record: accesslog.AccessRecord) -> None:
        section = policy.section
        head = exchange.head
        if not section.enabled:
            raise Refused(405, "CONNECT is not enabled on this relay", "connect_disabled")
        if section.auth and policy.keys.identify(proxy_key(head.headers)) is None:
            raise Refused(407, "a relay key is required in Proxy-Authorization", "bad_relay_key")
        try:
            destination = parse_authority(head.target)
        except AuthorityError as exc:
            raise Refused(400, f"malformed CONNECT target: {exc}", "rejected") from None
        if not policy.allow.allows(destination):
            raise Refused(403, "this destination is not allowed", "destination_refused")
        transport = await self._connect(policy, destination, record)
        try:
            record.status = 200
            record.streamed = True
            tunnel = await exchange.open_tunnel(200, [])
            pump = TunnelPump(tunnel, transport, section.idle_timeout, CONNECT_LINGER)
            try:
                record.outcome = (await pump.run()).value
            finally:
                record.bytes_in += pump.bytes_up
                record.bytes_out += pump.bytes_down
        finally:
            transport.close()

    async def _connect(self, policy: ConnectPolicy, destination: Authority, record: accesslog.AccessRecord) -> Transport:
        """A connection to a checked address of `destination` (direct, or through the via proxy)."""
        with trio.move_on_after(policy.section.connect_timeout):
            addresses = await checked_addresses(destination)
            failures: list[str] = []
            for address in addresses:
                record.upstream = str(Authority(str(address), destination.port, address))
                try:
                    return await self._dial(policy, address, destination.port)
                except UpstreamError as exc:
                    failures.append(exc.message)
                except OSError as exc:
                    failures.append(connect_failure(exc))
            reasons = one_line("; ".join(failures))
            log.warning("CONNECT tunnel failed rid=%s destination=%s: %s", record.request_id, destination, reasons)
            raise Refused(502, f"cannot connect to {destination}", "connect_failed")
        raise Refused(504, f"timed out connecting to {destination}", "timeout")

    async def _dial(self, policy: ConnectPolicy, address: IPAddress, port: int) -> Transport:
        proxy = policy.via
        if proxy is None:
            return _transport(await trio.open_tcp_stream(str(address), port))
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(proxy.host, proxy.port)
        except OSError as exc:
            raise UpstreamProxyError(f"cannot connect to the proxy: {connect_failure(exc)}") from None
        try:
            if policy.via_tls is not None:
                tls = trio.SSLStream(stream, policy.via_tls, server_hostname=proxy.host, https_compatible=True)
                try:
                    await tls.do_handshake()
                except (trio.BrokenResourceError, OSError) as exc:
                    raise UpstreamProxyError(f"TLS handshake with the proxy failed: {exc.__cause__ or exc}") from None
                stream = tls
            if proxy.scheme.startswith("socks5"):
                await socks5_connect(stream, str(address), port, proxy.auth, False)
            else:
                await http_connect(stream, str(address), port, policy.via_credentials)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return _transport(stream)


async def checked_addresses(destination: Authority) -> list[IPAddress]:
    """The addresses a tunnel to `destination` may use: its own IP literal (allow-listed as such), or
    every address its name resolves to, all of them public (Refused 403 otherwise, 502 when the name
    does not resolve)."""
    if destination.address is not None:
        return [destination.address]
    host = destination.host
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
        raise Refused(403, "this destination resolves to a loopback address", "destination_refused")
    try:
        infos = await trio.socket.getaddrinfo(host, destination.port, type=socket.SOCK_STREAM)
    except OSError:
        raise Refused(502, f"cannot resolve {host}", "resolve_failed") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        reason = address_refusal(address)
        if reason is not None:
            raise Refused(403, f"this destination resolves to a {reason} address", "destination_refused")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise Refused(502, f"cannot resolve {host}", "resolve_failed")
    return addresses


def _transport(stream: trio.abc.Stream) -> Transport:
    """Our transport over a connected stream: the plain socket itself (the fast path), or the TLS
    stream of an https proxy."""
    if isinstance(stream, trio.SocketStream):
        sock = socket.socket(fileno=stream.socket.detach())
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SocketTransport(sock)
    inner = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    assert isinstance(inner, trio.SocketStream)
    return StreamTransport(stream, inner.socket)
