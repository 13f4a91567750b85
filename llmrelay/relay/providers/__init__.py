"""What differs between providers, one module each: how a key is presented, the shape of an error
body and of the error event that ends a cut stream (and, next, how usage is read).

llmrelay's own errors (401, 404, 413, 502, 503, 504...) are written in the provider's shape so that
the provider's SDK shows them like its own. A provider module gives a `Provider`; `PROVIDERS` maps
the config's `provider` names to them. `forward` (any OpenAI-compatible service) uses OpenAI's shapes.
"""

from __future__ import annotations

import functools

from llmrelay.proto.messages import Headers
from llmrelay.relay.providers import anthropic, gemini, openai
from llmrelay.relay.providers.base import Provider
from llmrelay.server.exchange import ErrorFormat

PROVIDERS: dict[str, Provider] = {
    "openai": openai.PROVIDER,
    "anthropic": anthropic.PROVIDER,
    "gemini": gemini.PROVIDER,
    "forward": openai.PROVIDER,
}


def guess_provider(path: str) -> str:
    """The provider whose error shape fits a request that matched no endpoint."""
    if path.endswith("/messages") or "/messages?" in path:
        return "anthropic"
    if ":generateContent" in path or ":streamGenerateContent" in path:
        return "gemini"
    return "openai"


def provider(name: str) -> Provider:
    return PROVIDERS.get(name, openai.PROVIDER)


def error_response(name: str, status: int, message: str) -> tuple[Headers, bytes]:
    """A whole error answer (headers and JSON body) in provider `name`'s shape."""
    body = provider(name).error_body(status, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="llmrelay"'))
    return headers, body


@functools.cache
def error_format(name: str) -> ErrorFormat:
    """`error_response` for one provider: what a protocol driver writes its own errors with once the
    route (and so the provider) is known."""
    return functools.partial(error_response, name)


OAUTH_BETA = b"oauth-2025-04-20"  # the anthropic-beta value Anthropic's API wants with an OAuth token


def inject_key(name: str, headers: Headers, key: str, oauth: bool = False) -> None:
    """Present the provider key the provider's own way (appends to `headers`). An Anthropic OAuth
    token goes as `Authorization: Bearer`, with `oauth-2025-04-20` added to the client's own
    `anthropic-beta` values (one field, theirs first, nothing repeated)."""
    value = key.encode("ascii", "strict")
    if not oauth:
        headers.append(provider(name).key_field(value))
        return
    headers.append((b"authorization", b"Bearer " + value))
    betas: list[bytes] = []
    for index in range(len(headers) - 1, -1, -1):
        if headers[index][0] == b"anthropic-beta":
            betas[:0] = [token.strip() for token in headers[index][1].split(b",") if token.strip()]
            del headers[index]
    if OAUTH_BETA not in betas:
        betas.append(OAUTH_BETA)
    headers.append((b"anthropic-beta", b",".join(dict.fromkeys(betas))))


def sse_error_event(name: str, message: str) -> bytes:
    """An SSE event that tells the provider's SDK the stream failed (used when a stream is cut)."""
    return provider(name).sse_error_event(message)


__all__ = ["OAUTH_BETA", "PROVIDERS", "Provider", "error_format", "error_response", "inject_key", "provider", "sse_error_event"]
