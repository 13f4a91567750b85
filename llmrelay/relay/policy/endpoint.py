"""An endpoint's request policy as the handler calls it: CORS (preflights, response heads) and the
processors (request head, path and body before forwarding). Built once per endpoint and config
generation; an endpoint with neither has no policy at all (`build_policy` returns None), so the
handler's only cost for it is one attribute test.

A request whose processors need no body keeps its body untouched (streamed or read as usual by the
handler); one whose processors need it has it read whole (bounded by `max_body_size`), decoded with
msgspec, changed, and encoded again only when something changed; its Content-Length is the new one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from llmrelay.config.resolved import ResolvedEndpoint
from llmrelay.io.logsafe import one_line
from llmrelay.proto.errors import ClientDisconnected
from llmrelay.proto.messages import Headers, RequestHead
from llmrelay.relay.headers import with_whole_body
from llmrelay.relay.observer import UpstreamObserver
from llmrelay.relay.policy import bodies, rewrite
from llmrelay.relay.policy.cors import CorsPolicy
from llmrelay.relay.policy.exchange import EditedExchange
from llmrelay.relay.policy.processors import RewriteStep, Step, compile_steps, response_edit
from llmrelay.relay.policy.request import ProcessorRequest, Refused
from llmrelay.relay.providers import error_response
from llmrelay.server.exchange import Exchange

if TYPE_CHECKING:
    from llmrelay.relay.accesslog import AccessRecord
    from llmrelay.relay.runtime import EndpointRuntime

log = logging.getLogger("llmrelay.policy")

# What an upstream says about CORS never reaches a client of an endpoint with `cors`: the relay answers it.
UPSTREAM_CORS = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-expose-headers",
        b"access-control-max-age",
    }
)


class Prepared(msgspec.Struct):
    """The request to forward: its head (headers, framing), its endpoint-relative path, and its
    body when the processors read it (None: the handler reads or streams it as usual)."""

    head: RequestHead
    path: str
    body: bytes | None


class EndpointPolicy:
    __slots__ = ("name", "provider", "max_body_size", "cors", "steps", "needs_body", "_removed", "_added")

    def __init__(self, config: ResolvedEndpoint) -> None:
        self.name = config.name
        self.provider = config.provider
        self.max_body_size = config.max_body_size
        self.cors = CorsPolicy(config.cors) if config.cors is not None else None
        self.steps: list[Step] = [step for section in config.processors for step in compile_steps(section, config.provider)]
        self.needs_body = any(step.needs_body for step in self.steps)
        self._removed, self._added = response_edit(config.processors)

    # -- CORS and response heads ------------------------------------------------------------------

    def preflight(self, head: RequestHead) -> tuple[int, Headers, bytes] | None:
        """The local answer to a CORS preflight (204, or 403 without CORS headers), or None when
        `head` is not one (or the endpoint has no `cors`: its OPTIONS are forwarded)."""
        cors = self.cors
        if cors is None or head.method != b"OPTIONS":
            return None
        origin = head.header(b"origin")
        method = head.header(b"access-control-request-method")
        if origin is None or method is None:
            return None
        allowed = cors.preflight(origin, method, head.header(b"access-control-request-headers"))
        if allowed is not None:
            return 204, allowed, b""
        headers, body = error_response(self.provider, 403, "CORS preflight refused: origin, method or headers not allowed")
        return 403, headers, body

    def wrap(self, exchange: Exchange) -> Exchange:
        """`exchange`, or one whose response heads get this endpoint's CORS headers and response
        header edits."""
        removed, added = self._removed, self._added
        if self.cors is not None:
            origin = exchange.head.header(b"origin")
            if origin is not None:
                removed = removed | UPSTREAM_CORS
                cors_headers = self.cors.actual(origin)
                if cors_headers is not None:
                    added = added + cors_headers
        if not removed and not added:
            return exchange
        return EditedExchange(exchange, removed, added)

    # -- processors ---------------------------------------------------------------------------------

    async def process(
        self,
        exchange: Exchange,
        path: str,
        query: str,
        record: AccessRecord,
        endpoints: Mapping[str, EndpointRuntime],
        observer: UpstreamObserver,
    ) -> Prepared:
        """Run the processors on the request; Refused when one refuses it (or a closed rewrite fails)."""
        head = exchange.head
        body: bytes | None = None
        decoded: Any = None
        opaque = False
        if self.needs_body and head.has_body:
            body = await self._read_body(exchange, record)
            if body:
                try:
                    decoded = msgspec.json.decode(body)
                except msgspec.DecodeError:
                    decoded = None
                if not isinstance(decoded, dict):
                    decoded = None
                    if b"json" in (head.header(b"content-type") or b""):
                        raise Refused(400, "the request body is not a JSON object")
                    opaque = True
        request = ProcessorRequest(
            self.provider, self.name, head.method.decode("ascii", "replace"), path, query, list(head.headers), decoded
        )
        request.opaque_body = opaque
        for step in self.steps:
            if isinstance(step, RewriteStep):
                await self._rewrite(step, request, endpoints, observer, head, record.request_id)
            else:
                step.apply(request)
        headers = request.raw_headers
        if body is not None:
            if request.changed and request.body is not None:
                body = msgspec.json.encode(request.body)
            head = with_whole_body(head, body, headers)
        elif headers != head.headers:
            head = msgspec.structs.replace(head, headers=headers)
        return Prepared(head, request.path, body)

    async def _rewrite(
        self,
        step: RewriteStep,
        request: ProcessorRequest,
        endpoints: Mapping[str, EndpointRuntime],
        observer: UpstreamObserver,
        head: RequestHead,
        request_id: str,
    ) -> None:
        section = step.section
        body = request.body
        if not isinstance(body, dict):
            return
        text = bodies.last_user_text(request.provider, request.path, body)
        if text is None:
            return
        problem = ""
        with trio.move_on_after(section.timeout) as scope:
            try:
                rewritten = await rewrite.ask(section, text, endpoints, observer, head, request_id)
            except rewrite.RewriteFailed as exc:
                problem = str(exc)
            else:
                bodies.replace_last_user_text(request.provider, request.path, body, rewritten)
                request.changed = True
                return
        if scope.cancelled_caught:
            problem = f"no answer within {section.timeout:g} s"
        log.warning(
            "rewrite_with failed endpoint=%s via=%s rid=%s: %s; %s",
            self.name,
            section.endpoint,
            request_id,
            one_line(problem),
            "forwarding the original" if section.fail_open else "answering 502",
        )
        if not section.fail_open:
            raise Refused(502, f"the request could not be rewritten ({problem})")

    async def _read_body(self, exchange: Exchange, record: AccessRecord) -> bytes:
        """The whole request body (a processor needs it), at most `max_body_size` bytes (else 413)."""
        parts: list[bytes] = []
        size = 0
        limit = self.max_body_size
        while True:
            chunk = await exchange.receive_body()
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise Refused(413, f"request body exceeds {limit} bytes")
                parts.append(chunk)
            if exchange.body_complete:
                record.bytes_in += size
                return b"".join(parts)
            if not chunk:
                raise ClientDisconnected("request body ended early")


def build_policy(config: ResolvedEndpoint) -> EndpointPolicy | None:
    """The endpoint's policy, or None when it has neither `cors` nor processors."""
    if config.cors is None and not config.processors:
        return None
    return EndpointPolicy(config)
