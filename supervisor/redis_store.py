"""The counters and the usage accounts in Redis, shared by every machine (`limits.backend = "redis"`).

`RedisStore` implements `CounterStore` and `UsageStore` (llmrelay/limits/store.py) with the
arithmetic of the in-memory ledger, run as Lua scripts inside Redis (supervisor/redis_scripts/): one
counter is one hash, `llmrelay:limit:{<rule>:<version>:<key>}`, whose braces are the Redis Cluster
hash tag, so a script never spans slots. A batch of asks is one pipeline of per-counter script calls:
one round trip, whatever the number of counters.

Holders are this supervisor's workers (`"<instance>:w<pid>"`; the instance holds the host name, the
supervisor's pid and a random part), so only this process ever touches or drops them: it keeps, in
its own memory, the counters each holder holds units of or was lately active in. When this process
dies, its holders stop being touched and every script that sees them after `holder_ttl` frees their
units. (So no per-holder set lives in Redis: it would be another Cluster slot, written on every ask.)

The connection (`RedisConnection`) is one socket speaking RESP (llmrelay.limits.resp), used by one
call at a time under a lock; waiting for the lock and the call itself are each bounded by
`timeout`. Losing it raises `StoreUnavailable` (the message names the server, never the password);
the next call reconnects, after a backoff of 0.1 s doubling to 5 s during which calls fail at once.
"""

from __future__ import annotations

import itertools
import time

import msgspec

from llmrelay.limits.resp import Argument, ErrorReply, Reply
from llmrelay.limits.store import StoreUnavailable
from llmrelay.limits.types import (
    HOLDER_TTL,
    CounterAsk,
    CounterCharge,
    CounterGrant,
    CounterId,
    CounterReturn,
    CounterState,
    Limits,
    Units,
    UsageRow,
)
from supervisor.redis_scripts import COUNTER, REPLY_LENGTH, USAGE
from supervisor.redis_connection import TIMEOUT, RedisAddress, RedisConnection, ScriptCall, parse_redis_url

ACTIVE_WINDOW = 60.0  # a holder granted units this recently counts among a counter's active ones
STATES_WINDOW = 300.0  # `states()` reports the counters this store used within this many seconds
USAGE_BATCH = 500  # usage increments per script call (a pipeline of calls is still one round trip)
FIELD_SEPARATOR = "\x1f"
USAGE_FIELDS = ("requests", "input_tokens", "output_tokens", "errors")


def counter_key(counter: CounterId) -> str:
    return f"llmrelay:limit:{{{counter.rule}:{counter.version}:{counter.key}}}"


def _limit_args(limits: Limits) -> list[Argument]:
    return [
        limits.requests_per_minute,
        limits.tokens_per_minute,
        limits.input_tokens_per_minute,
        limits.output_tokens_per_minute,
        limits.concurrent_requests,
        limits.tokens_per_day,
    ]


def _units_args(units: Units) -> list[Argument]:
    return [units.requests, units.input_tokens, units.output_tokens, units.concurrent]


def _refused(server: str, reply: ErrorReply) -> StoreUnavailable:
    message = reply.message
    if reply.code == "NOAUTH" or "unauthenticated" in message:
        message += " (the server requires a password: give it in redis_url)"
    return StoreUnavailable(f"redis {server}: {message}")


def _numbers(reply: Reply, server: str) -> list[int]:
    if isinstance(reply, ErrorReply):
        raise _refused(server, reply)
    if not isinstance(reply, list) or len(reply) != REPLY_LENGTH or not all(isinstance(v, int) for v in reply):
        raise StoreUnavailable(f"redis {server}: unexpected reply from the counter script")
    return [v for v in reply if isinstance(v, int)]


def _state(limits: Limits, numbers: list[int]) -> CounterState:
    """The script's figures as the ledger states them (llmrelay/limits/ledger.py): what is left of
    input tokens is the least of the tokens, input tokens and day dimensions, of output tokens the
    least of tokens, output tokens and day; `reset_tokens` follows the first limited of tokens, input
    tokens, output tokens, day (the one the headers show)."""
    left_requests, left_tokens, left_input, left_output, left_concurrent, left_day = numbers[5:11]
    full_requests, full_tokens, full_input, full_output, to_midnight = numbers[11:16]
    both = [left for limit, left in ((limits.tokens_per_minute, left_tokens), (limits.tokens_per_day, left_day)) if limit > 0]
    input_left = min([*both, left_input] if limits.input_tokens_per_minute > 0 else both, default=0)
    output_left = min([*both, left_output] if limits.output_tokens_per_minute > 0 else both, default=0)
    shown = 0
    for limit, reset in (
        (limits.tokens_per_minute, full_tokens),
        (limits.input_tokens_per_minute, full_input),
        (limits.output_tokens_per_minute, full_output),
        (limits.tokens_per_day, to_midnight),
    ):
        if limit > 0:
            shown = reset
            break
    remaining = Units(
        requests=max(0, left_requests),
        input_tokens=max(0, input_left),
        output_tokens=max(0, output_left),
        concurrent=max(0, left_concurrent),
    )
    return CounterState(remaining=remaining, reset_requests=full_requests / 1000, reset_tokens=shown / 1000)


class _Known(msgspec.Struct):
    counter: CounterId
    limits: Limits
    used: float  # time.monotonic() of the last call about it


class _Held(msgspec.Struct):
    """What one holder has in one counter, as the last script about both said."""

    units: int = 0  # concurrency units held
    granted: float = 0.0  # time.monotonic() of the last grant (the holder is active for 60 s)


class RedisStore:
    """`CounterStore` and `UsageStore` in Redis (see the module's docstring)."""

    def __init__(self, url: str, instance: str, *, holder_ttl: float = HOLDER_TTL, timeout: float = TIMEOUT) -> None:
        self.instance = instance
        self.holder_ttl = holder_ttl
        self.usage_key = "llmrelay:usage"
        try:
            self._address: RedisAddress | None = parse_redis_url(url)
            self._url_error = ""
        except ValueError as exc:
            # A reload must not fail here: every call says why instead (the config checks URLs).
            self._address, self._url_error = None, str(exc)
        self._connection = RedisConnection(self._address, timeout) if self._address else None
        self._known: dict[str, _Known] = {}
        # holder → counter key → what it holds there: what `touch` renews and `drop_holder` frees.
        self._holders: dict[str, dict[str, _Held]] = {}
        self._pruned = time.monotonic()
        self.clock = 0.0  # Redis's time at the last counter script (seconds)
        # Asks whose grants the caller never learnt of (a lost reply, a batch that failed): undone
        # at the start of the next call that reaches the server, before any new ask.
        self._undo: dict[tuple[str, str], ScriptCall] = {}
        self._ask_ids = itertools.count(1)

    @property
    def server(self) -> str:
        return self._address.shown if self._address else "(invalid redis_url)"

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.aclose()

    # -- CounterStore -----------------------------------------------------------------------------
    async def ask(self, holder: str, asks: list[CounterAsk]) -> list[CounterGrant]:
        """One pipeline of per-counter scripts. If it fails, no grant of it reaches the caller, so
        every ask of it that may have run is undone (see `_undo`): a concurrency unit granted to a
        reply that was lost would otherwise be held, and touched, for as long as the holder lives."""
        calls, undo = [], []
        ask_id = f"{next(self._ask_ids)}"
        for ask in asks:
            key = self._remember(ask.counter, ask.limits)
            self._holders.setdefault(holder, {}).setdefault(key, _Held())  # (for `drop_holder`)
            args = ["ask", holder, self._ttl(), *_limit_args(ask.limits), *_units_args(ask.need), *_units_args(ask.want), ask_id]
            calls.append(ScriptCall(COUNTER, key, args))
            undo.append(ScriptCall(COUNTER, key, ["undo", holder, self._ttl(), *_limit_args(ask.limits), ask_id]))
        sent: list[bool] = []
        try:
            replies = await self._run(calls, sent)
        except BaseException:
            if sent:  # (else it failed before anything was written: nothing ran)
                self._undo.update(((holder, call.key), call) for call in undo)
            raise
        grants, failure = [], None
        for ask, call, reply in zip(asks, calls, replies):
            try:
                numbers = _numbers(reply, self.server)
            except StoreUnavailable as exc:
                failure = failure or exc
                continue
            self.clock = numbers[17] / 1_000_000
            self._note(holder, call.key, numbers[16], granted=numbers[4] == 0)
            granted = Units(requests=numbers[0], input_tokens=numbers[1], output_tokens=numbers[2], concurrent=numbers[3])
            grants.append(CounterGrant(ask.counter, granted, _state(ask.limits, numbers), retry_after=numbers[4] / 1000))
        if failure is not None:
            self._undo.update(((holder, call.key), call) for call in undo)
            raise failure
        return grants

    async def give_back(self, holder: str, returns: list[CounterReturn]) -> None:
        keep = [r for r in returns if r.units != Units()]
        keys = [self._remember(r.counter, r.limits) for r in keep]
        calls = [
            ScriptCall(COUNTER, key, ["give", holder, self._ttl(), *_limit_args(r.limits), *_units_args(r.units)])
            for key, r in zip(keys, keep)
        ]
        for key, reply in zip(keys, await self._run(calls)):
            numbers = _numbers(reply, self.server)
            self.clock = numbers[17] / 1_000_000
            self._note(holder, key, numbers[16], granted=False)

    async def charge(self, charges: list[CounterCharge]) -> None:
        calls = [
            ScriptCall(
                COUNTER,
                self._remember(c.counter, c.limits),
                ["charge", "", self._ttl(), *_limit_args(c.limits), c.input_tokens, c.output_tokens],
            )
            for c in charges
            if c.input_tokens or c.output_tokens
        ]
        for reply in await self._run(calls):
            self.clock = _numbers(reply, self.server)[17] / 1_000_000

    async def drop_holder(self, holder: str) -> None:
        keys = sorted(self._holders.pop(holder, {}))
        calls = [ScriptCall(COUNTER, key, ["drop", holder, self._ttl(), *_limit_args(self._limits(key))]) for key in keys]
        for reply in await self._run(calls):
            _numbers(reply, self.server)

    async def touch(self, holders: list[str]) -> None:
        calls = [
            ScriptCall(COUNTER, key, ["touch", holder, self._ttl(), *_limit_args(self._limits(key))])
            for holder in holders
            for key in self._renewed(holder)
        ]
        for reply in await self._run(calls):
            _numbers(reply, self.server)

    async def states(self) -> list[tuple[CounterId, CounterState]]:
        self._prune(force=True)
        known = list(self._known.items())
        calls = [ScriptCall(COUNTER, key, ["state", "", self._ttl(), *_limit_args(k.limits)]) for key, k in known]
        replies = await self._run(calls)
        return [(k.counter, _state(k.limits, _numbers(reply, self.server))) for (_, k), reply in zip(known, replies)]

    def retain(self, versions: set[tuple[str, str]]) -> None:
        self._known = {key: k for key, k in self._known.items() if (k.counter.rule, k.counter.version) in versions}

    # -- UsageStore -------------------------------------------------------------------------------
    async def add(self, rows: list[UsageRow]) -> None:
        increments: list[Argument] = []
        for row in rows:
            prefix = FIELD_SEPARATOR.join(_field_part(v) for v in (row.relay_key, row.endpoint, row.upstream, row.model))
            for name in USAGE_FIELDS:
                value = getattr(row, name)
                if value:
                    increments += [f"{prefix}{FIELD_SEPARATOR}{name}", value]
        step = 2 * USAGE_BATCH
        calls = [ScriptCall(USAGE, self.usage_key, increments[n : n + step]) for n in range(0, len(increments), step)]
        for reply in await self._run(calls):
            if isinstance(reply, ErrorReply):
                raise _refused(self.server, reply)
            if not isinstance(reply, int):
                raise StoreUnavailable(f"redis {self.server}: unexpected reply from the usage script")

    async def rows(self) -> list[UsageRow]:
        (reply,) = await self._execute([("HGETALL", self.usage_key)])
        if isinstance(reply, ErrorReply):
            raise _refused(self.server, reply)
        if not isinstance(reply, list) or len(reply) % 2 or not all(isinstance(v, bytes) for v in reply):
            raise StoreUnavailable(f"redis {self.server}: unexpected reply to HGETALL")
        sums: dict[tuple[str, str, str, str], dict[str, int]] = {}
        for field, value in zip(reply[::2], reply[1::2]):
            assert isinstance(field, bytes) and isinstance(value, bytes)
            parts = _text(field).split(FIELD_SEPARATOR)
            if len(parts) != 5 or parts[4] not in USAGE_FIELDS:
                continue  # not ours
            try:
                number = int(value)
            except ValueError:
                continue
            sums.setdefault((parts[0], parts[1], parts[2], parts[3]), {})[parts[4]] = number
        return [
            UsageRow(*names, requests=c.get("requests", 0), input_tokens=c.get("input_tokens", 0),
                     output_tokens=c.get("output_tokens", 0), errors=c.get("errors", 0))
            for names, c in sorted(sums.items())
        ]

    # -- helpers ----------------------------------------------------------------------------------
    def _note(self, holder: str, key: str, units: int, granted: bool) -> None:
        """What a script said `holder` holds in `key` now. (Replies are taken in the order the
        scripts ran: one connection, and nothing yields between a reply and this.)"""
        held = self._holders.setdefault(holder, {}).setdefault(key, _Held())
        held.units = units
        if granted:
            held.granted = time.monotonic()

    def _renewed(self, holder: str) -> list[str]:
        """The counters whose holdings of `holder` a touch renews; the others are forgotten once
        the holder is no longer among their active ones either."""
        counters = self._holders.get(holder)
        if counters is None:
            return []
        now = time.monotonic()
        for key in [key for key, held in counters.items() if not held.units and now - held.granted > ACTIVE_WINDOW]:
            del counters[key]
        if not counters:
            del self._holders[holder]
        return sorted(key for key, held in counters.items() if held.units)

    def _ttl(self) -> str:
        return f"{self.holder_ttl:.3f}"

    def _remember(self, counter: CounterId, limits: Limits) -> str:
        key = counter_key(counter)
        self._known[key] = _Known(counter, limits, time.monotonic())
        self._prune()
        return key

    def _limits(self, key: str) -> Limits:
        known = self._known.get(key)
        return known.limits if known is not None else Limits()

    def _prune(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._pruned > 60.0:
            self._pruned = now
            self._known = {key: k for key, k in self._known.items() if now - k.used <= STATES_WINDOW}

    def _connection_or_fail(self) -> RedisConnection:
        if self._connection is None:
            raise StoreUnavailable(self._url_error)
        return self._connection

    async def _run(self, calls: list[ScriptCall], sent: list[bool] | None = None) -> list[Reply]:
        """The calls' replies, after the pending undos (`sent` gets an entry once the connection is
        up and the calls are about to be written)."""
        if not calls and not self._undo:
            return []
        undone: list[ScriptCall] = []

        def undo_first() -> list[ScriptCall]:
            # Taken under the connection's lock: no ask can run between these and its own undo.
            if sent is not None:
                sent.append(True)
            undone[:] = self._undo.values()
            return list(undone)

        replies = await self._connection_or_fail().run_scripts(calls, undo_first)
        if undone:  # done (an undo that fails is not retried: it may have run)
            sent_ids = {id(call) for call in undone}
            self._undo = {where: call for where, call in self._undo.items() if id(call) not in sent_ids}
        return replies[len(undone) :]

    async def _execute(self, commands: list[tuple[Argument, ...]]) -> list[Reply]:
        return await self._connection_or_fail().execute(commands)


def _text(data: bytes) -> str:
    """The str a field was written from (lone surrogates included), or a readable one if it was
    not written by us."""
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


def _field_part(value: str) -> str:
    return value.replace(FIELD_SEPARATOR, " ")


__all__ = ["RedisAddress", "RedisConnection", "RedisStore", "counter_key", "parse_redis_url"]
