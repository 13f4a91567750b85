"""The request as processors see it, and how a processor refuses one (the plugin interface too).

A `ProcessorRequest` holds what may be changed before the request is forwarded: its header fields,
its endpoint-relative path (Gemini's model lives there) and, when some processor needs it, its JSON
body decoded (`body`; None when the request has no JSON body). Processors mutate it in place;
`Refused(status, message)` answers the client instead, in the endpoint's provider's error shape.
"""

from __future__ import annotations

import re
from typing import Any

from llmrelay.proto.messages import Headers
from llmrelay.relay.headers import CREDENTIALS, FORWARDING, HOP_BY_HOP
from llmrelay.relay.policy import bodies

# Request header names no processor may set or remove: the relay manages them (framing, routing,
# forwarding, request id) or they carry credentials (a key must never come from a processor).
PROTECTED_REQUEST = HOP_BY_HOP | FORWARDING | CREDENTIALS | {b"host", b"content-length", b"x-request-id", b"expect"}
# Response header names no processor may set or remove (framing and connection management).
PROTECTED_RESPONSE = HOP_BY_HOP | {b"content-length"}
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class Refused(Exception):
    """Raised by a processor (or a plugin) to answer `status` with `message` instead of forwarding."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def header_name_problem(name: str, protected: frozenset[bytes]) -> str | None:
    """Why `name` cannot be set or removed by a processor, or None."""
    if not TOKEN.fullmatch(name):
        return f"{name!r} is not a valid header name"
    if name.lower().encode("ascii") in protected:
        return f"{name!r} is managed by the relay (hop-by-hop, framing, forwarding or credentials)"
    return None


def header_value_problem(value: str) -> str | None:
    if any(char in value for char in "\r\n\0"):
        return f"{value!r} is not a valid header value"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return f"{value!r} is not a valid header value (latin-1 only)"
    return None


class ProcessorRequest:
    """One request on its way through an endpoint's processors.

    `provider` is "openai" (also for `forward` endpoints), "anthropic" or "gemini"; `path` is the
    path after the endpoint's prefix (without the query), `query` the query string; `body` the
    decoded JSON body (a dict) or None (`opaque_body` tells a body that is not JSON). Use the methods to read and change headers (names are
    case-insensitive; names the relay manages are refused with ValueError).
    """

    __slots__ = ("provider", "endpoint", "method", "path", "query", "raw_headers", "body", "opaque_body", "changed")

    def __init__(
        self, provider: str, endpoint: str, method: str, path: str, query: str, headers: Headers, body: Any = None
    ) -> None:
        self.provider = "openai" if provider == "forward" else provider
        self.endpoint = endpoint
        self.method = method
        self.path = path
        self.query = query
        self.raw_headers = headers  # (lower-cased bytes names, bytes values), in order
        self.body = body
        self.opaque_body = False  # a body that is not a JSON object (a multipart upload...): not decoded
        self.changed = False  # whether the body must be encoded again

    # -- headers ------------------------------------------------------------------------------

    def header(self, name: str) -> str | None:
        """The first value of header `name`, or None."""
        key = name.lower().encode("latin-1")
        for field, value in self.raw_headers:
            if field == key:
                return value.decode("latin-1")
        return None

    def set_header(self, name: str, value: str) -> None:
        """Replace every value of `name` by `value`."""
        problem = header_name_problem(name, PROTECTED_REQUEST) or header_value_problem(value)
        if problem is not None:
            raise ValueError(problem)
        self.remove_header(name)
        self.raw_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    def remove_header(self, name: str) -> None:
        problem = header_name_problem(name, PROTECTED_REQUEST)
        if problem is not None:
            raise ValueError(problem)
        key = name.lower().encode("latin-1")
        self.raw_headers[:] = [field for field in self.raw_headers if field[0] != key]

    # -- body -----------------------------------------------------------------------------------

    @property
    def streaming(self) -> bool:
        """Whether the client asked for a streamed answer."""
        return bodies.streaming(self.provider, self.path, self.body)

    @property
    def model(self) -> str | None:
        """The model asked for (from the body; from the path on Gemini), or None."""
        return bodies.get_model(self.provider, self.path, self.body)

    @model.setter
    def model(self, model: str) -> None:
        if self.provider == "gemini":
            self.path = bodies.set_gemini_model(self.path, model)
        elif isinstance(self.body, dict):
            self.body["model"] = model
            self.changed = True
        else:
            raise ValueError("this request has no JSON body to set a model in")
