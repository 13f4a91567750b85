"""The rate-limit headers of an answer, under OpenAI's names whatever the provider (SDKs and tools
already read them): `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the rule closest to
refusing, and `retry-after` on a refusal. Only the dimensions a rule limits appear.

The tokens trio shows the first limited of tokens per minute, input tokens per minute, output tokens
per minute and tokens per day; its `remaining` is the least left on any token dimension (what can
still be used before one of them refuses). Resets are in OpenAI's duration format ("1s", "6m0s",
"20ms").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

from llmrelay.limits.types import CounterState, Limits

Headers = list[tuple[bytes, bytes]]


def token_limit(limits: Limits) -> int:
    """The token limit the headers show (0: tokens are not limited)."""
    return limits.tokens_per_minute or limits.input_tokens_per_minute or limits.output_tokens_per_minute or limits.tokens_per_day


def tokens_left(limits: Limits, state: CounterState) -> int:
    """The least left on any token dimension the rule limits."""
    left = state.remaining
    both = limits.tokens_per_minute > 0 or limits.tokens_per_day > 0
    if both or (limits.input_tokens_per_minute and limits.output_tokens_per_minute):
        return min(left.input_tokens, left.output_tokens)
    return left.input_tokens if limits.input_tokens_per_minute else left.output_tokens


def duration(seconds: float) -> str:
    """OpenAI's (Go's) duration text, to the millisecond: 0.02 -> "20ms", 1 -> "1s", 1.5 -> "1.5s",
    360 -> "6m0s", 3725 -> "1h2m5s"."""
    return _duration_ms(max(0, math.ceil(seconds * 1000 - 1e-6)))


@functools.lru_cache(maxsize=4096)
def _duration_ms(ms: int) -> str:
    """(Resets repeat: a busy counter's are a few milliseconds, over and over.)"""
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, frac = divmod(ms, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_limit_headers(limits: Limits, state: CounterState) -> Headers:
    headers: Headers = []
    if limits.requests_per_minute:
        headers.append((b"x-ratelimit-limit-requests", _number(limits.requests_per_minute)))
        headers.append((b"x-ratelimit-remaining-requests", b"%d" % max(0, state.remaining.requests)))
        headers.append((b"x-ratelimit-reset-requests", duration(state.reset_requests).encode()))
    tokens = token_limit(limits)
    if tokens:
        headers.append((b"x-ratelimit-limit-tokens", _number(tokens)))
        headers.append((b"x-ratelimit-remaining-tokens", b"%d" % max(0, tokens_left(limits, state))))
        headers.append((b"x-ratelimit-reset-tokens", duration(state.reset_tokens).encode()))
    return headers


class HeaderTemplate:
    """The headers of one counter as of one answer of its owner (`state`): what stays fixed until
    the next answer is made once (limits, resets), and `render` fills in what this worker still
    holds, the part that changes with every request. `render(r, i, o)` equals
    `rate_limit_headers(limits, state + (r, i, o))`."""

    __slots__ = ("state", "requests", "tokens", "token_mode")

    def __init__(self, limits: Limits, state: CounterState) -> None:
        self.state = state
        left = state.remaining
        self.requests: tuple[tuple[bytes, bytes], tuple[bytes, bytes], int] | None = None
        if limits.requests_per_minute:
            self.requests = (
                (b"x-ratelimit-limit-requests", _number(limits.requests_per_minute)),
                (b"x-ratelimit-reset-requests", duration(state.reset_requests).encode()),
                left.requests,
            )
        self.tokens: tuple[tuple[bytes, bytes], tuple[bytes, bytes], int, int] | None = None
        self.token_mode = 0  # 0: the least of input and output left; 1: input; 2: output
        tokens = token_limit(limits)
        if tokens:
            self.tokens = (
                (b"x-ratelimit-limit-tokens", _number(tokens)),
                (b"x-ratelimit-reset-tokens", duration(state.reset_tokens).encode()),
                left.input_tokens,
                left.output_tokens,
            )
            both = limits.tokens_per_minute > 0 or limits.tokens_per_day > 0
            if not (both or (limits.input_tokens_per_minute and limits.output_tokens_per_minute)):
                self.token_mode = 1 if limits.input_tokens_per_minute else 2

    def render(self, requests: int, input_tokens: int, output_tokens: int) -> Headers:
        fixed, tokens = self.requests, self.tokens
        if tokens is not None:
            mode = self.token_mode
            if mode == 0:
                left_in, left_out = tokens[2] + input_tokens, tokens[3] + output_tokens
                left = left_in if left_in < left_out else left_out
            else:
                left = tokens[2] + input_tokens if mode == 1 else tokens[3] + output_tokens
            token_left = (b"x-ratelimit-remaining-tokens", b"%d" % (left if left > 0 else 0))
            if fixed is None:
                return [tokens[0], token_left, tokens[1]]
            left = fixed[2] + requests
            return [
                fixed[0], (b"x-ratelimit-remaining-requests", b"%d" % (left if left > 0 else 0)), fixed[1],
                tokens[0], token_left, tokens[1],
            ]  # fmt: skip
        if fixed is None:
            return []
        left = fixed[2] + requests
        return [fixed[0], (b"x-ratelimit-remaining-requests", b"%d" % (left if left > 0 else 0)), fixed[1]]


@functools.lru_cache(maxsize=256)
def _number(value: int) -> bytes:
    """A limit as header bytes (limits are few and fixed: made once)."""
    return b"%d" % value


def retry_after_header(seconds: float) -> Headers:
    """`retry-after` in whole seconds, rounded up, at least 1 (0 would invite an immediate retry)."""
    return [(b"retry-after", str(max(1, math.ceil(seconds - 1e-9))).encode())]


def closeness(limits: Limits, state: CounterState) -> float:
    """The lowest fraction left on any limited dimension (0: refusing; 1: untouched)."""
    fraction = 1.0
    left = state.remaining
    if limits.requests_per_minute:
        fraction = min(fraction, left.requests / limits.requests_per_minute)
    tokens = token_limit(limits)
    if tokens:
        fraction = min(fraction, tokens_left(limits, state) / tokens)
    if limits.concurrent_requests:
        fraction = min(fraction, left.concurrent / limits.concurrent_requests)
    return fraction


def tightest(states: Iterable[tuple[Limits, CounterState]]) -> tuple[Limits, CounterState] | None:
    """The counter closest to refusing (the lowest fraction left), the first of equals; None for none.
    Counters whose rule shows no header (a concurrency-only rule) are passed over when others show."""
    best: tuple[Limits, CounterState] | None = None
    best_key = (2, 2.0)
    for limits, state in states:
        shows = 0 if (limits.requests_per_minute or token_limit(limits)) else 1
        key = (shows, closeness(limits, state))
        if key < best_key:
            best, best_key = (limits, state), key
    return best


__all__ = ["HeaderTemplate", "closeness", "duration", "rate_limit_headers", "retry_after_header", "tightest", "token_limit", "tokens_left"]
