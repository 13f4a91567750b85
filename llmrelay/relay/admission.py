"""A worker's side of `[limits]`: which counters a request falls under, admitting it from the
worker's leases, and asking the supervisor when a lease falls short.

The common case costs no round trip: the worker holds leased units of each counter
(`limits.leases.LeaseBook`) and admits from them. Only when a lease falls short does the request
wait for the supervisor (`LeaseAsk` → `LeaseGrant`), which grants from the counters it owns (in its
memory, or in Redis), so that all workers together never admit more than a rule allows. A supervisor
that does not answer within `ASK_TIMEOUT` is treated like an unreachable Redis: the request follows
`limits.on_backend_error`.

Every admission is finished on every path (`finish`): the concurrency unit goes back, and the real
usage, once known, replaces the estimate (the difference is sent as a charge with the next
`UsageReport`).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from llmrelay.config.resolved import ResolvedLimits
from llmrelay.control import LeaseAsk, LeaseGrant, LeaseRecall, LeaseReturn, Message
from llmrelay.limits.estimate import checked_chars_per_token, estimate, estimate_parsed, model_of, parse_body
from llmrelay.limits.headers import rate_limit_headers, retry_after_header
from llmrelay.limits.leases import Admission, LeaseBook
from llmrelay.limits.rules import MODEL_UNREAD, RequestFacts, RuleSet
from llmrelay.observe.stream_usage import InjectedUsageFilter, add_include_usage
from llmrelay.limits.types import CounterAsk, CounterCharge, CounterId, Limits, Units
from llmrelay.observe.requestinfo import MAX_MODEL_LENGTH, path_model, request_model
from llmrelay.proto.messages import Headers, RequestHead
from llmrelay.relay.admission_outcomes import WAIT, LimitRefusal, Wait, counts_tokens
from llmrelay.relay.replay import ReplayableBody

if TYPE_CHECKING:
    from llmrelay.relay.accesslog import AccessRecord
    from llmrelay.relay.runtime import EndpointRuntime
    from llmrelay.relay.upstreams import UpstreamRuntime

log = logging.getLogger("llmrelay.limits")

ASK_TIMEOUT = 2.0  # the supervisor answers an ask in well under a millisecond; past this it is stuck
ASK_ROUNDS = 3  # grants taken by concurrent requests of this worker before this one could use them


class _PendingAsk:
    __slots__ = ("done", "answer")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: LeaseGrant | None = None


class Admissions:
    def __init__(self) -> None:
        self.settings = ResolvedLimits()
        self.rules = RuleSet([])
        self.active = False  # some rule exists (checked on every request: an attribute, not a call)
        self.book = LeaseBook()
        self.refusals: dict[tuple[str, str], int] = {}  # (endpoint, rule) -> requests refused (metrics)
        self._send: Callable[[Message], Awaitable[None]] | None = None
        self._pending: dict[int, _PendingAsk] = {}
        self._asking: dict[CounterId, trio.Event] = {}  # counters with an ask under way, set when answered
        self._waiting: dict[CounterId, int] = {}  # requests waiting for that ask, by counter
        self.nursery: trio.Nursery | None = None  # where asks ahead of need run (the worker's accounts task)
        self._ids = itertools.count(1)
        self._per_token: dict[str, float] = {}  # chars per token by provider, for this config
        self._token_limits: set[Limits] = set()  # the rules' limits that count tokens (others need no estimate)
        self._fused = False  # every rule counts tokens: a held body is decoded once for model and estimate

    def configure(self, settings: ResolvedLimits) -> None:
        """The `[limits]` of the config in service. Leases of rules that changed or went are given
        back when they expire (their counters are no longer asked for)."""
        self.settings = settings
        self.rules = RuleSet(settings.rules)
        self.active = bool(settings.rules)
        self._per_token = {}
        self._token_limits = {rule.limits for rule in settings.rules if counts_tokens(rule.limits)}
        self._fused = bool(settings.rules) and all(counts_tokens(rule.limits) for rule in settings.rules)

    def attach(self, send: Callable[[Message], Awaitable[None]]) -> None:
        """How to reach the supervisor (the control channel's send)."""
        self._send = send

    # -- the request path -------------------------------------------------------------------------
    def admit_now(
        self,
        endpoint: EndpointRuntime,
        upstream: UpstreamRuntime,
        record: AccessRecord,
        head: RequestHead,
        path: str,
        body: bytes | ReplayableBody,
    ) -> Admission | LimitRefusal | None | Wait:
        """The usual case, without waiting: the request's model goes into `record.model` (when every
        rule counts tokens, one decode of a held body gives the model and the token estimate), then
        it is admitted from this worker's leases. `WAIT` when it cannot be decided without waiting
        (a body to read ahead for its model, a lease that falls short): then `admit_request`."""
        held = body if isinstance(body, bytes) else None
        parsed = None
        if held and self._fused:
            parsed = parse_body(held)
        if parsed is None:
            model = request_model(path, held or b"")
        else:
            model = path_model(path) if "models/" in path else None
            if model is None:
                model = model_of(parsed, MAX_MODEL_LENGTH)
        record.model = model
        if model is None and held is None and self.rules.need_model:
            return WAIT
        counters = self.rules.counters(
            RequestFacts(endpoint.name, model, record.relay_key, record.client, upstream.name, head.headers)
        )
        if not counters:
            return None
        if parsed is None:
            need = self._need(counters, endpoint.provider, held, head.body_length)
        else:  # (every rule counts tokens)
            need = Units(requests=1, concurrent=1)
            need.input_tokens, need.output_tokens = estimate_parsed(parsed, self._checked_per_token(endpoint.provider))
        return self._from_leases(counters, need) or WAIT

    async def admit_request(
        self,
        endpoint: EndpointRuntime,
        upstream: UpstreamRuntime,
        record: AccessRecord,
        head: RequestHead,
        path: str,
        body: bytes | ReplayableBody,
    ) -> tuple[Admission | LimitRefusal | None, bytes | ReplayableBody]:
        """`admit` for a request about to be forwarded, and its body: a body too large to be held
        whole is read ahead (within its replay limit) when a rule looks at models, and then returned
        whole; one too large even for that matches every rule naming models."""
        model = record.model
        if model is None and isinstance(body, ReplayableBody) and self.rules.need_model:
            whole = await body.read_whole(upstream.max_body_size)
            if whole is None:
                model = MODEL_UNREAD
            else:
                body = whole
                model = record.model = request_model(path, whole)
        facts = RequestFacts(endpoint.name, model, record.relay_key, record.client, upstream.name, head.headers)
        counters = self.rules.counters(facts)
        if not counters:
            return None, body
        need = self._need(counters, endpoint.provider, body if isinstance(body, bytes) else None, head.body_length)
        admission = self._from_leases(counters, need)
        if admission is not None:
            return admission, body
        return await self._admit_waiting(facts, counters, need), body

    async def admit(
        self, facts: RequestFacts, provider: str, body: bytes | None, body_length: int | None
    ) -> Admission | LimitRefusal | None:
        """Admit a request (an `Admission` to `finish` later), refuse it, or None: no rule applies."""
        counters = self.rules.counters(facts)
        if not counters:
            return None
        return await self._admit_waiting(facts, counters, self._need(counters, provider, body, body_length))

    def _from_leases(self, counters: list[tuple[CounterId, Limits]], need: Units) -> Admission | None:
        """Admitted from this worker's leases (asking ahead for those left low), or None: one falls short."""
        now = time.time()
        result = self.book.admit(counters, need, now)
        if not isinstance(result, Admission):
            return None
        if result.low and self.nursery is not None:
            self._refill_soon(result, now)
        return result

    def _need(self, counters: list[tuple[CounterId, Limits]], provider: str, body: bytes | None, body_length: int | None) -> Units:
        """What the request takes: one request, one slot, and its estimated tokens when a rule counts them."""
        need = Units(requests=1, concurrent=1)
        token_limits = self._token_limits
        if counters[0][1] in token_limits or (len(counters) > 1 and any(limits in token_limits for _, limits in counters)):
            need.input_tokens, need.output_tokens = estimate(provider, body, body_length, self._checked_per_token(provider))
        return need

    def _checked_per_token(self, provider: str) -> float:
        per_token = self._per_token.get(provider)
        if per_token is None:
            per_token = self._per_token[provider] = checked_chars_per_token(self.settings.chars_per_token_for(provider))
        return per_token

    def _refill_soon(self, admission: Admission, now: float) -> None:
        """Ask ahead for the leases `admission` left low, unless an ask for them is under way."""
        assert self.nursery is not None
        refills = [ask for ask in self.book.refills(admission, now) if ask.counter not in self._asking]
        if refills:
            self._mark_asking(refills)
            self.nursery.start_soon(self._refill, refills)

    async def _admit_waiting(
        self, facts: RequestFacts, counters: list[tuple[CounterId, Limits]], need: Units
    ) -> Admission | LimitRefusal | None:
        """Admit from the leases, asking the supervisor (and waiting for its answer) when they fall short."""
        own_units_returned = False
        rounds = 0
        deadline = 0.0  # (set when this request first has to wait)
        while rounds < ASK_ROUNDS:
            now = time.time()
            result = self.book.admit(counters, need, now)
            if isinstance(result, Admission):
                if result.low and self.nursery is not None:
                    self._refill_soon(result, now)
                return result
            if not deadline:
                deadline = trio.current_time() + ASK_TIMEOUT
            under_way = [self._asking[ask.counter] for ask in result if ask.counter in self._asking]
            if under_way:  # another request of this worker asks for these counters now: its grant may do
                waiting = self._waiting
                for ask in result:
                    waiting[ask.counter] = waiting.get(ask.counter, 0) + 1
                try:
                    with trio.move_on_at(deadline):
                        await under_way[0].wait()
                finally:
                    for ask in result:
                        if waiting[ask.counter] > 1:
                            waiting[ask.counter] -= 1
                        else:
                            del waiting[ask.counter]
                if trio.current_time() < deadline:
                    continue
                return self._refused_busy(facts.endpoint, counters)
            rounds += 1
            answer = await self._ask([self._with_waiters(ask) for ask in result])
            if answer is None or answer.backend_error:  # the counters' owner cannot be asked
                if self.settings.on_backend_error != "allow":
                    return LimitRefusal(503, "rate limits cannot be checked right now; try again shortly", [(b"retry-after", b"1")], "-")
                if answer is None:
                    return None  # admitted with nothing to count it against
            if not self.book.granted(result, answer.grants, time.time()):
                if answer.backend_error or any(grant.retry_after > 0 for grant in answer.grants):
                    if not own_units_returned and await self._return_own(result, answer):
                        own_units_returned = True
                        continue  # (what this worker held unused is back with the counters: ask again)
                    return self._refused(facts.endpoint, result, answer)
                # (granted, but a lease lapsed meanwhile: ask again)
        return self._refused_busy(facts.endpoint, counters)

    def stream_usage_asked(self, provider: str, path: str, body: bytes) -> tuple[bytes, InjectedUsageFilter] | None:
        """With `limits.inject_stream_usage`: an OpenAI streamed chat completion that did not ask for
        its usage gets `stream_options.include_usage` (the body to send instead), and the filter
        that keeps the extra usage out of what the client sees."""
        if not self.settings.inject_stream_usage or provider != "openai" or not path.endswith("/chat/completions"):
            return None
        asked = add_include_usage(body)
        return None if asked is None else (asked, InjectedUsageFilter())

    def finish(self, admission: Admission | None, usage: dict[str, int] | None) -> None:
        """The request ended (on any path): give back its concurrency unit, and correct the
        estimate with the real usage when the provider reported it."""
        if admission is None:
            return
        if usage is None:
            self.book.finish(admission, None, None, time.time())
        else:
            self.book.finish(admission, usage.get("input", 0), usage.get("output", 0), time.time())

    def success_headers(self, admission: Admission | None) -> Headers:
        """x-ratelimit-* of the rule closest to refusing, for a successful answer."""
        if admission is None:
            return []
        parts = admission.parts
        if len(parts) == 1:  # (one rule: the usual case, no comparison to make)
            lease = parts[0].lease
            template = lease.template
            if template is None or template.state is not lease.state:
                return lease.headers()
            return template.render(lease.requests, lease.input_tokens, lease.output_tokens)
        tightest = admission.tightest()
        return [] if tightest is None else rate_limit_headers(*tightest)

    # -- the supervisor's answers -----------------------------------------------------------------
    def granted(self, message: LeaseGrant) -> None:
        pending = self._pending.pop(message.ask_id, None)
        if pending is not None:
            pending.answer = message
            pending.done.set()

    def recalled(self, message: LeaseRecall) -> LeaseReturn:
        """Give back the unused units of the recalled counters (an empty return still answers: the
        supervisor waits for every recalled worker before it asks the counters again)."""
        return LeaseReturn(returns=self.book.recall(message.counters))

    def expired(self) -> LeaseReturn | None:
        returns = self.book.expired(time.time())
        return LeaseReturn(returns=returns) if returns else None

    def release_all(self) -> LeaseReturn | None:
        returns = self.book.release_all()
        return LeaseReturn(returns=returns) if returns else None

    def take_charges(self) -> list[CounterCharge]:
        return self.book.take_charges()

    # -- inside -----------------------------------------------------------------------------------
    async def _ask(self, asks: list[CounterAsk]) -> LeaseGrant | None:
        """Send `asks` and wait for the answer (None: none within ASK_TIMEOUT). While it is under
        way, other requests of this worker needing these counters wait for it instead of asking too
        (one ask in flight per counter; its `want` covers the requests to come)."""
        if self._send is None:
            return None
        self._mark_asking(asks)
        try:
            answer = await self._exchange(asks)
        finally:
            self._done_asking(asks)
        if answer is None:
            log.warning("the supervisor did not answer a limits lease ask within %.0f s", ASK_TIMEOUT)
        return answer

    def _with_waiters(self, ask: CounterAsk) -> CounterAsk:
        """An ask that also wants units for the requests of this worker waiting on the same counter
        (a burst before the worker knows its rate): the owner still grants no more than its share
        of what is left, so this never admits more than the limit."""
        waiting = self._waiting.get(ask.counter, 0)
        need = ask.need
        if not waiting or ask.want.requests >= need.requests * (waiting + 1):
            return ask
        factor = waiting + 1
        want = Units(need.requests * factor, need.input_tokens * factor, need.output_tokens * factor, ask.want.concurrent)
        return CounterAsk(counter=ask.counter, limits=ask.limits, need=need, want=want)

    async def _refill(self, asks: list[CounterAsk]) -> None:
        """Ask ahead for leases running low (`LeaseBook.refills`); no request waits on it."""
        try:
            answer = await self._exchange(asks)
            if answer is not None and not answer.backend_error:
                self.book.granted(asks, answer.grants, time.time())
        finally:
            self._done_asking(asks)

    async def _exchange(self, asks: list[CounterAsk]) -> LeaseGrant | None:
        assert self._send is not None
        ask_id = next(self._ids)
        pending = self._pending[ask_id] = _PendingAsk()
        try:
            with trio.move_on_after(ASK_TIMEOUT):
                await self._send(LeaseAsk(ask_id=ask_id, asks=asks))
                await pending.done.wait()
        finally:
            self._pending.pop(ask_id, None)
        return pending.answer

    def _mark_asking(self, asks: list[CounterAsk]) -> None:
        event = trio.Event()
        for ask in asks:
            self._asking.setdefault(ask.counter, event)

    def _done_asking(self, asks: list[CounterAsk]) -> None:
        for ask in asks:
            event = self._asking.pop(ask.counter, None)
            if event is not None:
                event.set()

    async def _return_own(self, asks: list[CounterAsk], answer: LeaseGrant) -> bool:
        """A refusal while this worker holds unused units of the refused counters (a lease smaller
        than this request, tokens an earlier response did not use): give them back, so that the
        next ask counts them. False when there was nothing to give back."""
        refused = [ask.counter for ask, grant in zip(asks, answer.grants) if grant.retry_after > 0]
        returns = self.book.recall(refused)
        if not returns or self._send is None:
            return False
        await self._send(LeaseReturn(returns=returns))
        return True

    def _refused(self, endpoint: str, asks: list[CounterAsk], answer: LeaseGrant) -> LimitRefusal:
        worst = max(zip(asks, answer.grants), key=lambda pair: pair[1].retry_after)
        ask, grant = worst
        rule = ask.counter.rule
        self.refusals[(endpoint, rule)] = self.refusals.get((endpoint, rule), 0) + 1
        headers = retry_after_header(grant.retry_after) + rate_limit_headers(ask.limits, grant.state)
        return LimitRefusal(429, f"rate limit of rule {rule!r} reached; retry after {grant.retry_after:.0f} s", headers, rule)

    def _refused_busy(self, endpoint: str, counters: list[tuple[CounterId, Limits]]) -> LimitRefusal:
        rule = counters[0][0].rule
        self.refusals[(endpoint, rule)] = self.refusals.get((endpoint, rule), 0) + 1
        return LimitRefusal(429, f"rate limit of rule {rule!r} reached; retry shortly", retry_after_header(1.0), rule)
