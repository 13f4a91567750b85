"""OpenAI and every OpenAI-compatible service (Groq, vLLM, ...): `Authorization: Bearer`, and
`{"error": {"message", "type", "param", "code"}}` bodies."""

from __future__ import annotations

import msgspec

from llmrelay.relay.providers.base import Provider

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    404: "not_found",
    405: "invalid_request_error",
    408: "timeout",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    501: "invalid_request_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}


def key_field(key: bytes) -> tuple[bytes, bytes]:
    return b"authorization", b"Bearer " + key


def error_body(status: int, message: str) -> bytes:
    kind = ERROR_TYPES.get(status, "server_error")
    return msgspec.json.encode({"error": {"message": message, "type": kind, "param": None, "code": kind}})


def sse_error_event(message: str) -> bytes:
    payload = {"error": {"message": message, "type": "server_error", "param": None, "code": "stream_cut"}}
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


PROVIDER = Provider("openai", key_field, error_body, sse_error_event)
