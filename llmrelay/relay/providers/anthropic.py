"""Anthropic: `x-api-key`, and `{"type": "error", "error": {"type", "message"}}` bodies and events."""

from __future__ import annotations

import msgspec

from llmrelay.relay.providers.base import Provider

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    501: "invalid_request_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def key_field(key: bytes) -> tuple[bytes, bytes]:
    return b"x-api-key", key


def error_body(status: int, message: str) -> bytes:
    kind = ERROR_TYPES.get(status, "api_error")
    return msgspec.json.encode({"type": "error", "error": {"type": kind, "message": message}})


def sse_error_event(message: str) -> bytes:
    payload = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
    return b"event: error\ndata: " + msgspec.json.encode(payload) + b"\n\n"


PROVIDER = Provider("anthropic", key_field, error_body, sse_error_event)
