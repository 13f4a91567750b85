"""The relay itself: one exchange in, one upstream request out, the answer streamed back.

route -> authenticate (which relay key) -> size check -> choose an upstream and a key -> rewrite
headers and inject the provider key -> upstream pool -> stream the response back chunk by chunk (an
SSE event leaves as soon as it arrives) -> access log.

An attempt that fails before anything of the response reached the client (connect error, reset,
timeout to the first byte, a 429 or 5xx, a refused key) is made again on the next choice, up to the
endpoint's `retries` and `retry_deadline`, when the body can be replayed (`replay`); once the response
has started, a failure ends it honestly instead. What each attempt sends, what its answer says of the
upstream and key, and where the next one goes are `attempts`' (the outcome is reported to the
supervisor through `observer`, which decides on ejections and key cool-downs for every worker).

The upstream response is always closed when an attempt leaves, however it leaves; a client that goes
away cancels the exchange, which closes the upstream request at once.

Requests that open a tunnel leave this path early: a WebSocket (after routing and the relay key
check) goes to `websocket`, a `CONNECT host:port` (before routing: it names no endpoint) to `connect`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio

from llmrelay.proto.errors import ClientDisconnected, InvalidResponseHead, RequestRejected
from llmrelay.proto.messages import Headers, ResponsePhase
from llmrelay.server.exchange import Exchange, Refusal
from llmrelay.io.logsafe import one_line
from llmrelay.io.timers import TimerReason
from llmrelay.observe.recorder import MetricsRecorder, attempt_outcome
from llmrelay.observe.requestinfo import request_model
from llmrelay.observe.usage_rows import UsageRecorder
from llmrelay.relay import accesslog
from llmrelay.relay.admission import Admissions
from llmrelay.relay.answers import cut_response, read_whole_body, send_error, send_json, send_whole
from llmrelay.relay.admission_outcomes import WAIT, LimitRefusal, Wait
from llmrelay.relay.attempts import JUDGED, KEY_REFUSED, RETRY_STATUSES, Attempts
from llmrelay.relay.connect import ConnectTunnels
from llmrelay.relay.credentials import identify_relay_key
from llmrelay.relay.headers import client_response_headers, request_id_for, with_own_rate_limits, with_whole_body
from llmrelay.relay.observer import UpstreamObserver
from llmrelay.relay.policy import Refused
from llmrelay.relay.providers import error_format, guess_provider
from llmrelay.relay.replay import ReplayableBody
from llmrelay.relay.runtime import EndpointRuntime, RelayRuntime
from llmrelay.relay.streams import ActiveResponse, ResponseRegistry
from llmrelay.relay.upstreams import UpstreamRuntime
from llmrelay.relay.websocket import WebSocketRelay
from llmrelay.upstream.errors import UpstreamError, UpstreamProtocolError
from llmrelay.upstream.pool import UpstreamExchange, UpstreamResponse

WHOLE_BODY_LIMIT = 65536  # request bodies up to this size (with a Content-Length) are read whole

log = logging.getLogger("llmrelay.relay")


class Relay:
    """The request handler of a worker; `runtime` is swapped when a new config arrives."""

    def __init__(
        self,
        runtime: RelayRuntime,
        health: Callable[[str], tuple[int, dict[str, object], Headers]],
        observer: UpstreamObserver,
        responses: ResponseRegistry,
        recorder: MetricsRecorder | None = None,
        admissions: Admissions | None = None,
        usage: UsageRecorder | None = None,
    ) -> None:
        self.runtime = runtime
        self.recorder = MetricsRecorder() if recorder is None else recorder
        self.admissions = Admissions() if admissions is None else admissions
        self.usage = UsageRecorder() if usage is None else usage  # (an empty recorder is falsy: it has a len)
        self._health = health
        self._observer = observer
        self._responses = responses
        self.upstream_in_flight: dict[tuple[str, str], int] = {}  # attempts under way, by (endpoint, upstream)
        self._websockets = WebSocketRelay(observer, responses)
        self._tunnels = ConnectTunnels(responses)

    async def __call__(self, exchange: Exchange) -> None:
        head = exchange.head
        request_id = request_id_for(head.headers)
        target = head.target.decode("latin-1")
        runtime = self.runtime
        record = accesslog.AccessRecord.begin(head, target, request_id, runtime.trusted_proxies, time.perf_counter())
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
            self.recorder.record_request(record)
            if record.endpoint != "-":
                self.usage.record(record)
            if runtime.release():
                with trio.CancelScope(shield=True):
                    await runtime.aclose()

    def refused(self, refusal: Refusal) -> None:
        """A request refused before it became an exchange: it gets its access-log line too."""
        record = accesslog.AccessRecord.of_refusal(refusal, time.perf_counter())
        if self.runtime.config.server.access_log:
            accesslog.write(record)
        self.recorder.record_request(record)

    async def _relay(
        self, exchange: Exchange, runtime: RelayRuntime, record: accesslog.AccessRecord, target: str
    ) -> None:
        head = exchange.head
        if head.method == b"CONNECT" and not head.websocket:  # a tunnel to host:port (forward-proxy mode)
            await self._tunnels.serve(exchange, runtime, record)
            return
        if target.startswith("/health") and (len(target) == 7 or target[7] == "?"):
            status, payload, extra_headers = self._health(target)
            await send_json(exchange, status, payload, record, extra_headers)
            return
        router = runtime.router
        route = router.route(head.header(b"host") if router.routes_by_host else None, target)
        if route is None:
            record.outcome = "no_route"
            await send_error(exchange, guess_provider(target), 404, "no endpoint matches this path", record)
            return
        endpoint = route.endpoint
        record.endpoint = endpoint.name
        exchange.error_format = error_format(endpoint.provider)  # errors the adapter answers, too
        if endpoint.policy is not None:  # CORS and processors (`policy`): a preflight is answered here
            preflight = endpoint.policy.preflight(head)
            if preflight is not None:
                record.outcome = "cors_preflight" if preflight[0] == 204 else "cors_refused"
                await send_whole(exchange, *preflight, record)
                return
            exchange = endpoint.policy.wrap(exchange)
        path, _, query = route.rest.partition("?")
        relay_key: int | None = None
        if endpoint.needs_relay_key:
            relay_key = identify_relay_key(endpoint.relay_keys, head.headers, query, head.websocket)
            if relay_key is None:
                record.outcome = "bad_relay_key"
                await send_error(exchange, endpoint.provider, 401, "invalid or missing relay key", record)
                return
            record.relay_key = endpoint.relay_key_labels[relay_key]
        if head.websocket:  # (an HTTP/1.1 upgrade, or an HTTP/2 extended CONNECT)
            await self._websockets.relay(exchange, endpoint, path, query, record, relay_key)
            return
        limit = endpoint.max_body_size
        if head.body_length is not None and head.body_length > limit:
            record.outcome = "body_too_large"
            await send_error(exchange, endpoint.provider, 413, f"request body exceeds {limit} bytes", record)
            return
        await self._forward(exchange, endpoint, path, query, record, relay_key)

    async def _forward(
        self,
        exchange: Exchange,
        endpoint: EndpointRuntime,
        path: str,
        query: str,
        record: accesslog.AccessRecord,
        relay_key: int | None,
    ) -> None:
        head = exchange.head
        upstreams = endpoint.upstreams
        now = time.time()
        upstream = upstreams.choose(relay_key, now)
        if upstream is None:
            await self._nothing_usable(exchange, endpoint, relay_key, now, record)
            return
        whole: bytes | None = None
        if endpoint.policy is not None and endpoint.policy.steps:  # the processors (`policy`)
            try:
                prepared = await endpoint.policy.process(exchange, path, query, record, self.runtime.endpoints, self._observer)
            except Refused as exc:
                record.outcome = "refused_by_processor"
                await send_error(exchange, endpoint.provider, exc.status, exc.message, record)
                return
            head, path, whole = prepared.head, prepared.path, prepared.body
        body: bytes | ReplayableBody = b""
        if whole is not None:
            body = whole
        elif head.has_body:
            if head.body_length is not None and head.body_length <= WHOLE_BODY_LIMIT:
                body = await read_whole_body(exchange, record)  # one send upstream, and replayable
            else:
                body = ReplayableBody(exchange, record, endpoint.retry_body_limit)
        admission = None
        admissions = self.admissions
        if admissions.active:  # `[limits]`: admitted from this worker's leases, or refused here
            decision = admissions.admit_now(endpoint, upstream, record, head, path, body)  # (sets record.model)
            if decision is WAIT:
                decision, body = await admissions.admit_request(endpoint, upstream, record, head, path, body)
            if isinstance(decision, LimitRefusal):
                record.outcome = "rate_limited" if decision.status == 429 else "limits_unavailable"
                await send_error(exchange, endpoint.provider, decision.status, decision.message, record, decision.headers)
                return
            assert not isinstance(decision, Wait)
            admission = decision
        else:
            record.model = request_model(path, body if isinstance(body, bytes) else b"")
        usage_asked = None
        if admissions.settings.inject_stream_usage and isinstance(body, bytes):
            usage_asked = admissions.stream_usage_asked(endpoint.provider, path, body)
            if usage_asked is not None:
                body = usage_asked[0]
                head = with_whole_body(head, body)
        attempts = Attempts(endpoint, self._observer, relay_key, body, record.started)
        active = ActiveResponse(exchange)
        if admission is not None:
            active.extra_headers = admissions.success_headers(admission)
        if usage_asked is not None:
            active.rewrite = usage_asked[1]
        self._responses.add(active)
        try:
            while True:
                record.attempts += 1
                record.upstream = upstream.name
                key = upstream.pick_key(now) if upstream.injects_key else None
                presented = upstream.keys[key] if key is not None else ""
                # (the probe of an ejected upstream; `upstream` may change below)
                probed = upstream if upstream.ejected_until and upstream.start_attempt(now) else None
                request = attempts.request(head, upstream, key, path, query, record.request_id)
                counted = (endpoint.name, upstream.name)
                in_flight = self.upstream_in_flight
                in_flight[counted] = in_flight.get(counted, 0) + 1
                try:
                    call = upstream.pool.stream(request)
                    active.interrupt = call.interrupt  # a drain cut closes the upstream connection
                    async with call as response:
                        status = response.status
                        record.attempt_answered(upstream.name, attempt_outcome(status))
                        if status in JUDGED or upstream.ejected_until or self._observer.failing:
                            attempts.judge(upstream, key, status, response.headers, now)
                        if status in RETRY_STATUSES or (status in KEY_REFUSED and key is not None):
                            if status == 401 and key is not None and upstream.key_refresh[key]:
                                await attempts.refreshed(upstream, key, presented)  # (else: disabled)
                            retry = attempts.next(upstream, key, status)
                            if retry is not None and exchange.phase is ResponsePhase.PENDING:
                                self._log_retry(endpoint, upstream, record, f"status {status}", retry)
                                upstream, now = retry, time.time()
                                continue  # (leaving the block closes this response)
                        await self._exchange_with_upstream(exchange, upstream, call, response, active, record)
                        return
                except UpstreamError as exc:
                    record.attempt_failed(upstream.name, exc.reason)
                    if active.cut_by_drain:
                        await self._cut_at_deadline(exchange, endpoint, active, record)
                        return
                    now = time.time()
                    attempts.failed(upstream, exc, now)
                    if exchange.phase is ResponsePhase.PENDING:
                        retry = attempts.next(upstream)
                        if retry is not None:
                            self._log_retry(endpoint, upstream, record, exc.message, retry)
                            upstream = retry
                            continue
                    await self._failed(exchange, endpoint, upstream, active, record, exc)
                    return
                finally:
                    in_flight[counted] -= 1
                    if probed is not None:
                        probed.end_probe()
                    if isinstance(body, ReplayableBody):
                        await body.finish_attempt()
        finally:
            self._responses.discard(active)
            record.events = active.events
            record.usage = active.usage()
            if admission is not None:
                admissions.finish(admission, record.usage)

    def _log_retry(
        self,
        endpoint: EndpointRuntime,
        upstream: UpstreamRuntime,
        record: accesslog.AccessRecord,
        reason: str,
        retry: UpstreamRuntime,
    ) -> None:
        log.warning(
            "upstream attempt failed endpoint=%s upstream=%s rid=%s attempt=%d: %s; retrying on %s",
            endpoint.name,
            upstream.name,
            record.request_id,
            record.attempts,
            one_line(reason),
            retry.name,
        )

    async def _failed(
        self,
        exchange: Exchange,
        endpoint: EndpointRuntime,
        upstream: UpstreamRuntime,
        active: ActiveResponse,
        record: accesslog.AccessRecord,
        exc: UpstreamError,
    ) -> None:
        """The last attempt failed (or a response failed after it started): the error goes back."""
        record.outcome = exc.reason
        log.warning(
            "upstream failure endpoint=%s upstream=%s rid=%s attempts=%d status=%d reason=%s: %s",
            endpoint.name,
            upstream.name,
            record.request_id,
            record.attempts,
            exc.status,
            exc.reason,
            one_line(exc.message),
        )
        if exchange.phase is ResponsePhase.PENDING:
            extra = [(b"x-llmrelay-upstream", upstream.name_bytes)]
            await send_error(exchange, endpoint.provider, exc.status, exc.message, record, extra)
        else:
            await cut_response(exchange, upstream.provider, active, exc.message)

    async def _nothing_usable(
        self,
        exchange: Exchange,
        endpoint: EndpointRuntime,
        relay_key: int | None,
        now: float,
        record: accesslog.AccessRecord,
    ) -> None:
        """503 with the soonest moment something may be usable again: never a hang."""
        record.outcome = "no_usable_upstream"
        wait = math.ceil(endpoint.upstreams.retry_after(relay_key, now))
        message = "no upstream of this endpoint is available now (ejected, failing health checks or keys cooling down)"
        extra = [(b"retry-after", str(wait).encode())]
        await send_error(exchange, endpoint.provider, 503, message, record, extra)

    async def _cut_at_deadline(
        self, exchange: Exchange, endpoint: EndpointRuntime, active: ActiveResponse, record: accesslog.AccessRecord
    ) -> None:
        record.outcome = "cut_at_drain_deadline"
        message = "the relay is shutting down and its drain deadline passed"
        if exchange.phase is ResponsePhase.PENDING:
            exchange.close_when_done()
            await send_error(exchange, endpoint.provider, 503, message, record)
        else:
            await cut_response(exchange, endpoint.provider, active, message)

    async def _exchange_with_upstream(
        self,
        exchange: Exchange,
        upstream: UpstreamRuntime,
        call: UpstreamExchange,
        response: UpstreamResponse,
        active: ActiveResponse,
        record: accesslog.AccessRecord,
    ) -> None:
        record.first_byte = time.perf_counter()
        record.status = response.status
        out_headers, sse, has_length = client_response_headers(response.headers, record.request_id)
        out_headers.append((b"x-llmrelay-upstream", upstream.name_bytes))
        if active.extra_headers:  # (the relay's own rate limits replace the provider's)
            out_headers = with_own_rate_limits(out_headers, active.extra_headers)
        active.sse = sse
        record.streamed = sse or not has_length
        if active.rewrite is not None and (not sse or has_length):
            active.rewrite = None  # (only an event stream of no announced length may change on its way)
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
                await active.end(chunk, response.trailers)  # the last bytes (and trailers) leave together
                return
            if chunk:
                await active.send(chunk)
