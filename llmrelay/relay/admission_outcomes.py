"""What an admission decides besides an `Admission`: a refusal (429 or 503, with its headers), or
that it cannot decide without waiting (`WAIT`)."""

from __future__ import annotations

from llmrelay.limits.headers import token_limit
from llmrelay.limits.types import Limits
from llmrelay.proto.messages import Headers


def counts_tokens(limits: Limits) -> bool:
    return bool(token_limit(limits))


class Wait:
    """`admit_now` cannot decide without waiting: `admit_request` decides."""


WAIT = Wait()


class LimitRefusal:
    """A request the limits refuse: 429 (a rule) or 503 (the limits backend cannot be asked and
    `on_backend_error = "deny"`), with its headers."""

    __slots__ = ("status", "message", "headers", "rule")

    def __init__(self, status: int, message: str, headers: Headers, rule: str) -> None:
        self.status = status
        self.message = message
        self.headers = headers
        self.rule = rule


__all__ = ["WAIT", "LimitRefusal", "Wait", "counts_tokens"]
