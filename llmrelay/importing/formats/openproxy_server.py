"""openproxy's process-wide keys as llmrelay's `[server]`: its two listeners, the header limit, the
shutdown grace, the CONNECT switch, and the health-check switch and period every provider shares.

The defaults are openproxy's own (`Program::from_config` in its src/lib.rs): each listener binds
0.0.0.0; with neither port but a certificate and key, HTTPS on 443; `http_max_header_size` is clamped
to 1 KiB - 1 MiB (4096 when absent); health checks run only when `health_check.enabled` is true (a
`health_check` table without `enabled` is off) or, for older files, when `health_check_interval`
alone is set; their period is 60 s unless set.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llmrelay.importing.formats.openproxy_values import optional_bool, optional_int, optional_text, refused, sub_table
from llmrelay.importing.formats.source_keys import SourceTable
from llmrelay.importing.report import Report

DEFAULT_BIND_ADDRESS = "0.0.0.0"
DEFAULT_HTTPS_PORT = 443  # openproxy's port when only cert_file and private_key_file are set
DEFAULT_HEADER_SIZE = 4096
HEADER_SIZE_BOUNDS = (1024, 1024 * 1024)
DEFAULT_HEALTH_INTERVAL = 60
DEFAULT_SHUTDOWN_GRACE = 5


class HealthPolicy(msgspec.Struct, frozen=True):
    enabled: bool
    interval: int  # seconds between two rounds of checks


def health_policy(root: SourceTable, report: Report) -> HealthPolicy:
    """Whether openproxy runs its health checks at all, and how often."""
    legacy_interval = optional_int(root, "health_check_interval", 0)
    table = sub_table(root, "health_check")
    if table is not None:
        policy = _global_check_table(table, legacy_interval, report)
    elif legacy_interval is not None:
        report.moved("health_check_interval", "endpoints.*.upstreams[*].health_check.interval",
                     "set alone, it turns openproxy's checks on")
        policy = HealthPolicy(True, max(legacy_interval, 1))
    else:
        policy = HealthPolicy(False, DEFAULT_HEALTH_INTERVAL)
    if not policy.enabled:
        report.note(
            "health checks are off in this file; if openproxy ran with --enable-health-check (deprecated) they were"
            " on: set health_check.enabled: true in the source and import it again"
        )
    return policy


def _global_check_table(table: SourceTable, legacy_interval: int | None, report: Report) -> HealthPolicy:
    """`health_check: {enabled, interval}`: off unless `enabled` is true; the interval, else the older key."""
    enabled_value = optional_bool(table, "enabled")
    interval_value = optional_int(table, "interval", 0)
    table.drop_rest()
    enabled = bool(enabled_value)
    interval = next(value for value in (interval_value, legacy_interval, DEFAULT_HEALTH_INTERVAL) if value is not None)
    if enabled_value is None:
        report.note("health_check has no `enabled`: openproxy then runs no health check, and neither will llmrelay")
    else:
        report.moved(table.at("enabled"), "endpoints.*.upstreams[*].health_check",
                     "on: each provider's check" if enabled else "off: no upstream gets a check")
    for key, value in (("interval", interval_value), ("health_check_interval", legacy_interval)):
        if value is None:
            continue
        source = table.at(key) if key == "interval" else key
        in_use = key == "interval" or interval_value is None
        if enabled and in_use:
            report.moved(source, "endpoints.*.upstreams[*].health_check.interval")
        else:
            why = "health checks are off" if not enabled else "health_check.interval takes precedence"
            report.dropped(source, f"{why}; openproxy does not use it either", changes_behaviour=False)
    return HealthPolicy(enabled, max(interval, 1))


def server_section(root: SourceTable, report: Report) -> dict[str, Any]:
    server: dict[str, Any] = {"listen": _listeners(root, report)}
    header_size = optional_int(root, "http_max_header_size", 0)
    if header_size is None:
        report.note(
            f"http_max_header_size is not set: openproxy refuses request heads over {DEFAULT_HEADER_SIZE} bytes;"
            " llmrelay keeps its own limit (server.max_header_bytes = 32768), so larger heads are now accepted"
        )
    else:
        low, high = HEADER_SIZE_BOUNDS
        server["max_header_bytes"] = min(max(header_size, low), high)
        clamped = "" if low <= header_size <= high else f"clamped to {low}-{high} as openproxy does"
        report.moved("http_max_header_size", "server.max_header_bytes", clamped)
    grace = optional_int(root, "graceful_shutdown_timeout", 0)
    if grace is not None:
        server["drain_timeout"] = grace
        report.moved("graceful_shutdown_timeout", "server.drain_timeout",
                     "in-flight requests get this long when the relay stops (llmrelay also on a reload)")
    else:
        report.note(
            f"graceful_shutdown_timeout is not set: openproxy gives in-flight requests {DEFAULT_SHUTDOWN_GRACE} s"
            " when it stops; llmrelay keeps its drain_timeout default (600 s), so long streams are not cut"
        )
    return server


def _listeners(root: SourceTable, report: Report) -> list[dict[str, Any]]:
    """`[[server.listen]]` for openproxy's HTTPS and HTTP ports, with its port and address defaults."""
    https_port = optional_int(root, "https_port", 0, 65535)
    http_port = optional_int(root, "http_port", 0, 65535)
    cert_file = optional_text(root, "cert_file")
    key_file = optional_text(root, "private_key_file")
    https_bind = optional_text(root, "https_bind_address")
    http_bind = optional_text(root, "http_bind_address")
    if https_port is None and http_port is None:
        if cert_file is None or key_file is None:
            raise refused("https_port", "and `http_port` are both absent (openproxy needs one, or cert_file and private_key_file)")
        https_port = DEFAULT_HTTPS_PORT
        report.note("no https_port nor http_port: openproxy serves HTTPS on 443 (cert_file and private_key_file are set)")
    listeners: list[dict[str, Any]] = []
    if https_port is not None:
        if cert_file is None or key_file is None:
            raise refused("https_port", "needs both cert_file and private_key_file")
        listeners.append({
            "host": https_bind or DEFAULT_BIND_ADDRESS, "port": https_port,
            "tls": {"cert_file": cert_file, "key_file": key_file},
        })
        where = f"server.listen[{len(listeners) - 1}]"
        if root.has("https_port"):
            report.moved("https_port", f"{where}.port")
        report.moved("cert_file", f"{where}.tls.cert_file")
        report.moved("private_key_file", f"{where}.tls.key_file")
        _bind_address(https_bind, "https_bind_address", f"{where}.host", report)
    else:
        for key in ("cert_file", "private_key_file"):
            if root.has(key):
                report.dropped(key, "no https_port: openproxy loads no certificate either", changes_behaviour=False)
        if https_bind is not None:
            report.dropped("https_bind_address", "no https_port: openproxy binds nothing there", changes_behaviour=False)
    if http_port is not None:
        listeners.append({"host": http_bind or DEFAULT_BIND_ADDRESS, "port": http_port})
        where = f"server.listen[{len(listeners) - 1}]"
        report.moved("http_port", f"{where}.port", "plain HTTP (llmrelay also speaks h2c there)")
        _bind_address(http_bind, "http_bind_address", f"{where}.host", report)
    elif http_bind is not None:
        report.dropped("http_bind_address", "no http_port: openproxy binds nothing there", changes_behaviour=False)
    return listeners


def _bind_address(value: str | None, key: str, destination: str, report: Report) -> None:
    if value is not None:
        report.moved(key, destination)
    else:
        report.note(f"{key} is not set: openproxy binds {DEFAULT_BIND_ADDRESS}, so {destination} = \"{DEFAULT_BIND_ADDRESS}\"")
