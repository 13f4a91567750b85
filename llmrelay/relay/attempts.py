"""One request's attempts on an endpoint's upstreams: the request each attempt sends, what each answer
says of its upstream and key (reported to the supervisor through the observer, and applied to this
worker's view at once), and where the next attempt goes, if any. No I/O: the handler makes them.

An attempt may be made again elsewhere only before anything of the response left (the handler
checks that): within `retries` further attempts and `retry_deadline` seconds of the request's start,
with a body that can be replayed (`replay`), and with something usable left. A refused key (429,
401/403 of an injected key) moves to another key of the same upstream when it has one usable, any
other failure to another upstream.

A 401 to a key whose `$(command)` the supervisor re-runs (`refresh_interval`) first waits, holding that
answer, for the supervisor to re-run it (`refreshed`): with a new value the attempt is made again on
the same upstream with it; otherwise the key is disabled as any refused key is. Waiting on that answer
is the only await here; the handler still makes every request.
"""

from __future__ import annotations

import time

import trio

from llmrelay.proto.messages import Headers, RequestHead
from llmrelay.proto.retry_after import retry_after_seconds
from llmrelay.relay.credentials import strip_query_key
from llmrelay.relay.headers import upstream_request_headers
from llmrelay.relay.observer import FAILURE_STATUSES, UpstreamObserver
from llmrelay.relay.providers import inject_key
from llmrelay.relay.replay import ReplayableBody
from llmrelay.relay.routing import join_path
from llmrelay.relay.runtime import EndpointRuntime
from llmrelay.relay.upstreams import UpstreamRuntime
from llmrelay.upstream.errors import UpstreamError
from llmrelay.upstream.pool import UpstreamRequest

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})  # answers another upstream may do better
KEY_REFUSED = frozenset({401, 403})  # the injected key is refused: another key may do
JUDGED = FAILURE_STATUSES | KEY_REFUSED | {429}  # answers that say something of an upstream or its key
REFRESH_WAIT = 12.0  # seconds a request waits for a refreshed key (the command's own bound is 10 s)


class Attempts:
    __slots__ = ("endpoint", "observer", "relay_key", "body", "retry_until", "tried")

    def __init__(
        self,
        endpoint: EndpointRuntime,
        observer: UpstreamObserver,
        relay_key: int | None,
        body: bytes | ReplayableBody,
        started: float,
    ) -> None:
        self.endpoint = endpoint
        self.observer = observer
        self.relay_key = relay_key  # the index of the relay key the client presented (None: none)
        self.body = body
        self.retry_until = started + endpoint.retry_deadline  # (perf_counter time)
        self.tried: list[int] | None = None  # upstreams failed on (-1: a refused key, same upstream)

    def judge(self, upstream: UpstreamRuntime, key: int | None, status: int, headers: Headers, now: float) -> None:
        """Report what an upstream's answer says of its health and of the key it was given (the
        handler calls it for every answer in `JUDGED`, and for any answer while the upstream or this
        worker's view of it is not clean: a success then ends a probe or is news for the supervisor)."""
        endpoint, observer = self.endpoint, self.observer
        if status in FAILURE_STATUSES:
            upstream.attempt_failed(now)
            observer.failure(endpoint.name, upstream.name, f"status {status}")
            return
        upstream.attempt_succeeded()
        observer.success(endpoint.name, upstream.name)
        if key is None:
            return
        if status == 429:
            retry_after = None
            for name, value in headers:
                if name == b"retry-after":
                    retry_after = value
            until = now + retry_after_seconds(retry_after, now)
            upstream.cool_key(key, until)
            observer.key_refused(endpoint.generation, endpoint.name, upstream.name, key, status, False, until)
        elif status in KEY_REFUSED and not (status == 401 and upstream.key_refresh[key]):
            self.refuse_key(upstream, key, status)

    async def refreshed(self, upstream: UpstreamRuntime, key: int, presented: str) -> bool:
        """After a 401 to refreshable key `key` (which was `presented`): True when it has a new value
        to try (already, or once the supervisor re-ran its command, waiting at most REFRESH_WAIT and
        not past `retry_deadline`); else the key is disabled and False."""
        if upstream.keys[key] == presented:
            endpoint = self.endpoint
            answered = self.observer.ask_key_refresh(endpoint.generation, endpoint.name, upstream.name, key)
            wait = min(REFRESH_WAIT, self.retry_until - time.perf_counter())
            with trio.move_on_after(max(wait, 0.0)):
                await answered.wait()
        if upstream.keys[key] != presented:
            return True
        self.refuse_key(upstream, key, 401)
        return False

    def refuse_key(self, upstream: UpstreamRuntime, key: int, status: int) -> None:
        """Disable a key the provider refused (401/403), in this worker at once and for the supervisor.
        (A refreshable key's 401 comes here only once a re-run of its command gave nothing new.)"""
        if upstream.disable_key(key):
            endpoint = self.endpoint
            self.observer.key_refused(endpoint.generation, endpoint.name, upstream.name, key, status, True, 0.0)

    def failed(self, upstream: UpstreamRuntime, error: UpstreamError, now: float) -> None:
        """An attempt failed without an answer (or its answer broke off)."""
        if error.counts_against_upstream:
            upstream.attempt_failed(now)
            self.observer.failure(self.endpoint.name, upstream.name, error.message)

    def request(
        self, head: RequestHead, upstream: UpstreamRuntime, key: int | None, path: str, query: str, request_id: str
    ) -> UpstreamRequest:
        """The request of an attempt on `upstream`: headers rewritten for it, its key (index `key`)
        presented the provider's way, the path joined with its base path, the body (again)."""
        body = self.body
        chunked = head.body_length is None
        headers, upstream_target = upstream_head(head.headers, head, self.endpoint, upstream, key, path, query, request_id, chunked)
        return UpstreamRequest(
            method=head.method,
            target=upstream_target.encode("latin-1"),
            headers=headers,
            body=body if isinstance(body, bytes) else body.for_attempt(upstream.max_body_size),
            chunked=chunked,
        )

    def next(self, upstream: UpstreamRuntime, key: int | None = None, status: int = 0) -> UpstreamRuntime | None:
        """Where the next attempt goes after one on `upstream` failed, or None when this request gets
        no further attempt: retries used up, past `retry_deadline`, a body too large to replay, or
        nothing usable left."""
        endpoint, tried, body = self.endpoint, self.tried, self.body
        if tried is None:
            tried = self.tried = []  # (made on the first failure only)
        if len(tried) >= endpoint.retries or time.perf_counter() >= self.retry_until:
            return None
        if isinstance(body, ReplayableBody):
            if not body.replayable:
                return None
        elif len(body) > endpoint.retry_body_limit:
            return None
        now = time.time()
        if key is not None and (status == 429 or status in KEY_REFUSED) and upstream.usable(now):
            tried.append(-1)  # (counts as an attempt; the same upstream stays eligible)
            return upstream
        tried.append(upstream.index)
        return endpoint.upstreams.choose(self.relay_key, now, tried)


def upstream_head(
    fields: Headers,
    head: RequestHead,
    endpoint: EndpointRuntime,
    upstream: UpstreamRuntime,
    key: int | None,
    path: str,
    query: str,
    request_id: str,
    chunked: bool,
) -> tuple[Headers, str]:
    """The header fields and target of a request to `upstream` (any request: relayed, or a WebSocket
    upgrade): the client's `fields` rewritten (relay key removed, forwarding headers set), its key
    (index `key`) presented the provider's way, the path joined with the upstream's base path."""
    replace_credentials = endpoint.needs_relay_key or upstream.injects_key
    headers = upstream_request_headers(
        fields,
        upstream_host=upstream.upstream_host,
        client_ip=head.client[0],
        scheme=head.scheme,
        request_id=request_id,
        chunked_body=chunked,
        strip_credentials=replace_credentials,
        forwarded=endpoint.forwarded,
    )
    if replace_credentials and query:
        query = strip_query_key(query)
    if key is not None:
        inject_key(upstream.provider, headers, upstream.keys[key], upstream.key_oauth[key])
    return headers, join_path(upstream.base_path, path) + ("?" + query if query else "")
