"""What the access log and the metrics learn about a request without slowing it: its model, the
client's address behind trusted proxies, and a relay key's label.

- `request_model(path, body)`: a Gemini path names it (`models/NAME:generateContent`); otherwise the
  `model` field of a JSON body the relay already holds whole (decoding only that field; a body that is
  not JSON has none).
- `TrustedProxies.client_ip(peer, headers)`: only when the peer is inside `server.trusted_proxies` is
  `X-Forwarded-For` believed, walked from the right over trusted hops to the last untrusted one.
- `relay_key_label(key)`: the first 8 hex digits of the key's SHA-256, never the key.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Union

import msgspec

from llmrelay.proto.messages import Headers

MAX_MODEL_LENGTH = 200
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class _ModelOnly(msgspec.Struct):
    model: str | None = None


_decode_model = msgspec.json.Decoder(_ModelOnly).decode


def path_model(path: str) -> str | None:
    """The model a Gemini-style path names (`.../models/NAME:generateContent`), or None."""
    start = path.find("models/")
    if start >= 0:
        name = path[start + 7 :].split(":", 1)[0].split("/", 1)[0]
        if name:
            return name[:MAX_MODEL_LENGTH]
    return None


def request_model(path: str, body: bytes = b"") -> str | None:
    """The model a request names, or None."""
    if "models/" in path:
        model = path_model(path)
        if model is not None:
            return model
    if not body or b'"model"' not in body:
        return None
    try:
        model = _decode_model(body).model
    except msgspec.DecodeError:  # not JSON, not an object, or a model that is not a string
        return None
    return model[:MAX_MODEL_LENGTH] if model else None


def relay_key_label(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("["):  # "[v6]:port"
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # "v4:port"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """`server.trusted_proxies`, parsed once per config generation."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def client_ip(self, peer: str, headers: Headers) -> str:
        """The client's address: the peer's, unless a trusted proxy tells who it relays for."""
        if not self.networks:
            return peer
        peer_address = _address(peer)
        if peer_address is None or not self.trusts(peer_address):
            return peer
        hops = [value for name, value in headers if name == b"x-forwarded-for"]
        if not hops:
            return peer
        current = peer_address
        for hop in reversed(b",".join(hops).decode("latin-1").split(",")):
            if not hop.strip():
                continue
            address = _address(hop)
            if address is None:
                break  # garbage: nothing further left can be believed; the nearest trusted hop stands
            current = address
            if not self.trusts(address):
                break
        return str(current)
