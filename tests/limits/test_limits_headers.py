"""The x-ratelimit-* and retry-after headers, OpenAI's duration format, and the tightest counter."""

from __future__ import annotations

import pytest

from llmrelay.limits.headers import duration, rate_limit_headers, retry_after_header, tightest
from llmrelay.limits.types import CounterState, Limits, Units


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.0, "0s"),
        (-3.0, "0s"),
        (0.02, "20ms"),
        (0.0004, "1ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (8.64, "8.64s"),
        (59.869, "59.869s"),
        (60.0, "1m0s"),
        (360.0, "6m0s"),
        (361.25, "6m1.25s"),
        (3725.0, "1h2m5s"),
        (86400.0, "24h0m0s"),
    ],
)
def test_openai_duration_format(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_requests_and_tokens_trios() -> None:
    limits = Limits(requests_per_minute=600, tokens_per_minute=200_000)
    state = CounterState(remaining=Units(requests=599, input_tokens=199_000, output_tokens=199_500), reset_requests=0.1, reset_tokens=0.3)
    assert rate_limit_headers(limits, state) == [
        (b"x-ratelimit-limit-requests", b"600"),
        (b"x-ratelimit-remaining-requests", b"599"),
        (b"x-ratelimit-reset-requests", b"100ms"),
        (b"x-ratelimit-limit-tokens", b"200000"),
        (b"x-ratelimit-remaining-tokens", b"199000"),
        (b"x-ratelimit-reset-tokens", b"300ms"),
    ]


def test_only_the_limited_dimensions_appear() -> None:
    state = CounterState(remaining=Units(requests=3, concurrent=2))
    assert [name for name, _ in rate_limit_headers(Limits(requests_per_minute=5), state)] == [
        b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests", b"x-ratelimit-reset-requests",
    ]  # fmt: skip
    assert rate_limit_headers(Limits(concurrent_requests=4), state) == []


@pytest.mark.parametrize(
    "limits, remaining, shown",
    [
        (Limits(output_tokens_per_minute=1000), Units(input_tokens=0, output_tokens=700), (b"1000", b"700")),
        (Limits(input_tokens_per_minute=500), Units(input_tokens=300, output_tokens=0), (b"500", b"300")),
        (Limits(input_tokens_per_minute=500, output_tokens_per_minute=100), Units(input_tokens=300, output_tokens=40), (b"500", b"40")),
        (Limits(tokens_per_day=10_000), Units(input_tokens=9000, output_tokens=9000), (b"10000", b"9000")),
        (Limits(tokens_per_minute=1000), Units(input_tokens=-5, output_tokens=-5), (b"1000", b"0")),
    ],
)
def test_the_tokens_trio_of_each_token_dimension(limits: Limits, remaining: Units, shown: tuple[bytes, bytes]) -> None:
    headers = dict(rate_limit_headers(limits, CounterState(remaining=remaining, reset_tokens=2.0)))
    assert (headers[b"x-ratelimit-limit-tokens"], headers[b"x-ratelimit-remaining-tokens"]) == shown
    assert headers[b"x-ratelimit-reset-tokens"] == b"2s"


@pytest.mark.parametrize("seconds, value", [(0.0, b"1"), (0.2, b"1"), (1.0, b"1"), (1.01, b"2"), (39.5, b"40"), (86399.2, b"86400")])
def test_retry_after_whole_seconds_rounded_up_at_least_one(seconds: float, value: bytes) -> None:
    assert retry_after_header(seconds) == [(b"retry-after", value)]


def test_tightest_is_the_lowest_fraction_left() -> None:
    roomy = (Limits(requests_per_minute=100), CounterState(remaining=Units(requests=50)))
    tight = (Limits(tokens_per_minute=1000), CounterState(remaining=Units(input_tokens=100, output_tokens=100)))
    slots = (Limits(concurrent_requests=10), CounterState(remaining=Units(concurrent=0)))
    assert tightest([]) is None
    assert tightest([roomy]) == roomy
    assert tightest([roomy, tight]) == tight
    assert tightest([tight, roomy]) == tight
    # a concurrency-only rule shows no header: another rule's headers are shown instead
    assert tightest([slots, roomy]) == roomy
    assert tightest([slots]) == slots
    same = (Limits(requests_per_minute=100), CounterState(remaining=Units(requests=50), reset_requests=9.0))
    assert tightest([roomy, same]) == roomy  # the first of equals
    assert tightest([same, roomy]) == same


def test_the_relays_own_rate_limit_headers_replace_the_providers() -> None:
    from llmrelay.relay.headers import with_own_rate_limits

    own = [(b"x-ratelimit-limit-requests", b"10"), (b"x-ratelimit-remaining-requests", b"9")]
    plain = [(b"content-type", b"application/json"), (b"x-request-id", b"r1")]
    assert with_own_rate_limits(list(plain), own) == plain + own
    first = [(b"x-ratelimit-limit-tokens", b"999"), *plain, (b"x-ratelimit-reset-requests", b"1s")]
    assert with_own_rate_limits(first, own) == plain + own
    middle = [plain[0], (b"x-ratelimit-remaining-tokens", b"5"), plain[1]]
    assert with_own_rate_limits(middle, own) == plain + own
    # a name that merely contains the prefix is not one of them
    near = [(b"x-not-x-ratelimit-limit", b"1"), (b"x-ratelimitx", b"2")]
    assert with_own_rate_limits(list(near), own) == near + own
