"""The limits a component takes whole, built once from the flat config keys when a config is resolved.

The TOML file keeps its flat keys (`server.header_timeout`, `endpoints.NAME.connect_timeout`...);
resolving groups them into these Structs, which are then handed whole to the component that applies
them (a client connection's driver, an upstream pool, a dialer), never copied field by field again.
"""

from __future__ import annotations

import msgspec

from llmrelay.config.schema import ServerSection
from llmrelay.proto.h1.head_guard import HeadLimits


class ClientLimits(msgspec.Struct, frozen=True, kw_only=True):
    """One client connection's deadlines and sizes (from `[server]`)."""

    header_timeout: float
    body_idle_timeout: float
    keepalive_timeout: float
    write_timeout: float
    max_requests: int
    head: HeadLimits


class UpstreamTimeouts(msgspec.Struct, frozen=True, kw_only=True):
    connect: float
    first_byte: float
    idle: float


class PoolLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_connections: int
    keepalive_expiry: float
    wait: float  # `pool_timeout`: how long a request waits for a free connection


def client_limits(server: ServerSection) -> ClientLimits:
    return ClientLimits(
        header_timeout=server.header_timeout,
        body_idle_timeout=server.body_idle_timeout,
        keepalive_timeout=server.keepalive_timeout,
        write_timeout=server.write_timeout,
        max_requests=server.max_requests_per_connection,
        head=HeadLimits(server.max_request_line, server.max_header_bytes, server.max_header_count),
    )
