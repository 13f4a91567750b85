"""Header rewriting in both directions: hop-by-hop removal, forwarding headers, framing.

Hop-by-hop headers (Connection and every name it lists, Keep-Alive, TE, Trailer, Transfer-Encoding,
Upgrade, Proxy-*) describe one connection and never cross the relay. Client-supplied forwarding
headers are rebuilt from what the relay saw (`forwarded_headers`: append, replace or none). Framing is re-derived: a request that arrived chunked
goes upstream chunked, one with a Content-Length keeps it.
"""

from __future__ import annotations

import itertools
import os
import re
from operator import itemgetter

import msgspec

from llmrelay.proto.messages import Headers, RequestHead

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
FORWARDING = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"})
CREDENTIALS = frozenset({b"authorization", b"x-api-key", b"x-goog-api-key"})
# What never goes upstream as the client sent it (Host is replaced, x-request-id set, Expect answered here).
_DROPPED = HOP_BY_HOP | FORWARDING | {b"host", b"expect", b"x-request-id"}
_DROPPED_WITH_CREDENTIALS = _DROPPED | CREDENTIALS
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


_NO_TOKENS: frozenset[bytes] = frozenset()


def connection_tokens(headers: Headers) -> frozenset[bytes] | set[bytes]:
    """The header names a Connection header lists (hop-by-hop for this connection only)."""
    tokens: set[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            if tokens is None:
                tokens = set()
            tokens.update(part.strip().lower() for part in value.split(b",") if part.strip())
    return _NO_TOKENS if tokens is None else tokens


class _RequestIds:
    """32 hex digits: a random prefix drawn once per process, then a counter.

    Unique across workers and restarts without a system call per request (`os.urandom` is one).
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # a forked child draws its own prefix

    def reset(self) -> None:
        self._prefix = os.urandom(10).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


_new_request_id = _RequestIds()


def request_id_for(headers: Headers) -> str:
    """The client's x-request-id when it is sane, else a new one."""
    for name, value in headers:
        if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return value.decode("ascii")
    return _new_request_id()


def upstream_request_headers(
    headers: Headers,
    *,
    upstream_host: bytes,
    client_ip: str,
    scheme: str,
    request_id: str,
    chunked_body: bool,
    strip_credentials: bool,
    forwarded: str = "append",
) -> Headers:
    """The headers to send upstream, before a provider key is injected.

    `forwarded` is the endpoint's `forwarded_headers`: "append" adds the client's address to the
    X-Forwarded-For chain it sent, "replace" starts the chain at the client's address, and both set
    X-Forwarded-Proto and X-Forwarded-Host from what the relay saw; "none" sends no forwarding header
    at all. Client-sent Forwarded and X-Real-IP are dropped in every mode: the relay does not vouch
    for them.
    """
    listed = connection_tokens(headers)
    dropped = _DROPPED_WITH_CREDENTIALS if strip_credentials else _DROPPED
    out: Headers = [(b"host", upstream_host)]
    original_host = b""
    chain: list[bytes] = []
    for field in headers:
        name = field[0]
        if name in dropped or name in listed:
            if name == b"host":
                original_host = field[1]
            elif name == b"x-forwarded-for" and name not in listed:
                chain.append(field[1])
            continue
        out.append(field)
    if forwarded != "none":
        peer = client_ip.encode("ascii", "replace")
        if forwarded == "append" and chain:
            out.append((b"x-forwarded-for", b", ".join(chain) + b", " + peer))
        else:
            out.append((b"x-forwarded-for", peer))
        out.append((b"x-forwarded-proto", scheme.encode("ascii")))
        if original_host:
            out.append((b"x-forwarded-host", original_host))
    out.append((b"x-request-id", request_id.encode("ascii")))
    if chunked_body:
        out.append((b"transfer-encoding", b"chunked"))
    return out


def client_response_headers(headers: Headers, request_id: str) -> tuple[Headers, bool, bool]:
    """The upstream response headers a client may see (names lower-cased), whether the body is an
    event stream, and whether it has a Content-Length."""
    listed = connection_tokens(headers)
    out: Headers = []
    has_request_id = False
    sse = False
    has_length = False
    for field in headers:
        name = field[0]
        if name in HOP_BY_HOP or name in listed:
            continue
        if name == b"content-length":
            has_length = True
        elif name == b"content-type":
            sse = field[1].startswith(b"text/event-stream")
        elif name == b"x-request-id":
            has_request_id = True
        out.append(field)
    if not has_request_id:
        out.append((b"x-request-id", request_id.encode("ascii")))
    return out, sse, has_length


_NAME = itemgetter(0)
_RATE_LIMIT = b"x-ratelimit-"


def with_own_rate_limits(headers: Headers, own: Headers) -> Headers:
    """`headers` (of a response, names in lower case) with the provider's x-ratelimit-* replaced by
    the relay's `own` (found by one search over the joined names; filtered only when present)."""
    names = b"\n".join(map(_NAME, headers))
    if names.startswith(_RATE_LIMIT) or b"\n" + _RATE_LIMIT in names:
        headers = [field for field in headers if not field[0].startswith(_RATE_LIMIT)]
    headers += own
    return headers


def with_whole_body(head: RequestHead, body: bytes, headers: Headers | None = None) -> RequestHead:
    """`head` (with `headers` instead of its own, when given) for a body now held whole: its
    Content-Length says the body's length and no Transfer-Encoding is left."""
    kept = [field for field in (head.headers if headers is None else headers) if field[0] != b"content-length" and field[0] != b"transfer-encoding"]
    kept.append((b"content-length", str(len(body)).encode()))
    return msgspec.structs.replace(head, headers=kept, body_length=len(body))

