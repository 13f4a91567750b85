"""`Retry-After` (RFC 9110 section 10.2.3): delay-seconds or an HTTP-date, as seconds from now.

Used when a provider answers 429 (and 503): the key or upstream cools down that long. A missing,
malformed or past value gives the caller's default; a very long one is capped, so that one odd answer
cannot take a key out of rotation for days.
"""

from __future__ import annotations

from datetime import timezone
from email.utils import parsedate_to_datetime

DEFAULT_RETRY_AFTER = 10.0
MAX_RETRY_AFTER = 3600.0


def retry_after_seconds(
    value: bytes | None, now: float, default: float = DEFAULT_RETRY_AFTER, limit: float = MAX_RETRY_AFTER
) -> float:
    """Seconds to wait from `now` (a Unix time), by a Retry-After field value as received."""
    if value is None:
        return default
    text = value.strip().decode("latin-1")
    if text.isdigit():  # delay-seconds: 1*DIGIT
        return min(float(int(text)), limit)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return default
    if when.tzinfo is None:  # asctime-date carries no zone: HTTP-dates are all in GMT
        when = when.replace(tzinfo=timezone.utc)
    delay = when.timestamp() - now
    if delay <= 0:
        return default
    return min(delay, limit)
