"""The server's listeners and its CONNECT tunnels, resolved and checked.

`[[server.listen]]` is a list of addresses, each plain or TLS; the flat `server.host` / `server.port`
are the one-listener shorthand (127.0.0.1:8811 when neither is set), and setting both forms is an
error. A TLS listener's certificate, key and client CA are loaded here exactly as a worker will load
them, so `check-config` and every reload refuse a file that would not load (or a key that is not the
certificate's). `[server.connect]` is checked for what would make it refuse everything or accept
anything: no relay key to authenticate with, a malformed allow pattern, an unknown `via_endpoint`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from llmrelay.config.decode import printable
from llmrelay.config.schema import ConfigFile, ListenSection
from llmrelay.config.values import is_listen_host, resolve_keys
from llmrelay.io.tls import TlsFileError, server_context

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8811
_ALLOW_PATTERN = re.compile(r"(\*|[A-Za-z0-9*]([A-Za-z0-9.*-]*[A-Za-z0-9*])?|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5}|\*)")


def resolve_listeners(file: ConfigFile, errors: list[str]) -> list[ListenSection]:
    """The listeners to bind, in order (a worker's listening descriptors follow this order)."""
    server = file.server
    if server.listen:
        if server.host is not None or server.port is not None:
            errors.append(
                "server.listen: cannot be combined with server.host / server.port (the one-listener "
                "shorthand); move that address into server.listen"
            )
        listeners = list(server.listen)
    else:
        listeners = [ListenSection(host=server.host or DEFAULT_HOST, port=DEFAULT_PORT if server.port is None else server.port)]
    seen: dict[tuple[str, int], int] = {}
    for index, listener in enumerate(listeners):
        path = f"server.listen[{index}]" if server.listen else "server"
        if not is_listen_host(listener.host):
            errors.append(f"{path}.host: expected an IP address or a host name, got {printable(listener.host)!r}")
        address = (listener.host, listener.port)
        if listener.port != 0 and address in seen:
            errors.append(f"{path}: {listener.address} is already server.listen[{seen[address]}]")
        seen.setdefault(address, index)
        if listener.tls is not None:
            try:
                server_context(listener.tls, server.http2.enabled)
            except TlsFileError as exc:
                errors.append(f"{path}.tls: {exc}")
    return listeners


def resolve_connect(
    file: ConfigFile, global_auth: list[str], errors: list[str], environ: Mapping[str, str] | None
) -> list[str]:
    """The relay keys a CONNECT tunnel accepts; every problem of `[server.connect]` into `errors`."""
    connect = file.server.connect
    if not connect.enabled:
        return []
    keys = global_auth if connect.auth_keys is None else resolve_keys(connect.auth_keys, "server.connect.auth_keys", errors, environ)
    if connect.auth and not keys:
        errors.append(
            "server.connect.auth: no relay key to check (set auth_keys, top-level or in server.connect), "
            "or auth = false for an unauthenticated forward proxy"
        )
    if not connect.allow:
        errors.append("server.connect.allow: empty; list the destinations tunnels may reach (\"api.openai.com:443\")")
    for index, pattern in enumerate(connect.allow):
        if not _ALLOW_PATTERN.fullmatch(pattern) or (pattern.rsplit(":", 1)[1] != "*" and int(pattern.rsplit(":", 1)[1]) > 65535):
            errors.append(
                f"server.connect.allow[{index}]: expected \"host:port\" (a '*' in the host or as the port "
                f"matches any), got {printable(pattern)!r}"
            )
    if connect.via_endpoint is not None and connect.via_endpoint not in file.endpoints:
        errors.append(f"server.connect.via_endpoint: no endpoint named {printable(connect.via_endpoint)!r}")
    return keys
