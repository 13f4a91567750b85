"""Google Gemini: `x-goog-api-key`, and `{"error": {"code", "message", "status"}}` bodies."""

from __future__ import annotations

import msgspec

from llmrelay.relay.providers.base import Provider

ERROR_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def key_field(key: bytes) -> tuple[bytes, bytes]:
    return b"x-goog-api-key", key


def error_body(status: int, message: str) -> bytes:
    state = ERROR_STATUS.get(status, "INTERNAL")
    return msgspec.json.encode({"error": {"code": status, "message": message, "status": state}})


def sse_error_event(message: str) -> bytes:
    payload = {"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}}
    return b"data: " + msgspec.json.encode(payload) + b"\r\n\r\n"


PROVIDER = Provider("gemini", key_field, error_body, sse_error_event)
