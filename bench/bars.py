"""The bars the HTTP/2 and TLS work set itself, computed from a case's rounds.

Each bar is a ratio of proxy CPU per request between two faces of the same llmrelay process measured
in the same rounds (bench/tls_targets.py): h2c against HTTP/1.1 at the same number of requests in
flight, TLS against plain. The ratio is taken from the medians and, since both faces run in every
round, round by round too; nginx's same ratio is shown beside it as a reference for what the protocol
costs a mature server. A ratio with no bar (`limit` None) is there for reference only.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bench.tls_targets import H2_TLS, H2C, HTTP1, PLAIN, TLS


class Run(Protocol):
    cpu_us: float | None


@dataclass(frozen=True)
class Bar:
    scenario: str  # the case's scenario: "h2" or "tls"
    numerator: str  # face labels
    denominator: str
    limit: float | None  # the bar (ratio at most this), None: for reference
    streams_too: bool = False  # False: the bar holds for non-streamed (JSON) cases; streams get the ratio alone

    @property
    def title(self) -> str:
        return f"{self.numerator} ÷ {self.denominator}"


BARS = (
    Bar("h2", H2C, HTTP1, 1.5),  # HTTP/2 JSON CPU per request ≤ 1.5× our HTTP/1.1 figure
    Bar("h2", H2_TLS, HTTP1, None),
    Bar("tls", TLS, PLAIN, 1.3, streams_too=True),  # keep-alive TLS CPU per request within 1.3× of plain
)
STATEMENTS = (
    "HTTP/2 JSON CPU per request ≤ 1.5× our HTTP/1.1 figure: llmrelay h2c ÷ llmrelay HTTP/1.1 (h2load, the same "
    "requests in flight: c connections × m streams against c×m HTTP/1.1 connections)",
    "keep-alive TLS CPU per request within 1.3× of plain: llmrelay TLS ÷ llmrelay plain (wrk, HTTP/1.1)",
    "h2 TLS ÷ HTTP/1.1 and the SSE cases' h2c ÷ HTTP/1.1 are there for reference (no bar)",
)


@dataclass
class BarRow:
    case: str
    bar: Bar
    limit: float | None  # the bar as it applies to this case
    numerator: float | None  # llmrelay's CPU µs per request (medians)
    denominator: float | None
    round_ratios: list[float] = field(default_factory=list)
    nginx_ratio: float | None = None

    @property
    def ratio(self) -> float | None:
        return self.numerator / self.denominator if self.numerator and self.denominator else None

    @property
    def verdict(self) -> str:
        if self.limit is None or self.ratio is None:
            return "—"
        return "PASS" if self.ratio <= self.limit else "over"


def compare(case_label: str, scenario: str, streamed: bool, results: Mapping[str, Sequence[Run]], workers: int) -> list[BarRow]:
    """The bars of `scenario` for one case, from each face's runs (`results`: target name -> runs)."""

    def cpu(name: str) -> float | None:
        values = [run.cpu_us for run in results.get(name, []) if run.cpu_us is not None]
        return statistics.median(values) if values else None

    rows = []
    for bar in BARS:
        if bar.scenario != scenario:
            continue
        relay_top, relay_bottom = (f"llmrelay {workers}w {label}" for label in (bar.numerator, bar.denominator))
        nginx_top, nginx_bottom = cpu(f"nginx {workers}w {bar.numerator}"), cpu(f"nginx {workers}w {bar.denominator}")
        pairs = zip(results.get(relay_top, []), results.get(relay_bottom, []), strict=False)
        rows.append(
            BarRow(
                case=case_label,
                bar=bar,
                limit=bar.limit if bar.streams_too or not streamed else None,
                numerator=cpu(relay_top),
                denominator=cpu(relay_bottom),
                round_ratios=[top.cpu_us / bottom.cpu_us for top, bottom in pairs if top.cpu_us and bottom.cpu_us],
                nginx_ratio=nginx_top / nginx_bottom if nginx_top and nginx_bottom else None,
            )
        )
    return rows


def render(rows: list[BarRow]) -> str:
    lines = ["Bars (proxy CPU µs per request of one llmrelay process, two of its listeners in the same rounds):", ""]
    lines += [f"- {statement}" for statement in STATEMENTS]
    lines += [
        "",
        "| case | llmrelay CPU µs/req | bar | ratio | per round | verdict | nginx's ratio |",
        "|---|---|---:|---:|---|---|---:|",
    ]
    for row in rows:
        figures = "—" if row.numerator is None or row.denominator is None else f"{row.numerator:,.0f} ÷ {row.denominator:,.0f}"
        cells = [
            row.case,
            f"{row.bar.title}: {figures}",
            "—" if row.limit is None else f"≤ {row.limit:g}×",
            "—" if row.ratio is None else f"{row.ratio:.2f}",
            " / ".join(f"{value:.2f}" for value in row.round_ratios) or "—",
            row.verdict,
            "—" if row.nginx_ratio is None else f"{row.nginx_ratio:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
