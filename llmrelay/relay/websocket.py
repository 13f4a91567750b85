"""Relaying a WebSocket: the client's upgrade goes to an upstream as an HTTP/1.1 upgrade on a fresh
connection, and once the upstream switched protocols the bytes are pumped both ways unchanged.

The handler brings a request here after routing and the relay key check, so a WebSocket is
authenticated like any request: the relay key never leaves, the provider key is injected the
provider's way, and with no `api_key` the client's credential passes through. Then:

* the endpoint may refuse WebSockets (`allow_websocket = false`): 403 in the provider's shape;
* an upstream is chosen like any request's, and a failed connect or a 429/5xx answer moves to the
  next choice (`attempts`), since nothing has reached the client yet;
* the connection is made by the upstream's `Dialer` (direct or through its `proxy_url`, TLS for
  https) and never pooled: after a 101 it is no longer HTTP;
* the upstream's answer is read with our strict response parser: a 101 must complete the handshake
  (`ws_handshake.upgrade_problem`, else 502) and opens the client's tunnel; any other answer (a
  refused upgrade: 401, 403, 426...) is relayed as it is, status, headers and body.

An HTTP/2 client asks with an extended CONNECT (RFC 8441): it has no Sec-WebSocket-Key, so the relay
makes one for the upstream, checks the upstream's accept value itself, and answers the client 200.

The session is one access-log line (status 101 or 200, bytes each way, its duration and how it
ended). It is registered with the worker's `ResponseRegistry`, so a drain keeps it open until the
drain deadline and then cuts it.
"""

from __future__ import annotations

import logging
import math
import os
import time

import trio

from llmrelay.io.logsafe import one_line
from llmrelay.io.transport import BrokenTransport, Transport
from llmrelay.proto.h1.client import MAX_RESPONSE_HEAD, ResponseHead, parse_response_head, request_head
from llmrelay.proto.h1.framing import BodyDecoder, FramingError
from llmrelay.proto.errors import InvalidResponseHead
from llmrelay.proto.messages import RequestHead, ResponsePhase
from llmrelay.proto.ws_handshake import client_answer_headers, client_key, new_key, upgrade_problem, upgrade_request_headers
from llmrelay.relay import accesslog
from llmrelay.relay.attempts import JUDGED, KEY_REFUSED, RETRY_STATUSES, Attempts, upstream_head
from llmrelay.relay.credentials import without_subprotocol_key
from llmrelay.relay.headers import client_response_headers
from llmrelay.relay.observer import UpstreamObserver
from llmrelay.relay.providers import error_response
from llmrelay.relay.runtime import EndpointRuntime
from llmrelay.relay.streams import ActiveResponse, ResponseRegistry
from llmrelay.relay.tunnel import TunnelPump, refuse
from llmrelay.relay.upstreams import UpstreamRuntime
from llmrelay.server.exchange import Exchange
from llmrelay.upstream.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout

log = logging.getLogger("llmrelay.relay")

# Seconds the other direction may go on after one side closed (the rest of a close handshake).
WEBSOCKET_LINGER = 2.0


class Handshake:
    """An upstream connection whose answer to the upgrade arrived: its head, and the bytes after it."""

    __slots__ = ("transport", "head", "rest")

    def __init__(self, transport: Transport, head: ResponseHead, rest: bytes) -> None:
        self.transport = transport
        self.head = head
        self.rest = rest


class WebSocketRelay:
    """Relays the WebSocket requests of one worker (`Relay` holds one)."""

    def __init__(self, observer: UpstreamObserver, responses: ResponseRegistry) -> None:
        self._observer = observer
        self._responses = responses

    async def relay(
        self,
        exchange: Exchange,
        endpoint: EndpointRuntime,
        path: str,
        query: str,
        record: accesslog.AccessRecord,
        relay_key: int | None,
    ) -> None:
        head = exchange.head
        provider = endpoint.provider
        if not endpoint.config.allow_websocket:
            record.outcome = "websocket_refused"
            await refuse(exchange, 403, *error_response(provider, 403, "WebSocket is not allowed on this endpoint"), record)
            return
        http2 = head.method == b"CONNECT"  # RFC 8441: the client has no key of its own
        key = new_key(os.urandom(16)) if http2 else client_key(head.headers)
        if key is None:
            record.outcome = "bad_websocket_request"
            message = "a WebSocket upgrade needs one valid Sec-WebSocket-Key"
            await refuse(exchange, 400, *error_response(provider, 400, message), record)
            return
        now = time.time()
        upstream = endpoint.upstreams.choose(relay_key, now)
        if upstream is None:
            record.outcome = "no_usable_upstream"
            wait = math.ceil(endpoint.upstreams.retry_after(relay_key, now))
            headers, body = error_response(provider, 503, "no upstream of this endpoint is available now")
            await refuse(exchange, 503, headers + [(b"retry-after", str(wait).encode())], body, record)
            return
        active = ActiveResponse(exchange)
        session = trio.CancelScope()
        active.interrupt = session.cancel  # the drain deadline ends the session, wherever it is
        self._responses.add(active)
        try:
            with session:
                await self._session(exchange, endpoint, upstream, path, query, record, relay_key, key, http2)
            if active.cut_by_drain:
                record.outcome = "cut_at_drain_deadline"
                if exchange.phase is ResponsePhase.PENDING:
                    message = "the relay is shutting down and its drain deadline passed"
                    await refuse(exchange, 503, *error_response(provider, 503, message), record)
        finally:
            self._responses.discard(active)

    async def _session(
        self,
        exchange: Exchange,
        endpoint: EndpointRuntime,
        upstream: UpstreamRuntime,
        path: str,
        query: str,
        record: accesslog.AccessRecord,
        relay_key: int | None,
        key: bytes,
        http2: bool,
    ) -> None:
        head = exchange.head
        attempts = Attempts(endpoint, self._observer, relay_key, b"", record.started)
        now = time.time()
        while True:
            record.attempts += 1
            record.upstream = upstream.name
            provider_key = upstream.pick_key(now) if upstream.injects_key else None
            presented = upstream.keys[provider_key] if provider_key is not None else ""
            probed = upstream if upstream.ejected_until and upstream.start_attempt(now) else None
            try:
                request = upgrade_request(head, endpoint, upstream, provider_key, path, query, record.request_id, key)
                handshake = await open_upgrade(upstream, request, key)
            except UpstreamError as exc:
                now = time.time()
                attempts.failed(upstream, exc, now)
                retry = attempts.next(upstream)
                if retry is not None:
                    self._log_failure(endpoint, upstream, record, exc.message, retry)
                    upstream = retry
                    continue
                self._log_failure(endpoint, upstream, record, exc.message, None)
                record.outcome = exc.reason
                headers, body = error_response(endpoint.provider, exc.status, exc.message)
                await refuse(exchange, exc.status, headers + [(b"x-llmrelay-upstream", upstream.name_bytes)], body, record)
                return
            finally:
                if probed is not None:
                    probed.end_probe()
            try:
                status = handshake.head.status
                if status in JUDGED or upstream.ejected_until or self._observer.failing:
                    attempts.judge(upstream, provider_key, status, handshake.head.headers, now)
                if status == 101:
                    await self._tunnel(exchange, endpoint, upstream, handshake, record, http2)
                    return
                if status in RETRY_STATUSES or (status in KEY_REFUSED and provider_key is not None):
                    if status == 401 and provider_key is not None and upstream.key_refresh[provider_key]:
                        await attempts.refreshed(upstream, provider_key, presented)  # (else: disabled)
                    retry = attempts.next(upstream, provider_key, status)
                    if retry is not None:
                        self._log_failure(endpoint, upstream, record, f"status {status}", retry)
                        upstream, now = retry, time.time()
                        continue
                await self._relay_refusal(exchange, upstream, handshake, record)
                return
            finally:
                handshake.transport.close()

    async def _tunnel(
        self,
        exchange: Exchange,
        endpoint: EndpointRuntime,
        upstream: UpstreamRuntime,
        handshake: Handshake,
        record: accesslog.AccessRecord,
        http2: bool,
    ) -> None:
        """The upstream switched protocols: open the client's tunnel and pump until either side ends."""
        headers = client_answer_headers(handshake.head.headers, http2)
        headers.append((b"x-llmrelay-upstream", upstream.name_bytes))
        status = 200 if http2 else 101
        record.status = status
        record.first_byte = time.perf_counter()
        record.streamed = True
        tunnel = await exchange.open_tunnel(status, headers)
        pump = TunnelPump(tunnel, handshake.transport, endpoint.config.websocket_idle_timeout, WEBSOCKET_LINGER)
        try:
            record.outcome = (await pump.run(handshake.rest)).value
        finally:
            record.bytes_in += pump.bytes_up
            record.bytes_out += pump.bytes_down

    async def _relay_refusal(
        self, exchange: Exchange, upstream: UpstreamRuntime, handshake: Handshake, record: accesslog.AccessRecord
    ) -> None:
        """An upstream that did not switch protocols: its answer goes to the client as it is."""
        head = handshake.head
        record.outcome = "upgrade_refused"
        record.status = head.status
        record.first_byte = time.perf_counter()
        headers, _, _ = client_response_headers(head.headers, record.request_id)
        headers.append((b"x-llmrelay-upstream", upstream.name_bytes))
        exchange.close_when_done()
        decoder = BodyDecoder(head.framing, head.length)
        transport = handshake.transport
        idle = upstream.pool.idle_timeout
        try:
            await exchange.send_head(head.status, headers)
        except InvalidResponseHead as exc:
            record.outcome = "bad_response"
            message = f"the upstream's answer to the upgrade cannot be relayed: {exc}"
            await refuse(exchange, 502, *error_response(upstream.provider, 502, message), record)
            return
        try:
            content = decoder.feed(handshake.rest) if handshake.rest else b""
            while not decoder.done:
                if content:
                    record.bytes_out += len(content)
                    await exchange.send_body(content)
                with trio.move_on_after(idle) as waited:
                    data = await transport.receive()
                if waited.cancelled_caught:
                    raise UpstreamTimeout("the upstream stalled in its answer to the upgrade")
                if data:
                    content = decoder.feed(data)
                else:
                    decoder.eof()  # (the end of a close-delimited body; FramingError otherwise)
                    content = b""
            record.bytes_out += len(content)
            await exchange.end(content)
        except (FramingError, UpstreamTimeout) as exc:
            record.outcome = "upstream_error"
            log.warning("upstream answer to a WebSocket upgrade broke off rid=%s: %s", record.request_id, one_line(str(exc)))
            await exchange.abort()

    def _log_failure(
        self,
        endpoint: EndpointRuntime,
        upstream: UpstreamRuntime,
        record: accesslog.AccessRecord,
        reason: str,
        retry: UpstreamRuntime | None,
    ) -> None:
        log.warning(
            "websocket upgrade failed endpoint=%s upstream=%s rid=%s attempt=%d: %s%s",
            endpoint.name,
            upstream.name,
            record.request_id,
            record.attempts,
            one_line(reason),
            f"; retrying on {retry.name}" if retry is not None else "",
        )


def upgrade_request(
    head: RequestHead,
    endpoint: EndpointRuntime,
    upstream: UpstreamRuntime,
    provider_key: int | None,
    path: str,
    query: str,
    request_id: str,
    key: bytes,
) -> bytes:
    """The upstream upgrade request's head: the usual rewritten headers (relay key removed, provider
    key injected, forwarding headers set), with the WebSocket handshake fields and `key`."""
    fields = [field for field in head.headers if not field[0].startswith(b":")]  # (HTTP/2 pseudo-fields)
    if endpoint.needs_relay_key or upstream.injects_key:
        fields = without_subprotocol_key(fields)  # a relay key offered as a subprotocol never goes on
    headers, joined = upstream_head(fields, head, endpoint, upstream, provider_key, path, query, request_id, False)
    headers = upgrade_request_headers(headers, key)
    target = joined.encode("latin-1")
    dialer = upstream.pool.dialer
    if dialer.forwarding:  # a plain-http target behind an HTTP proxy: absolute form, the proxy's credentials
        target = dialer.origin + target
        if dialer.forward_credentials is not None:
            headers.append((b"proxy-authorization", dialer.forward_credentials))
    return request_head(b"GET", target, headers)


async def open_upgrade(upstream: UpstreamRuntime, request: bytes, key: bytes) -> Handshake:
    """A fresh connection to `upstream`, the upgrade sent on it, and its answer's head read (1xx
    other than 101 skipped). A 101 that does not complete the handshake of `key` is an
    UpstreamProtocolError; no answer within the upstream's first-byte timeout an UpstreamTimeout."""
    transport = await upstream.pool.dialer.connect()
    try:
        with trio.move_on_after(upstream.pool.first_byte_timeout):
            try:
                await transport.send_all(request)
            except BrokenTransport:
                raise UpstreamConnectError("the upstream connection broke while sending the upgrade") from None
            head, rest = await _read_head(transport)
            if head.status == 101:
                problem = upgrade_problem(head.headers, key)
                if problem is not None:
                    raise UpstreamProtocolError(problem)
            return Handshake(transport, head, rest)
        raise UpstreamTimeout("timed out waiting for the upstream's answer to the upgrade")
    except BaseException:
        transport.close()
        raise


async def _read_head(transport: Transport) -> tuple[ResponseHead, bytes]:
    buffer = b""
    while True:
        data = await transport.receive()
        if not data:
            raise UpstreamProtocolError("the upstream closed the connection without answering the upgrade")
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_RESPONSE_HEAD:
                    raise UpstreamProtocolError("the upstream's answer head is too large")
                if b"\n\n" in buffer:
                    raise UpstreamProtocolError("the upstream's answer has a bare LF in its head")
                break
            if b"\n" in buffer[:end].replace(b"\r\n", b""):
                raise UpstreamProtocolError("the upstream's answer has a bare LF in its head")
            try:
                head = parse_response_head(buffer[:end], b"GET")
            except FramingError as exc:
                raise UpstreamProtocolError(f"malformed answer to the upgrade: {exc}") from None
            buffer = buffer[end + 4 :]
            if head.status < 200 and head.status != 101:
                continue  # 100 Continue, 103 Early Hints: the real answer follows
            return head, buffer

