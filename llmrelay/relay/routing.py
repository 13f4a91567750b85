"""Which endpoint serves a request, and which upstream path it goes to.

Host routing comes first: a request whose Host names one of an endpoint's `hosts` is forwarded with
its path whole (an entry `host:port` matches that port only and wins over a plain `host` entry, which
matches any port). A `hosts` entry with a path prefix (`host/tenant-b`) matches that Host for paths at
or below the prefix, the longest prefix first and before the plain entry, and the prefix is taken off
(`/tenant-b/v1/models` is forwarded as `/v1/models`). Then an endpoint's `paths` (`/v1/messages`)
match a path at or below them on any Host, the longest first, forwarding the path whole. Otherwise
the first path segment names the endpoint (`/{endpoint}/{rest}`). The
upstream path joins the target's base path with the rest, without repeating the base path when the
rest already starts with it (`/v1` + `/v1/chat/completions` -> `/v1/chat/completions`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Generic, TypeVar
from urllib.parse import unquote_to_bytes

from llmrelay.config.hosts import has_port, split_path_prefix
from llmrelay.proto.errors import RequestRejected

E = TypeVar("E")


def join_path(base_path: str, rest: str) -> str:
    """Join a target base path ("" or "/v1") with a request's rest ("/v1/x?q")."""
    path, sep, query = rest.partition("?")
    if not path.startswith("/"):
        path = "/" + path
    if base_path and (path == base_path or path.startswith(base_path + "/")):
        return path + sep + query
    return base_path + path + sep + query


def has_dot_segment(path: str) -> bool:
    """True when a path holds a `.` or `..` segment, also when percent-encoded."""
    path = path.split("?", 1)[0]
    if "." not in path and "%" not in path:
        return False  # the usual case: nothing to decode
    for segment in path.split("/"):
        decoded = unquote_to_bytes(segment) if "%" in segment else segment.encode("latin-1")
        if decoded in (b".", b".."):
            return True
    return False


def split_host_header(host_header: bytes | None) -> tuple[str, str]:
    """A Host header as (host, port) in the canonical form of `hosts` entries; port "" when absent.

    Lower case, no trailing dot, IPv6 addresses bracketed and compressed (`[0::1]` is `[::1]`).
    """
    if not host_header:
        return "", ""
    host = host_header.decode("latin-1").strip().lower()
    port = ""
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            host, port = host[: end + 1], host[end + 2 :]
            try:
                host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
            except ValueError:
                pass
        return host, port
    if ":" in host:
        host, _, port = host.rpartition(":")
    if port:
        port = port.lstrip("0") or "0"
    return host.rstrip("."), port


class Route(Generic[E]):
    __slots__ = ("endpoint", "rest", "by_host")

    def __init__(self, endpoint: E, rest: str, by_host: bool) -> None:
        self.endpoint = endpoint
        self.rest = rest  # path and query to join to the target base
        self.by_host = by_host


def under_prefix(text: str, prefix: str) -> bool:
    """Whether a request target is `prefix` or below it (`/a` matches `/a`, `/a/b`, `/a?q`, not `/ab`)."""
    if not text.startswith(prefix):
        return False
    return len(text) == len(prefix) or text[len(prefix)] in "/?"


class _HostRoutes(Generic[E]):
    """What one Host (with or without a port) routes to: prefixed entries, longest first, then the plain one."""

    __slots__ = ("prefixed", "plain")

    def __init__(self) -> None:
        self.prefixed: list[tuple[str, E]] = []
        self.plain: E | None = None

    def match(self, text: str) -> Route[E] | None:
        for prefix, endpoint in self.prefixed:
            if under_prefix(text, prefix):
                rest = text[len(prefix) :]
                return Route(endpoint, rest if rest.startswith("/") else "/" + rest, by_host=True)
        return None if self.plain is None else Route(self.plain, text, by_host=True)


class Router(Generic[E]):
    """Maps (Host, request target) to an endpoint value and the rest of the path."""

    def __init__(self, entries: Iterable[tuple[str, list[str], E]], paths: Iterable[tuple[str, E]] = ()) -> None:
        self._by_name: dict[str, E] = {}
        self._by_host: dict[str, _HostRoutes[E]] = {}  # entries without a port: any port matches
        self._by_host_and_port: dict[str, _HostRoutes[E]] = {}  # `host:port` entries: that port only
        for name, hosts, endpoint in entries:
            self._by_name[name] = endpoint
            for entry in hosts:
                table = self._by_host_and_port if has_port(entry) else self._by_host
                host, prefix = split_path_prefix(entry)
                routes = table.setdefault(host, _HostRoutes())
                if prefix:
                    routes.prefixed.append((prefix, endpoint))
                else:
                    routes.plain = endpoint
        for routes in (*self._by_host.values(), *self._by_host_and_port.values()):
            routes.prefixed.sort(key=lambda item: len(item[0]), reverse=True)
        self._by_path = sorted(paths, key=lambda item: len(item[0]), reverse=True)

    @property
    def routes_by_host(self) -> bool:
        return bool(self._by_host or self._by_host_and_port)

    def _route_by_host(self, host_header: bytes, text: str) -> Route[E] | None:
        host, port = split_host_header(host_header)
        if port and self._by_host_and_port:
            routes = self._by_host_and_port.get(f"{host}:{port}")
            if routes is not None:
                route = routes.match(text)
                if route is not None:
                    return route
        routes = self._by_host.get(host)
        return None if routes is None else routes.match(text)

    def route(self, host_header: bytes | None, target: bytes | str) -> Route[E] | None:
        """The endpoint and rest of the path for a request target (bytes, or str decoded as latin-1)."""
        text = target if isinstance(target, str) else target.decode("latin-1")
        if has_dot_segment(text):
            raise RequestRejected(400, "dot segments are not allowed in the request path")
        if host_header and (self._by_host or self._by_host_and_port):
            route = self._route_by_host(host_header, text)
            if route is not None:
                return route
        for prefix, owner in self._by_path:
            if under_prefix(text, prefix):
                return Route(owner, text, by_host=False)
        if not text.startswith("/"):
            return None
        stripped = text[1:]
        cut = len(stripped)
        for separator in ("/", "?"):
            index = stripped.find(separator)
            if index != -1:
                cut = min(cut, index)
        name, rest = stripped[:cut], stripped[cut:]
        endpoint = self._by_name.get(name)
        if endpoint is None:
            return None
        if not rest.startswith("/"):
            rest = "/" + rest
        return Route(endpoint, rest, by_host=False)
