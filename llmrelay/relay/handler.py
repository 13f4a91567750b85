"""The relay itself: one exchange in, one upstream request out, the answer streamed back.

route -> authenticate -> size check -> rewrite headers and inject the provider key -> upstream pool
-> stream the response back chunk by chunk (an SSE event leaves as soon as it arrives) -> access log.
The upstream response is always closed when this function leaves, however it leaves; a client that
goes away cancels the exchange, which closes the upstream request at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

import msgspec
import trio

from llmrelay.proto.errors import ClientDisconnected, InvalidResponseHead, RequestRejected
from llmrelay.proto.messages import Headers, ResponsePhase
from llmrelay.server.exchange import Exchange, Refusal
from llmrelay.io.logsafe import one_line
from llmrelay.io.timers import TimerReason
from llmrelay.relay import accesslog
from llmrelay.relay.credentials import check_relay_key, strip_query_key
from llmrelay.relay.headers import client_response_headers, request_id_for, upstream_request_headers
from llmrelay.relay.observer import FAILURE_STATUSES, UpstreamObserver
from llmrelay.relay.providers import error_format, error_response, inject_key, sse_error_event
from llmrelay.relay.routing import join_path
from llmrelay.relay.runtime import EndpointRuntime, RelayRuntime
from llmrelay.relay.streams import ActiveResponse, ResponseRegistry
from llmrelay.upstream.errors import UpstreamError, UpstreamProtocolError
from llmrelay.upstream.pool import UpstreamExchange, UpstreamRequest

WHOLE_BODY_LIMIT = 65536  # request bodies up to this size (with a Content-Length) are read whole

log = logging.getLogger("llmrelay.relay")


def guess_provider(path: str) -> str:
    """The provider whose error shape fits a request that matched no endpoint."""
    if path.endswith("/messages") or "/messages?" in path:
        return "anthropic"
    if ":generateContent" in path or ":streamGenerateContent" in path:
        return "gemini"
    return "openai"


class Relay:
    """The request handler of a worker; `runtime` is swapped when a new config arrives."""

    def __init__(
        self,
        runtime: RelayRuntime,
        health: Callable[[str], tuple[int, dict[str, object], Headers]],
        observer: UpstreamObserver,
        responses: ResponseRegistry,
    ) -> None:
        self.runtime = runtime
        self._health = health
        self._observer = observer
        self._responses = responses

    async def __call__(self, exchange: Exchange) -> None:
        head = exchange.head
        request_id = request_id_for(head.headers)
        target = head.target.decode("latin-1")
        record = accesslog.AccessRecord(
            head.method.decode("ascii", "replace"), target, request_id, head.client[0], time.perf_counter()
        )
        runtime = self.runtime
        runtime.acquire()
        try:
            await self._relay(exchange, runtime, record, target)
        except ClientDisconnected:
            record.outcome = "client_gone"
            raise
        except trio.Cancelled:
            timed_out = exchange.timed_out
            if timed_out is TimerReason.BODY and exchange.phase is ResponsePhase.PENDING:
                record.status = 408  # the adapter answers it, in this route's error shape
                record.outcome = "body_timeout"
            else:
                record.outcome = "write_timeout" if timed_out is TimerReason.WRITE else "client_gone"
            raise
        except RequestRejected as exc:
            record.status = exc.status
            record.outcome = "rejected"
            raise
        except Exception:
            record.status = 500 if exchange.phase is ResponsePhase.PENDING else record.status
            record.outcome = "internal_error"
            raise
        finally:
            record.finished = time.perf_counter()
            if runtime.config.server.access_log:
                accesslog.write(record)
            if runtime.release():
                with trio.CancelScope(shield=True):
                    await runtime.aclose()

    def refused(self, refusal: Refusal) -> None:
        """A request refused before it became an exchange: it gets its access-log line too."""
        if self.runtime.config.server.access_log:
            accesslog.write(accesslog.AccessRecord.of_refusal(refusal, time.perf_counter()))

    async def _relay(
        self, exchange: Exchange, runtime: RelayRuntime, record: accesslog.AccessRecord, target: str
    ) -> None:
        head = exchange.head
        if target.startswith("/health") and (len(target) == 7 or target[7] == "?"):
            status, payload, extra_headers = self._health(target)
            await self._send_json(exchange, status, payload, record, extra_headers)
            return
        router = runtime.router
        route = router.route(head.header(b"host") if router.routes_by_host else None, target)
        if route is None:
            record.outcome = "no_route"
            await self._send_error(exchange, guess_provider(target), 404, "no endpoint matches this path", record)
            return
        endpoint = route.endpoint
        record.endpoint = endpoint.name
        exchange.error_format = error_format(endpoint.provider)  # errors the adapter answers, too
        if head.websocket:
            # Never downgraded to a plain request: the client would wait for a 101 that never comes.
            record.outcome = "websocket_refused"
            exchange.close_when_done()
            message = "WebSocket upgrades are not supported by this relay"
            await self._send_error(exchange, endpoint.provider, 501, message, record)
            return
        path, _, query = route.rest.partition("?")
        if endpoint.needs_relay_key and not check_relay_key(endpoint.relay_keys, head.headers, query):
            record.outcome = "bad_relay_key"
            await self._send_error(exchange, endpoint.provider, 401, "invalid or missing relay key", record)
            return
        limit = endpoint.max_body_size
        if head.body_length is not None and head.body_length > limit:
            record.outcome = "body_too_large"
            await self._send_error(exchange, endpoint.provider, 413, f"request body exceeds {limit} bytes", record)
            return
        await self._forward(exchange, endpoint, path, query, record)

    async def _forward(
        self, exchange: Exchange, endpoint: EndpointRuntime, path: str, query: str, record: accesslog.AccessRecord
    ) -> None:
        head = exchange.head
        replace_credentials = endpoint.replaces_credentials
        chunked = head.body_length is None
        headers = upstream_request_headers(
            head.headers,
            upstream_host=endpoint.upstream_host,
            client_ip=head.client[0],
            scheme=head.scheme,
            request_id=record.request_id,
            chunked_body=chunked,
            strip_credentials=replace_credentials,
            forwarded=endpoint.forwarded,
        )
        if replace_credentials and query:
            query = strip_query_key(query)
        if endpoint.injects_key:
            inject_key(endpoint.provider, headers, endpoint.provider_keys.pick())
        upstream_target = join_path(endpoint.base_path, path) + ("?" + query if query else "")
        body: AsyncIterator[bytes] | bytes = b""
        if head.has_body:
            if head.body_length is not None and head.body_length <= WHOLE_BODY_LIMIT:
                body = await self._whole_body(exchange, record)  # one send upstream, and replayable
            else:
                body = self._request_body(exchange, endpoint.max_body_size, record)
        request = UpstreamRequest(
            method=head.method,
            target=upstream_target.encode("latin-1"),
            headers=headers,
            body=body,
            chunked=chunked,
        )
        active = ActiveResponse(exchange)
        self._responses.add(active)
        try:
            upstream = endpoint.pool.stream(request)
            active.interrupt = upstream.interrupt  # a drain cut closes the upstream connection
            await self._exchange_with_upstream(exchange, endpoint, upstream, active, record)
        except UpstreamError as exc:
            if active.cut_by_drain:
                await self._cut_at_deadline(exchange, endpoint, active, record)
                return
            record.outcome = exc.reason
            if exc.counts_against_upstream:
                self._observer.failure(endpoint.name, exc.message)
            log.warning(
                "upstream failure endpoint=%s rid=%s status=%d reason=%s: %s",
                endpoint.name,
                record.request_id,
                exc.status,
                exc.reason,
                one_line(exc.message),
            )
            if exchange.phase is ResponsePhase.PENDING:
                await self._send_error(exchange, endpoint.provider, exc.status, exc.message, record)
            else:
                await self._cut(exchange, endpoint.provider, active, exc.message)
        finally:
            self._responses.discard(active)

    async def _cut_at_deadline(
        self, exchange: Exchange, endpoint: EndpointRuntime, active: ActiveResponse, record: accesslog.AccessRecord
    ) -> None:
        record.outcome = "cut_at_drain_deadline"
        message = "the relay is shutting down and its drain deadline passed"
        if exchange.phase is ResponsePhase.PENDING:
            exchange.close_when_done()
            await self._send_error(exchange, endpoint.provider, 503, message, record)
        else:
            await self._cut(exchange, endpoint.provider, active, message)

    async def _exchange_with_upstream(
        self,
        exchange: Exchange,
        endpoint: EndpointRuntime,
        upstream: UpstreamExchange,
        active: ActiveResponse,
        record: accesslog.AccessRecord,
    ) -> None:
        async with upstream as response:
            record.first_byte = time.perf_counter()
            record.status = response.status
            if response.status in FAILURE_STATUSES:
                self._observer.failure(endpoint.name, f"status {response.status}")
            else:
                self._observer.success(endpoint.name)
            out_headers, sse, has_length = client_response_headers(response.headers, record.request_id)
            active.sse = sse
            record.streamed = sse or not has_length
            try:
                await exchange.send_head(response.status, out_headers)
            except InvalidResponseHead as exc:
                raise UpstreamProtocolError(str(exc)) from None
            if not response.body_ready:
                await exchange.flush()  # the head leaves now; the body may take a while
            while True:
                chunk = await response.read_chunk()
                record.bytes_out += len(chunk)
                if response.complete:
                    await exchange.end(chunk)  # the last bytes and the end leave together
                    return
                if chunk:
                    await active.send(chunk)

    async def _cut(self, exchange: Exchange, provider: str, active: ActiveResponse, message: str) -> None:
        """End a response that already started, honestly: an SSE error event when the stream is at
        an event boundary, then an unclean close so no client takes it for complete."""
        if active.sse and active.at_event_boundary and exchange.phase is ResponsePhase.STREAMING:
            try:
                await exchange.send_body(sse_error_event(provider, message))
            except ClientDisconnected:
                pass
        await exchange.abort()

    async def _whole_body(self, exchange: Exchange, record: accesslog.AccessRecord) -> bytes:
        """A small body of known length, read whole before the upstream request is sent."""
        parts = []
        while True:
            chunk = await exchange.receive_body()
            if chunk:
                parts.append(chunk)
            if exchange.body_complete:
                body = b"".join(parts)
                record.bytes_in += len(body)
                return body
            if not chunk:
                raise ClientDisconnected("request body ended early")

    async def _request_body(
        self, exchange: Exchange, limit: int, record: accesslog.AccessRecord
    ) -> AsyncIterator[bytes]:
        while True:
            chunk = await exchange.receive_body()
            if not chunk:
                return
            record.bytes_in += len(chunk)
            if record.bytes_in > limit:
                raise RequestRejected(413, f"request body exceeds {limit} bytes")
            yield chunk

    async def _send_error(
        self, exchange: Exchange, provider: str, status: int, message: str, record: accesslog.AccessRecord
    ) -> None:
        headers, body = error_response(provider, status, message)
        await self._send_whole(exchange, status, headers, body, record)

    async def _send_json(
        self,
        exchange: Exchange,
        status: int,
        payload: object,
        record: accesslog.AccessRecord,
        extra_headers: Headers = [],
    ) -> None:
        body = msgspec.json.encode(payload)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += extra_headers
        await self._send_whole(exchange, status, headers, body, record)

    async def _send_whole(
        self, exchange: Exchange, status: int, headers: Headers, body: bytes, record: accesslog.AccessRecord
    ) -> None:
        if exchange.head.has_body and not exchange.body_complete:
            exchange.close_when_done()  # the unread body would otherwise have to be drained first
        record.status = status
        record.first_byte = time.perf_counter()
        await exchange.send_head(status, headers)
        if exchange.head.method != b"HEAD":
            record.bytes_out += len(body)
            await exchange.end(body)
        else:
            await exchange.end()

