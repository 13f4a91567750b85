"""The admin listener's `/status` document as a readable table, for `llmrelay status`.

Pure: a parsed document in, lines out (the document comes over HTTP, so every field is read
defensively: a relay of another version may lack one).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def duration(seconds: float) -> str:
    """`42s`, `3m12s`, `5h04m`, `2d03h`."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def size(value: float) -> str:
    if value <= 0:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def _ms(value: object) -> str:
    return f"{value:g} ms" if isinstance(value, (int, float)) else "-"


def _clock(stamp: object, now: float) -> str:
    if not isinstance(stamp, (int, float)) or stamp <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) + f" ({duration(now - stamp)} ago)"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [list(header)] + [["-" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _action(name: str, value: object, now: float) -> str:
    action = _dict(value)
    if not action:
        return f"last {name}: none since start"
    line = f"last {name}: {action.get('outcome') or '?'} at {_clock(action.get('finished_at'), now)}"
    if action.get("summary"):
        line += f": {action['summary']}"
    errors = action.get("errors") or []
    if errors:
        line += f" ({len(errors)} error(s): {str(errors[0])[:200]})"
    return line


def render(document: dict[str, Any], now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    lines = [
        f"llmrelay {document.get('version', '?')}  supervisor pid {document.get('pid', '?')}"
        f"  up {duration(float(document.get('uptime') or 0))}  health {document.get('health', '?')}"
        + ("  STOPPING" if document.get("stopping") else ""),
        f"config generation {document.get('generation', '?')}, loaded {_clock(document.get('loaded_at'), now)}"
        f" from {document.get('config', '?')}",
        f"in flight {document.get('in_flight', 0)}  admin {document.get('admin') or '-'}",
        "",
    ]
    workers = [_dict(w) for w in document.get("workers") or []]
    lines += table(
        ("SLOT", "PID", "STATE", "UPTIME", "CONNS", "IN-FLIGHT", "RSS", "REQUESTS"),
        [
            (
                w.get("slot"),
                w.get("pid"),
                w.get("state"),
                duration(float(w.get("uptime") or 0)),
                w.get("connections"),
                w.get("in_flight"),
                size(float(w.get("rss_bytes") or 0)),
                w.get("requests"),
            )
            for w in workers
        ],
    )
    lines.append("")
    rows: list[tuple[object, ...]] = []
    for endpoint, entry in _dict(document.get("endpoints")).items():
        for name, upstream in _dict(_dict(entry).get("upstreams")).items():
            u = _dict(upstream)
            rate = u.get("requests_per_second")
            rows.append(
                (
                    endpoint,
                    name,
                    u.get("state"),
                    u.get("in_flight"),
                    f"{rate:.2f}" if isinstance(rate, (int, float)) else None,
                    _ms(u.get("p50_ms")),
                    _ms(u.get("p99_ms")),
                    u.get("requests"),
                )
            )
    lines += table(("ENDPOINT", "UPSTREAM", "HEALTH", "IN-FLIGHT", "REQ/S (1m)", "P50 (1m)", "P99 (1m)", "REQUESTS"), rows)
    lines.append("")
    lines.append(_action("reload", document.get("last_reload"), now))
    lines.append(_action("restart", document.get("last_restart"), now))
    return lines
