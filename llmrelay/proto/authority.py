"""CONNECT destinations: parsing a `host:port` target, matching it against the allow-list, and
judging the addresses a host name resolves to. Pure functions on bytes and strings: no I/O.

A forward proxy that tunnels to wherever a client asks is an open door into the network it sits in,
so a destination passes three checks, in this order:

1. its target is a strict authority (`host:port`, an IPv6 literal in brackets, a port always given);
2. it matches an allow pattern (`api.openai.com:443`, `*.anthropic.com:443`; `*` in the host
   matches any run of characters, `*` as the port any port). Wildcards match host *names* only: an
   IP literal is allowed when it is itself on the list (`127.0.0.1:8443`), which is how a deliberate
   private destination is opened, never by a pattern written for names;
3. a host name resolves only to public addresses (`address_refusal`): a name on the list that
   resolves to a loopback, private, link-local, unspecified or multicast address (DNS rebinding,
   `localhost`) is refused, every resolved address is checked, and the tunnel goes to an address
   that was checked rather than to the name looked up again.
"""

from __future__ import annotations

import ipaddress
import re

import msgspec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAME = re.compile(r"(?=.{1,253}\Z)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")
_PATTERN_HOST = re.compile(r"\*|[a-z0-9_*](?:[a-z0-9_.*-]*[a-z0-9_*])?")


class AuthorityError(ValueError):
    """A CONNECT target that is not a strict `host:port`."""


class Authority(msgspec.Struct, frozen=True):
    """A parsed CONNECT destination. `host` is a lower-case name without a trailing dot, or an IP
    address in its canonical text (IPv6 without brackets); `address` is set for an IP literal."""

    host: str
    port: int
    address: IPAddress | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.address is not None and self.address.version == 6 else self.host
        return f"{host}:{self.port}"


def _port(text: str) -> int:
    if not _PORT.fullmatch(text):
        raise AuthorityError("the port is missing or not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise AuthorityError("the port is out of range")
    return port


def parse_authority(target: bytes) -> Authority:
    """`host:port` of a CONNECT request (RFC 9110 section 9.3.6); AuthorityError when it is anything
    else (no port, userinfo, a path, percent-encoding, a malformed name or IP literal)."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise AuthorityError("non-ASCII bytes in the target") from None
    if text.startswith("["):
        literal, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise AuthorityError("malformed IPv6 literal")
        try:
            v6 = ipaddress.IPv6Address(literal)
        except ValueError:
            raise AuthorityError("malformed IPv6 literal") from None
        if "%" in literal:
            raise AuthorityError("zone identifiers are not accepted")
        return Authority(str(v6), _port(rest[1:]), v6)
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise AuthorityError("a CONNECT target is host:port")
    port = _port(port_text)
    host = host.lower()
    try:
        v4 = ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return Authority(str(v4), port, v4)
    if host.endswith("."):
        host = host[:-1]
    if not _NAME.fullmatch(host):
        raise AuthorityError("malformed host name")
    if host.rsplit(".", 1)[-1].isdigit():
        # `127.1`, `10.0.0.010`: spellings of an IPv4 address some resolvers accept, never a name
        raise AuthorityError("malformed host name (an address written the way no name is)")
    return Authority(host, port)


class AllowPattern(msgspec.Struct, frozen=True):
    """One `server.connect.allow` entry, compiled."""

    text: str
    port: int | None  # None: any port
    address: IPAddress | None  # an exact IP literal
    name: re.Pattern[str] | None  # a host name pattern (`*` expanded)

    def matches(self, destination: Authority) -> bool:
        if self.port is not None and destination.port != self.port:
            return False
        if destination.address is not None:
            return self.address is not None and destination.address == self.address
        return self.name is not None and self.name.fullmatch(destination.host) is not None


def compile_pattern(text: str) -> AllowPattern:
    """An allow pattern from `host:port` (the config checked its syntax; ValueError here otherwise)."""
    host, colon, port_text = text.lower().rpartition(":")
    if not colon or not host:
        raise ValueError(f"allow pattern {text!r}: expected host:port")
    port = None if port_text == "*" else _port(port_text)
    if host.startswith("[") and host.endswith("]"):
        return AllowPattern(text, port, ipaddress.IPv6Address(host[1:-1]), None)
    if "*" not in host:
        try:
            return AllowPattern(text, port, ipaddress.IPv4Address(host), None)
        except ValueError:
            pass
    host = host.rstrip(".") if host != "*" else host
    if not _PATTERN_HOST.fullmatch(host):
        raise ValueError(f"allow pattern {text!r}: malformed host")
    name = re.compile(".*".join(re.escape(part) for part in host.split("*")))
    return AllowPattern(text, port, None, name)


class AllowList:
    """The destinations CONNECT may reach."""

    __slots__ = ("patterns",)

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [compile_pattern(text) for text in patterns]

    def allows(self, destination: Authority) -> bool:
        return any(pattern.matches(destination) for pattern in self.patterns)


def address_refusal(address: IPAddress) -> str | None:
    """Why a tunnel must not reach `address` when it came from resolving a name (None: it may):
    anything that is not a public unicast address. IPv4 addresses carried inside IPv6 (mapped,
    6to4, Teredo) are judged by the address they carry."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None:
            return address_refusal(embedded)
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None
