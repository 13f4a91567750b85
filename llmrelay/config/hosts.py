"""Host names an endpoint answers for (`hosts = [...]`), in one canonical form.

An entry is `host` or `host:port`, where host is a DNS name, an IPv4 address or an IPv6 address
(bracketed or not: `::1` and `[::1]` are the same entry). The canonical form is lower case, without a
trailing dot, with IPv6 addresses bracketed and compressed, and the port as plain digits: the router
compares it with a request's Host header put in the same form. An entry without a port matches a
Host with any port; an entry with a port matches only that port.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")


class HostEntryError(ValueError):
    """A `hosts` entry that is not `host` or `host:port`."""


def _canonical_host(host: str) -> str:
    """A host (no port) in canonical form, or HostEntryError."""
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            raise HostEntryError(f"not an IPv6 address: {inner!r}") from None
    if ":" in host:
        try:
            return f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise HostEntryError("not a host name or address") from None
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or _DNS_NAME.fullmatch(name) is None:
        raise HostEntryError("not a host name or address")
    return name


def _split_port(entry: str) -> tuple[str, str | None]:
    """`host[:port]` split in two; a bare IPv6 address has no port."""
    if entry.startswith("["):
        end = entry.find("]")
        if end == -1:
            raise HostEntryError("unclosed '['")
        rest = entry[end + 1 :]
        if not rest:
            return entry, None
        if not rest.startswith(":"):
            raise HostEntryError("unexpected text after ']'")
        return entry[: end + 1], rest[1:]
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, None  # no colon, or an unbracketed IPv6 address


def canonical_host_entry(entry: str) -> str:
    """The canonical form of one `hosts` entry; HostEntryError says what is wrong with it."""
    if not entry:
        raise HostEntryError("empty")
    host, port = _split_port(entry)
    canonical = _canonical_host(host)
    if port is None:
        return canonical
    if _PORT.fullmatch(port) is None or not 1 <= int(port) <= 65535:
        raise HostEntryError(f"invalid port {port!r}")
    return f"{canonical}:{int(port)}"


def has_port(canonical: str) -> bool:
    """Whether a canonical entry names a port (`[::1]` does not; `[::1]:80` and `a:80` do)."""
    return canonical.rfind(":") > canonical.rfind("]")
