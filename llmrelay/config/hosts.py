"""Host names an endpoint answers for (`hosts = [...]`), in one canonical form.

An entry is `host` or `host:port`, where host is a DNS name, an IPv4 address or an IPv6 address
(bracketed or not: `::1` and `[::1]` are the same entry). The canonical form is lower case, without a
trailing dot, with IPv6 addresses bracketed and compressed, and the port as plain digits: the router
compares it with a request's Host header put in the same form. An entry without a port matches a
Host with any port; an entry with a port matches only that port.

An entry may end with a path prefix (`oai.example.com/tenant-b`): it matches that Host only for paths
equal to the prefix or below it, and the prefix is taken off before forwarding. Its canonical prefix
starts with `/`, has no trailing `/`, no empty, `.` or `..` segment, and only characters a path
segment may hold unencoded (no `%`, `?` or `#`).
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")


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


def split_path_prefix(canonical: str) -> tuple[str, str]:
    """A canonical entry as (host[:port], path prefix); the prefix is "" when it has none."""
    slash = canonical.find("/")
    return (canonical, "") if slash == -1 else (canonical[:slash], canonical[slash:])


def canonical_path_prefix(prefix: str) -> str:
    """A path prefix ("/tenant-b", "/api/v1/") in canonical form ("/api/v1"); it starts with "/"."""
    body = prefix[1:-1] if prefix.endswith("/") else prefix[1:]  # one trailing "/" is allowed
    segments = body.split("/")
    for segment in segments:
        if not segment or _PREFIX_SEGMENT.fullmatch(segment) is None or segment in (".", ".."):
            raise HostEntryError(f"invalid path prefix {prefix!r} (segments of letters, digits and -._~!$&'()*+,;=:@)")
    return "/" + "/".join(segments)


def canonical_host_entry(entry: str) -> str:
    """The canonical form of one `hosts` entry; HostEntryError says what is wrong with it."""
    if not entry:
        raise HostEntryError("empty")
    slash = entry.find("/")
    if slash != -1:
        return canonical_host_entry(entry[:slash]) + canonical_path_prefix(entry[slash:])
    host, port = _split_port(entry)
    canonical = _canonical_host(host)
    if port is None:
        return canonical
    if _PORT.fullmatch(port) is None or not 1 <= int(port) <= 65535:
        raise HostEntryError(f"invalid port {port!r}")
    return f"{canonical}:{int(port)}"


def has_port(canonical: str) -> bool:
    """Whether a canonical entry names a port (`[::1]` does not; `[::1]:80` and `a:80` do)."""
    host = split_path_prefix(canonical)[0]
    return host.rfind(":") > host.rfind("]")
