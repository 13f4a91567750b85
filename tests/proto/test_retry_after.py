"""`Retry-After` parsing: delay-seconds, the three HTTP-date forms, and what falls back to the default."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from llmrelay.proto.retry_after import DEFAULT_RETRY_AFTER, MAX_RETRY_AFTER, retry_after_seconds

NOW = 1_780_000_000.0  # a fixed Unix time


def test_delay_seconds() -> None:
    assert retry_after_seconds(b"2", NOW) == 2.0
    assert retry_after_seconds(b" 120 ", NOW) == 120.0
    assert retry_after_seconds(b"0", NOW) == 0.0
    assert retry_after_seconds(b"999999999", NOW) == MAX_RETRY_AFTER


def test_http_dates_in_every_form_rfc_9110_names() -> None:
    fixdate = formatdate(NOW + 30, usegmt=True).encode()  # IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
    assert retry_after_seconds(fixdate, NOW) == pytest.approx(30.0)
    assert retry_after_seconds(b"Sunday, 06-Nov-94 08:49:37 GMT", 784111757.0) == pytest.approx(20.0)  # RFC 850
    assert retry_after_seconds(b"Sun Nov  6 08:49:37 1994", 784111757.0) == pytest.approx(20.0)  # asctime, in GMT


@pytest.mark.parametrize("value", [None, b"", b"soon", b"-5", b"1.5", b"Sun, 06 Nov 1994 08:49:37 GMT"])
def test_missing_malformed_or_past_values_give_the_default(value: bytes | None) -> None:
    assert retry_after_seconds(value, NOW) == DEFAULT_RETRY_AFTER
    assert retry_after_seconds(value, NOW, default=3.0) == 3.0
