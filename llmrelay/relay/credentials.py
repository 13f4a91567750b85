"""Relay keys: reading the one a client presents, checking it in constant time, telling which it is.

A client presents its relay key where its SDK puts a provider key: `Authorization: Bearer`,
`x-api-key`, `x-goog-api-key` or `?key=`; a browser opening a WebSocket, which cannot set headers,
offers it as a subprotocol, `openai-insecure-api-key.KEY` (what OpenAI's Realtime API takes from
browsers), and the relay removes that offer before the upgrade goes upstream. The check hashes the presented key and every accepted key
and compares digests with `hmac.compare_digest`, visiting every accepted key, so neither the position
of a match nor the length of a key shows in the timing. Which key matched (its index) decides which
of an endpoint's key-scoped upstreams the client may use.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from urllib.parse import parse_qsl, unquote_plus

from llmrelay.proto.messages import Headers


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class KeyRing:
    """The relay keys one endpoint accepts, kept as digests."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = [_digest(key.encode("utf-8")) for key in keys]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: bytes | None) -> bool:
        return self.identify(presented) is not None

    def identify(self, presented: bytes | None) -> int | None:
        """The index of the accepted key `presented` is, or None (every key compared, whatever matches)."""
        if presented is None:
            presented = b""
        candidate = _digest(presented)
        found = -1
        for index, digest in enumerate(self._digests):
            if hmac.compare_digest(candidate, digest):
                found = index
        return found if found >= 0 and presented else None


def presented_keys(headers: Headers, query: str) -> list[bytes]:
    """Every credential a client presented, in any of the providers' places."""
    found: list[bytes] = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                found.append(token.strip())
            else:
                found.append(value)
        elif name in (b"x-api-key", b"x-goog-api-key"):
            found.append(value.strip())
    if query:
        for field, text in parse_qsl(query, keep_blank_values=True):
            if field == "key":
                found.append(text.encode("utf-8"))
    return found


def check_relay_key(ring: KeyRing, headers: Headers, query: str) -> bool:
    """True when the client presented exactly one distinct credential and the ring accepts it."""
    return identify_relay_key(ring, headers, query) is not None


def identify_relay_key(ring: KeyRing, headers: Headers, query: str, websocket: bool = False) -> int | None:
    """The index of the ring's key the client presented (exactly one distinct credential), else None.
    `websocket`: a key offered as a subprotocol counts too."""
    keys = set(presented_keys(headers, query))
    if websocket:
        offered = subprotocol_key(headers)
        if offered is not None:
            keys.add(offered)
    if len(keys) != 1:
        return None
    return ring.identify(next(iter(keys)))


SUBPROTOCOL_KEY_PREFIX = b"openai-insecure-api-key."


def _subprotocols(value: bytes) -> list[bytes]:
    return [token.strip() for token in value.split(b",") if token.strip()]


def subprotocol_key(headers: Headers) -> bytes | None:
    """The key a browser offered as the subprotocol `openai-insecure-api-key.KEY`, if any."""
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            for token in _subprotocols(value):
                if token.startswith(SUBPROTOCOL_KEY_PREFIX) and len(token) > len(SUBPROTOCOL_KEY_PREFIX):
                    return token[len(SUBPROTOCOL_KEY_PREFIX) :]
    return None


def without_subprotocol_key(headers: Headers) -> Headers:
    """`headers` without any `openai-insecure-api-key.*` subprotocol offer (the field goes when
    nothing else was offered in it)."""
    out: Headers = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            kept = [token for token in _subprotocols(value) if not token.startswith(SUBPROTOCOL_KEY_PREFIX)]
            if kept:
                out.append((name, b", ".join(kept)))
            continue
        out.append((name, value))
    return out


def _is_key_parameter(pair: str) -> bool:
    name = pair.split("=", 1)[0]
    return unquote_plus(name) == "key"


def strip_query_key(query: str) -> str:
    """Remove every `key` parameter (the Gemini style of presenting a key, also when its name is
    percent-encoded), leaving every other parameter byte for byte as it was."""
    if not query:
        return query
    return "&".join(pair for pair in query.split("&") if not _is_key_parameter(pair))
