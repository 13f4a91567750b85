"""CORS decisions (sans-IO): a preflight's answer, and the headers an actual response gets.

`CorsPolicy` is built once per endpoint and config generation from its `cors` table. A preflight
(`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is allowed when the origin is listed
(exactly, or `*`), the requested method is in `allow_methods` and every requested header is in
`allow_headers` (case-insensitive; an entry ending in `*` is a prefix glob, `*` alone allows any).
An actual response gets the CORS headers when its request's `Origin` is allowed.
"""

from __future__ import annotations

from llmrelay.config.schema import CorsSection
from llmrelay.proto.messages import Headers

VARY_ORIGIN = (b"vary", b"origin")


class CorsPolicy:
    __slots__ = ("any_origin", "origins", "methods", "headers", "prefixes", "credentials", "_preflight", "_actual")

    def __init__(self, section: CorsSection) -> None:
        self.any_origin = "*" in section.allow_origins
        self.origins = frozenset(origin.encode("latin-1") for origin in section.allow_origins if origin != "*")
        self.methods = frozenset(method.upper().encode("ascii") for method in section.allow_methods)
        names = [name.lower() for name in section.allow_headers]
        self.headers = frozenset(name.encode("latin-1") for name in names if not name.endswith("*"))
        self.prefixes = tuple(name[:-1].encode("latin-1") for name in names if name.endswith("*"))
        self.credentials = section.allow_credentials
        methods = b", ".join(method.upper().encode("ascii") for method in section.allow_methods)
        self._preflight: Headers = [(b"access-control-allow-methods", methods)]
        self._preflight.append((b"access-control-max-age", str(section.max_age).encode()))
        self._actual: Headers = []
        if section.expose_headers:
            exposed = b", ".join(name.encode("latin-1") for name in section.expose_headers)
            self._actual.append((b"access-control-expose-headers", exposed))
        if self.credentials:
            self._preflight.append((b"access-control-allow-credentials", b"true"))
            self._actual.append((b"access-control-allow-credentials", b"true"))

    def origin_allowed(self, origin: bytes) -> bool:
        return self.any_origin or origin in self.origins

    def _allow_origin(self, origin: bytes) -> tuple[bytes, bytes]:
        # `*` only without credentials (browsers refuse `*` on a credentialed request) and when the
        # origin is not listed by name; otherwise the origin itself.
        if self.any_origin and not self.credentials and origin not in self.origins:
            return b"access-control-allow-origin", b"*"
        return b"access-control-allow-origin", origin

    def header_allowed(self, name: bytes) -> bool:
        if name in self.headers:
            return True
        return any(name.startswith(prefix) for prefix in self.prefixes)

    def preflight(self, origin: bytes, method: bytes, requested_headers: bytes | None) -> Headers | None:
        """The headers of a 204 answering this preflight, or None when it is refused (403)."""
        if not self.origin_allowed(origin) or method.strip().upper() not in self.methods:
            return None
        requested: list[bytes] = []
        if requested_headers:
            requested = [name.strip().lower() for name in requested_headers.split(b",") if name.strip()]
        for name in requested:
            if not self.header_allowed(name):
                return None
        headers = [self._allow_origin(origin), *self._preflight]
        if requested:  # (the names asked for: prefix globs cannot be listed in the answer)
            headers.append((b"access-control-allow-headers", b", ".join(requested)))
        headers.append(VARY_ORIGIN)
        headers.append((b"content-length", b"0"))
        return headers

    def actual(self, origin: bytes) -> Headers | None:
        """The headers an actual response to a request from `origin` gets, or None (not allowed)."""
        if not self.origin_allowed(origin):
            return None
        return [self._allow_origin(origin), *self._actual, VARY_ORIGIN]
