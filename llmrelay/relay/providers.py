"""What differs between providers: how a key is presented, and the shape of an error body.

llmrelay's own errors (401, 404, 413, 502, 503, 504...) are written in the provider's shape so that
the provider's SDK shows them like its own: OpenAI's `{"error": {...}}`, Anthropic's
`{"type": "error", "error": {...}}`, Gemini's `{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

import functools

import msgspec

from llmrelay.proto.messages import Headers
from llmrelay.server.exchange import ErrorFormat

OPENAI_TYPES = {
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
ANTHROPIC_TYPES = {
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
GEMINI_STATUS = {
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


def error_body(provider: str, status: int, message: str) -> bytes:
    """A JSON error body in `provider`'s own shape."""
    if provider == "anthropic":
        kind = ANTHROPIC_TYPES.get(status, "api_error")
        return msgspec.json.encode({"type": "error", "error": {"type": kind, "message": message}})
    if provider == "gemini":
        state = GEMINI_STATUS.get(status, "INTERNAL")
        return msgspec.json.encode({"error": {"code": status, "message": message, "status": state}})
    kind = OPENAI_TYPES.get(status, "server_error")
    return msgspec.json.encode({"error": {"message": message, "type": kind, "param": None, "code": kind}})


def error_response(provider: str, status: int, message: str) -> tuple[Headers, bytes]:
    body = error_body(provider, status, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="llmrelay"'))
    return headers, body


@functools.cache
def error_format(provider: str) -> ErrorFormat:
    """`error_response` for one provider: what an adapter writes its own errors with once the route
    (and so the provider) is known."""
    return functools.partial(error_response, provider)


def inject_key(provider: str, headers: Headers, key: str) -> None:
    """Present the provider key the provider's own way (appends to `headers`)."""
    raw = key.encode("ascii", "strict")
    if provider == "anthropic":
        headers.append((b"x-api-key", raw))
    elif provider == "gemini":
        headers.append((b"x-goog-api-key", raw))
    else:
        headers.append((b"authorization", b"Bearer " + raw))


def sse_error_event(provider: str, message: str) -> bytes:
    """An SSE event that tells `provider`'s SDK the stream failed (used when a stream is cut)."""
    if provider == "anthropic":
        payload = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
        return b"event: error\ndata: " + msgspec.json.encode(payload) + b"\n\n"
    if provider == "gemini":
        payload = {"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}}
        return b"data: " + msgspec.json.encode(payload) + b"\r\n\r\n"
    payload = {"error": {"message": message, "type": "server_error", "param": None, "code": "stream_cut"}}
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"
