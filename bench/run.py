"""llmrelay against a direct run and against nginx, measured in one run on this machine.

Targets: `direct` (load generator -> fast mock), `llmrelay Nw` (-> relay with N workers -> mock) and,
when nginx is installed, `nginx Nw`. Each scenario case starts its own set of targets, warms each up,
then runs them interleaved (A B C, B C A, C A B, ...: each round starts one target later, so that no
target always runs in the same place or after the same one; `--rounds` rounds) and reports the median
of the rounds. Scenarios:

1. `json`: non-streamed chat completion, HTTP/1.1 keep-alive, wrk at concurrency 16 and 64;
   `json3` adds, to the case at the highest concurrency (64), `llmrelay Nw ×3 upstreams`: the same
   relay whose endpoint has three upstreams of weights 1, 2 and 3 (three ports of the same mock),
   measured in the same rounds, and a table of proxy CPU per request with one upstream and with three
   (and, with `--baseline`, the baseline's one-upstream figure: the baseline gets no three-upstream
   target);
2. `sse`: SSE completion of 20 events without delay, wrk at concurrency 16 and 64;
3. `latency`: streams of 20 events 20 ms apart from 8 sequential clients: time to first byte, and
   each event's one-way delay (mock's write -> client's read), through the proxy against direct;
4. `long` (opt-in, `--long`; minutes): 1,000 concurrent one-second streams (20 events 50 ms apart)
   for 20 s with wrk, and 10,000 concurrent slow streams (one event every 5 s, opened at 200 per
   second, each long enough to be open while the last ones open) with an asyncio client;
6. `h2` (opt-in, `--only h2`): h2load, JSON and SSE, HTTP/1.1, h2c and h2 over TLS of llmrelay and
   nginx (one process each, several listeners: bench/tls_targets.py) at the same requests in flight;
7. `tls` (opt-in, `--only tls`): wrk, JSON over HTTP/1.1 keep-alive, plain and TLS listeners.
   Both print the bars of bench/bars.py (CPU per request of h2c ÷ HTTP/1.1, TLS ÷ plain).

1 against 2 workers (scaling) is part of 1 and 2 (`--workers`). The proxy's CPU time per request
comes from /proc (supervisor and workers, or nginx master and workers). Prints one markdown table
and writes it, with the per-round figures, to bench/results/latest.md.

Run from the repository root: `python bench/run.py [--quick] [--long] [--only json,json3,latency]
[--duration S] [--rounds R] [--workers 1,2] [--profile]` (or `python -m bench ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bars, sse_client, tls_targets  # noqa: E402
from bench.cpu import CpuMeter  # noqa: E402
from bench.h2load import have_h2load, in_flight_shape, run_h2load  # noqa: E402
from bench.h2load import version as h2load_version  # noqa: E402
from bench.targets import (  # noqa: E402
    Direct,
    MockServer,
    Nginx,
    Relay,
    Target,
    TargetError,
    cpu_seconds,
    new_workdir,
    raise_nofile,
    start_all,
    status_kib,
    stop_all,
)
from bench.wrk import CHAT_BODY, STREAM_BODY, WrkScript, have_wrk, run_wrk  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PATH = "/v1/chat/completions"
SCENARIOS = ("json", "json3", "sse", "latency", "long", "h2", "tls")
ALIASES = {
    "1": "json", "2": "sse", "3": "latency", "4": "long", "5": "scaling", "scaling": "scaling", "upstreams": "json3",
    "6": "h2", "7": "tls", "http2": "h2",
}  # fmt: skip
PROTOCOL_SCENARIOS = ("h2", "tls")  # one proxy process per case, several listeners: bench/tls_targets.py
UPSTREAMS = 3  # scenario json3: upstreams of weights 1, 2, 3
BACKGROUND_WARN = 0.15  # CPUs used by other processes during a run before the figures are flagged


@dataclass(frozen=True)
class Case:
    """One line-up of targets measured together: a scenario at one concurrency."""

    scenario: str
    label: str
    kind: str  # "wrk", "h2load", "latency" or "hold"
    connections: int  # h2load: HTTP/2 connections, of `streams` streams each
    duration: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = CHAT_BODY
    timeout: float = 10.0
    events: int = 20
    delay_ms: float = 0.0
    rounds: int | None = None  # None: --rounds
    open_rate: float = 200.0  # "hold": connections opened per second
    upstreams: int = 1  # > 1: the relays of this tree are measured with that many upstreams too
    streams: int = 1  # h2load: streams in flight per HTTP/2 connection


@dataclass
class Measurement:
    """One run of one target."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: Counter[str]
    cpu_us: float | None
    hwm_kib: int
    rss_kib: int
    background_cpus: float
    requests: int
    extra: dict[str, float] = field(default_factory=dict)
    respawned: bool = False
    hwm_total_kib: int = 0  # VmHWM summed over all the proxy's processes


@dataclass
class Row:
    scenario: str
    target: str
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors: int | None
    cpu_us: float | None
    rss_mib: float | None
    ratio_direct: float | None = None
    ratio_nginx: float | None = None
    notes: str = ""


@dataclass
class UpstreamsRow:
    """One worker count of a case with several upstreams: proxy CPU µs per request."""

    scenario: str
    workers: int
    upstreams: int
    one: float | None  # this tree, one upstream
    several: float | None  # this tree, `upstreams` upstreams
    base: float | None  # the baseline (one upstream), when --baseline
    one_rps: float | None
    several_rps: float | None
    round_ratios: list[float] = field(default_factory=list)  # several/one, round by round
    round_base_ratios: list[float] = field(default_factory=list)  # one/base, round by round


@dataclass
class PairRow:
    """Proxy CPU per request of one row against another of the same case, round by round."""

    scenario: str
    question: str
    row: str
    against: str
    ratios: list[float]  # row / against, per round (each pair measured in the same round)
    row_median: float
    against_median: float


# (row kind, kind it is compared with, what the ratio answers); "Nw" rows of the same worker count
PAIRS = (
    ("llmrelay", "llmrelay@base", "this tree ÷ the baseline (no access log in either)"),
    ("llmrelay+logs", "llmrelay@base+logs", "JSON access log to a file ÷ the baseline's text access log"),
    ("llmrelay+logs", "llmrelay@base", "JSON access log to a file ÷ the baseline without access log"),
    ("llmrelay+limits", "llmrelay", "one limit rule (requests and tokens) ÷ no rule"),
)


def compare_pairs(case: Case, results: dict[str, list[Measurement]], workers: list[int]) -> list[PairRow]:
    rows: list[PairRow] = []
    for count in workers:
        for kind, other, question in PAIRS:
            mine, theirs = results.get(f"{kind} {count}w", []), results.get(f"{other} {count}w", [])
            pairs = [(a.cpu_us, b.cpu_us) for a, b in zip(mine, theirs) if a.cpu_us and b.cpu_us]
            if not pairs:
                continue
            rows.append(
                PairRow(
                    case.label, question, f"{kind} {count}w", f"{other} {count}w", [a / b for a, b in pairs],
                    statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
                )
            )
    return rows


def render_pairs(rows: list[PairRow]) -> str:
    lines = [
        "| case | ratio | CPU µs/req (medians) | paired ratio: median | min – max | rounds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.scenario} | {row.question} (`{row.row}` ÷ `{row.against}`) | {row.row_median:.0f} ÷ {row.against_median:.0f} | "
            f"{statistics.median(row.ratios):.3f} | {min(row.ratios):.3f} – {max(row.ratios):.3f} | {len(row.ratios)} |"
        )
    return "\n".join(lines)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    upstreams: list[UpstreamsRow] = field(default_factory=list)
    bars: list[bars.BarRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # make the exit status 1 (for CI)
    pairs: list[PairRow] = field(default_factory=list)


def build_cases(args: argparse.Namespace, scenarios: list[str], wrk: bool) -> tuple[list[Case], list[str]]:
    cases: list[Case] = []
    skipped: list[str] = []
    duration = args.duration
    stream_headers = {"x-mock-events": "20"}
    if "json" in scenarios or "json3" in scenarios:
        several = max(args.concurrency)  # json3: the highest concurrency (64 by default)
        for connections in args.concurrency:
            if "json" not in scenarios and connections != several:
                continue
            upstreams = UPSTREAMS if "json3" in scenarios and connections == several else 1
            cases.append(Case("json", f"1 JSON c={connections}", "wrk", connections, duration, upstreams=upstreams))
    if "sse" in scenarios:
        for connections in args.concurrency:
            cases.append(
                Case("sse", f"2 SSE 20 ev c={connections}", "wrk", connections, duration, stream_headers, STREAM_BODY)
            )
    if "latency" in scenarios:
        cases.append(
            Case("latency", f"3 SSE 20×20 ms c={args.latency_clients}", "latency", args.latency_clients, duration, delay_ms=20.0)
        )
    if "long" in scenarios:
        cases.append(
            Case(
                "long",
                "4a 1k streams 20×50 ms",
                "wrk",
                1000,
                args.long_duration,
                {"x-mock-events": "20", "x-mock-delay-ms": "50"},
                STREAM_BODY,
                timeout=30.0,
                delay_ms=50.0,
                rounds=args.long_rounds,
            )
        )
        if args.slow_streams > 0:  # 0: scenario 4a alone
            # Every stream must outlive the ramp-up, so that all of them are open at once for a while.
            ramp = args.slow_streams / args.slow_open_rate
            events = math.ceil(ramp / 5.0) + 2
            cases.append(
                Case(
                    "long",
                    f"4b {args.slow_streams:,} slow streams {events}×5 s",
                    "hold",
                    args.slow_streams,
                    0,
                    events=events,
                    delay_ms=5000.0,
                    rounds=args.long_rounds,
                    open_rate=args.slow_open_rate,
                )
            )
    for clients, streams in args.h2_shapes if "h2" in scenarios else []:
        for body, headers, what in ((CHAT_BODY, {}, "JSON"), (STREAM_BODY, stream_headers, "SSE 20 ev")):
            label = f"6 h2 {what} {clients}×{streams}"
            cases.append(Case("h2", label, "h2load", clients, duration, headers, body, streams=streams))
    if "tls" in scenarios:
        for connections in args.concurrency:
            cases.append(Case("tls", f"7 TLS JSON c={connections}", "wrk", connections, duration))
    missing = {"wrk": not wrk, "h2load": not have_h2load()}
    skipped = [f"{case.label} (no {case.kind})" for case in cases if missing.get(case.kind)]
    cases = [case for case in cases if not missing.get(case.kind)]
    return cases, skipped


def make_targets(
    mock: MockServer, workers: list[int], nginx: bool, workdir: Path, baseline: Path | None = None, upstreams: int = 1,
    scenario: str = "json", observed: bool = False, limited: bool = False,
) -> list[Target]:
    if scenario in PROTOCOL_SCENARIOS:  # the first worker count only: CPU per request hardly depends on it
        return tls_targets.protocol_targets(scenario, mock, workers[0], nginx and tls_targets.ListenersNginx.available(), workdir)
    targets: list[Target] = [Direct(mock)]
    targets += [Relay(mock, count, workdir) for count in workers]
    if upstreams > 1:  # this tree only: a baseline may predate several upstreams per endpoint
        targets += [Relay(mock, count, workdir, upstreams=upstreams) for count in workers]
    if observed:  # this tree with its JSON access log written to a file (and its metrics, on by default)
        targets += [Relay(mock, count, workdir, observed=True) for count in workers]
    if limited:  # this tree with one limit rule on every request
        targets += [Relay(mock, count, workdir, limited=True) for count in workers]
    if baseline is not None:
        targets += [Relay(mock, count, workdir, source=baseline) for count in workers]
        if observed:  # the baseline with its own (text) access log: what the JSON log is compared with
            targets += [Relay(mock, count, workdir, source=baseline, observed=True) for count in workers]
    if nginx:
        targets += [Nginx(mock, count, workdir) for count in workers]
    return targets


def measure(target: Target, case: Case, mock: MockServer, threads: int, duration: int | None = None) -> Measurement:
    """Run `case` against `target` once, with CPU and memory of the proxy's processes around it."""
    pids = target.pids()
    workers_before = pids[1:]
    meter = CpuMeter(lambda: target.pids() + mock.pids())
    cpu_before = cpu_seconds(pids)
    meter.start()
    extra: dict[str, float] = {}
    errors: Counter[str] = Counter()
    if case.kind == "wrk":
        with WrkScript(case.body, case.headers) as script:
            result = run_wrk(
                target.url(PATH),
                script,
                connections=case.connections,
                duration=duration if duration is not None else case.duration,
                threads=threads,
                timeout=case.timeout,
            )
        requests, rps, p50, p99 = result.requests, result.rps, result.p50_ms, result.p99_ms
        errors.update({kind: count for kind, count in result.error_counts().items() if count})
    elif case.kind == "h2load":
        loaded = run_h2load(
            target.url(PATH), case.body, case.headers, clients=case.connections, streams=case.streams,
            protocol=target.protocol, duration=duration if duration is not None else case.duration,
            threads=threads, timeout=case.timeout,
        )  # fmt: skip
        requests, rps, p50, p99 = loaded.requests, loaded.rps, loaded.p50_ms, loaded.p99_ms
        errors.update({kind: count for kind, count in loaded.error_counts().items() if count})
    elif case.kind == "latency":
        seconds = duration if duration is not None else case.duration
        run = asyncio.run(
            sse_client.latency_run(
                target.url(PATH), clients=case.connections, duration=seconds, events=case.events, delay_ms=case.delay_ms
            )
        )
        requests, rps = run.completed, run.completed / run.duration_s if run.duration_s else 0.0
        p50, p99 = _pct(run.ttfb_ms, 50), _pct(run.ttfb_ms, 99)
        extra = {
            "first_event_p50": _pct(run.first_event_ms, 50),
            "event_p50": _pct(run.event_delay_ms, 50),
            "event_p99": _pct(run.event_delay_ms, 99),
            "events": float(len(run.event_delay_ms)),
        }
        errors = run.errors
    else:
        with PeakSampler(lambda: mock.stats().get("active_streams", 0)) as peak:
            run = asyncio.run(
                sse_client.hold_run(
                    target.url(PATH), streams=case.connections, events=case.events, delay_ms=case.delay_ms, open_rate=case.open_rate
                )
            )
        requests, rps = run.completed, run.completed / run.duration_s if run.duration_s else 0.0
        p50, p99 = _pct(run.total_ms, 50), _pct(run.total_ms, 99)
        extra = {
            "peak_upstream": float(peak.peaks[0]),
            "completed": float(run.completed),
            "seconds": run.duration_s,
            "peak_open": float(run.peak_open),
        }
        errors = run.errors
    background = meter.stop()
    pids_after = target.pids()
    cpu = cpu_seconds(pids_after) - cpu_before
    return Measurement(
        rps=rps,
        p50_ms=p50,
        p99_ms=p99,
        errors=errors,
        cpu_us=cpu / requests * 1e6 if pids and requests else None,
        hwm_kib=max((status_kib(pid, "VmHWM") for pid in pids_after), default=0),
        rss_kib=max((status_kib(pid, "VmRSS") for pid in pids_after), default=0),
        background_cpus=background,
        hwm_total_kib=sum(status_kib(pid, "VmHWM") for pid in pids_after),
        requests=requests,
        extra=extra,
        respawned=bool(pids) and sorted(pids_after[1:]) != sorted(workers_before),
    )


class PeakSampler:
    """Samples some counters once a second in a thread while a run lasts; keeps each one's peak."""

    def __init__(self, *probes: Callable[[], int]) -> None:
        self.probes = probes
        self.peaks = [0] * len(probes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            for index, probe in enumerate(self.probes):
                self.peaks[index] = max(self.peaks[index], probe())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def warm_up(target: Target, case: Case, mock: MockServer, threads: int, quick: bool) -> None:
    """Connections, pools and code paths warm before the measured rounds (nothing recorded)."""
    if case.kind == "hold":
        return
    if case.kind == "latency" or (quick and case.scenario not in PROTOCOL_SCENARIOS):
        asyncio.run(sse_client.latency_run(target.url(PATH), clients=2, duration=0.3, events=2, delay_ms=0.0))
        return
    measure(target, case, mock, threads, duration=1)


def run_case(case: Case, mock: MockServer, args: argparse.Namespace, nginx: bool, report: Report) -> None:
    rounds = case.rounds if case.rounds is not None else args.rounds
    workdir = new_workdir()
    failures = len(report.failures)
    try:
        targets = make_targets(mock, args.workers, nginx, workdir, args.baseline, case.upstreams, case.scenario, args.observed, args.limited)
    except TargetError as exc:
        report.failures.append(f"{case.label}: {exc}")
        return
    owners = list(dict.fromkeys(target.owner for target in targets))  # a process may serve several rows
    results: dict[str, list[Measurement]] = {target.name: [] for target in targets}
    started: list[Target] = []
    try:
        for owner in owners:
            try:
                start_all([owner])
                started.append(owner)
            except TargetError as exc:
                report.failures.append(f"{case.label}: {owner.name} did not start: {exc}")
                owner.stop()
        live = [target for target in targets if target.owner in started]
        _log(f"{case.label}: warming up {', '.join(t.name for t in live)}")
        for target in live:
            warm_up(target, case, mock, args.wrk_threads, args.quick)
        # A process serving several rows: its memory is watched as one, not row by row.
        shared = [owner for owner in started if owner not in targets]
        rss_before = {owner.name: _rss_kib(owner) for owner in shared}
        for round_index in range(rounds):
            # Rotated: a target's place in the round (what ran just before it, how long the machine
            # has been under load) changes from round to round instead of biasing the same target.
            shift = round_index % len(live) if live else 0
            for target in live[shift:] + live[:shift]:
                _log(f"{case.label}: round {round_index + 1}/{rounds}, {target.name}")
                try:
                    results[target.name].append(measure(target, case, mock, args.wrk_threads))
                except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                    report.failures.append(f"{case.label}: {target.name} round {round_index + 1} failed: {exc}")
        for owner in shared:
            first, last = rss_before[owner.name], _rss_kib(owner)
            if last > first * 1.1 and last - first > 2048:
                report.notes.append(
                    f"{case.label}: {owner.name} (one process, all its rows): RSS grew from {first / 1024:.1f} to "
                    f"{last / 1024:.1f} MiB from the warm-up to the last round"
                )
        for owner in started:
            lines = owner.problems()
            if lines:
                report.notes.append(
                    f"{case.label}: {owner.name} logged {len(lines)} warning/error line(s), first: {lines[0][:300]}"
                )
    finally:
        stop_all(owners)
        if len(report.failures) == failures:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            report.notes.append(f"{case.label}: configs and logs kept in {workdir}")
    rows = summarise(case, results, report, frozenset(target.name for target in targets if target.owner is not target))
    if case.kind == "h2load":  # how the requests in flight are carried differs from row to row
        protocols = {target.name: target.protocol for target in targets}
        for row in rows:
            shape = in_flight_shape(case.connections, case.streams, protocols[row.target])
            row.notes = shape + (" (the mock speaks no HTTP/2)" if row.target == "direct" else "")
    report.rows.extend(rows)
    if case.scenario in PROTOCOL_SCENARIOS:
        report.bars.extend(bars.compare(case.label, case.scenario, case.body == STREAM_BODY, results, args.workers[0]))
    if case.upstreams > 1:
        report.upstreams.extend(compare_upstreams(case, results, args.workers))
    report.pairs.extend(compare_pairs(case, results, args.workers))


def _rss_kib(target: Target) -> int:
    return max((status_kib(pid, "VmRSS") for pid in target.pids()), default=0)


def summarise(case: Case, results: dict[str, list[Measurement]], report: Report, shared: frozenset[str] = frozenset()) -> list[Row]:
    """Medians, notes and failures of a case; `shared`: rows served by one process with others (its
    memory is watched by run_case, for the process)."""
    rows: list[Row] = []
    med: dict[str, Measurement] = {}
    for name, runs in results.items():
        if not runs:
            continue
        med[name] = _median(runs)
        report.details.append(
            f"| {case.label} | {name} | "
            + " / ".join(f"{m.rps:,.0f}" for m in runs)
            + " | "
            + " / ".join(f"{m.p99_ms:.2f}" for m in runs)
            + " | "
            + " / ".join("—" if m.cpu_us is None else f"{m.cpu_us:.0f}" for m in runs)
            + " | "
            + " / ".join(f"{m.rss_kib / 1024:.1f}" for m in runs)
            + " | "
            + " / ".join(f"{m.background_cpus:.2f}" for m in runs)
            + " |"
        )
        if any(m.respawned for m in runs):
            report.notes.append(f"{case.label}: {name}: a worker process changed (died or was replaced) during a run")
        first, last = runs[0].rss_kib, runs[-1].rss_kib
        if len(runs) > 1 and last > first * 1.1 and last - first > 2048 and name not in shared:
            report.notes.append(f"{case.label}: {name}: RSS grew from {first / 1024:.1f} to {last / 1024:.1f} MiB over the rounds")
        kinds = Counter[str]()
        for m in runs:
            kinds.update(m.errors)
        if kinds:
            message = f"{case.label}: {name}: errors {dict(kinds)}"
            if case.scenario == "long":  # overload is what scenario 4 looks for: reported, not failed
                report.notes.append(message)
            else:
                report.failures.append(message)
    background = [m.background_cpus for runs in results.values() for m in runs]
    disturbed = [value for value in background if value > BACKGROUND_WARN]
    if disturbed:
        report.notes.append(
            f"{case.label}: during {len(disturbed)} of {len(background)} runs other processes kept more than "
            f"{BACKGROUND_WARN} CPUs busy (up to {max(disturbed):.2f}; median of all runs {statistics.median(background):.2f}): "
            "those runs are noisy (per-round figures in the results file)"
        )
    direct = med.get("direct")
    for name, m in med.items():
        errors = sum(sum(r.errors.values()) for r in results[name])
        rss = max(r.hwm_kib for r in results[name]) / 1024 if m.cpu_us is not None else None
        nginx_name = "nginx " + name.split(" ", 1)[1] if name.startswith("llmrelay") and " " in name else ""
        nginx = med.get(nginx_name)
        if case.kind == "latency":
            rows.extend(_latency_rows(case, name, m, direct, errors, rss))
            continue
        notes = ""
        total = max(r.hwm_total_kib for r in results[name]) / 1024
        all_processes = f"; peak RSS of all its processes {total:.0f} MiB" if m.cpu_us is not None else ""
        if case.kind == "hold":
            notes = (
                f"{int(m.extra['completed']):,} of {case.connections:,} completed; peak {int(m.extra['peak_upstream']):,} "
                f"streams open at the mock; {m.extra['seconds']:.0f} s{all_processes}; p50/p99: whole stream"
            )
        elif case.kind == "wrk" and case.delay_ms:
            notes = f"{m.rps * case.duration:,.0f} streams done in {case.duration:g} s{all_processes}; p50/p99: whole stream"
        rows.append(
            Row(
                scenario=case.label,
                target=name,
                rps=m.rps,
                p50_ms=m.p50_ms,
                p99_ms=m.p99_ms,
                errors=errors,
                cpu_us=m.cpu_us,
                rss_mib=rss,
                ratio_direct=m.rps / direct.rps if direct and direct.rps and name != "direct" else None,
                ratio_nginx=m.rps / nginx.rps if nginx and nginx.rps else None,
                notes=notes,
            )
        )
    return rows


def compare_upstreams(case: Case, results: dict[str, list[Measurement]], workers: list[int]) -> list[UpstreamsRow]:
    """Proxy CPU per request of this tree with one upstream and with several (and of the baseline)."""
    rows = []

    def cpu(name: str) -> float | None:
        values = [m.cpu_us for m in results.get(name, []) if m.cpu_us is not None]
        return statistics.median(values) if values else None

    def rps(name: str) -> float | None:
        runs = results.get(name, [])
        return statistics.median(m.rps for m in runs) if runs else None

    for count in workers:
        one_name = f"llmrelay {count}w"
        several_name = f"{one_name} ×{case.upstreams} upstreams"
        pairs = zip(results.get(one_name, []), results.get(several_name, []), strict=False)
        ratios = [b.cpu_us / a.cpu_us for a, b in pairs if a.cpu_us and b.cpu_us]
        base_pairs = zip(results.get(f"llmrelay@base {count}w", []), results.get(one_name, []), strict=False)
        base_ratios = [b.cpu_us / a.cpu_us for a, b in base_pairs if a.cpu_us and b.cpu_us]
        rows.append(
            UpstreamsRow(
                scenario=case.label,
                workers=count,
                upstreams=case.upstreams,
                one=cpu(one_name),
                several=cpu(several_name),
                base=cpu(f"llmrelay@base {count}w"),
                one_rps=rps(one_name),
                several_rps=rps(several_name),
                round_ratios=ratios,
                round_base_ratios=base_ratios,
            )
        )
    return rows


def render_upstreams(rows: list[UpstreamsRow]) -> str:
    """The json3 table: proxy CPU µs per request, one upstream against several, and the ratios."""
    baseline = any(row.base is not None for row in rows)
    head = ["scenario", "workers", "one upstream µs/req", "N upstreams µs/req", "N/one", "N/one per round"]
    if baseline:
        head += ["base one upstream µs/req", "one/base", "one/base per round", "N/base"]
    head += ["req/s one", "req/s N"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]

    def num(value: float | None, spec: str = ",.0f") -> str:
        return "—" if value is None else format(value, spec)

    def ratio(a: float | None, b: float | None) -> str:
        return "—" if a is None or not b else f"{a / b:.3f}"

    for row in rows:
        cells = [
            f"{row.scenario}, {row.upstreams} upstreams (weights {'/'.join(str(i + 1) for i in range(row.upstreams))})",
            f"{row.workers}",
            num(row.one),
            num(row.several),
            ratio(row.several, row.one),
            " / ".join(f"{value:.3f}" for value in row.round_ratios) or "—",
        ]
        if baseline:
            per_round = " / ".join(f"{value:.3f}" for value in row.round_base_ratios) or "—"
            cells += [num(row.base), ratio(row.one, row.base), per_round, ratio(row.several, row.base)]
        cells += [num(row.one_rps), num(row.several_rps)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _latency_rows(case: Case, name: str, m: Measurement, direct: Measurement | None, errors: int, rss: float | None) -> list[Row]:
    ttfb_note = f"first event p50 {m.extra['first_event_p50']:.2f} ms"
    event_note = f"{int(m.extra['events']):,} events"
    if direct is not None and name != "direct":
        ttfb_note += f"; TTFB +{m.p50_ms - direct.p50_ms:.2f} ms vs direct"
        event_note += f"; +{m.extra['event_p50'] - direct.extra['event_p50']:.2f} ms per event vs direct (p50)"
    return [
        Row(f"{case.label}: TTFB", name, m.rps, m.p50_ms, m.p99_ms, errors, m.cpu_us, rss, notes=ttfb_note),
        Row(f"{case.label}: event delay", name, None, m.extra["event_p50"], m.extra["event_p99"], None, None, None, notes=event_note),
    ]


def _median(runs: list[Measurement]) -> Measurement:
    def med(get: Callable[[Measurement], float]) -> float:
        return statistics.median(get(m) for m in runs)

    cpus = [m.cpu_us for m in runs if m.cpu_us is not None]
    extra_keys = runs[0].extra.keys()
    return Measurement(
        rps=med(lambda m: m.rps),
        p50_ms=med(lambda m: m.p50_ms),
        p99_ms=med(lambda m: m.p99_ms),
        errors=Counter(),
        cpu_us=statistics.median(cpus) if cpus else None,
        hwm_kib=max(m.hwm_kib for m in runs),
        rss_kib=max(m.rss_kib for m in runs),
        hwm_total_kib=max(m.hwm_total_kib for m in runs),
        background_cpus=med(lambda m: m.background_cpus),
        requests=sum(m.requests for m in runs),
        extra={key: statistics.median(m.extra[key] for m in runs) for key in extra_keys},
    )


def render_table(rows: list[Row], nginx: bool) -> str:
    head = ["scenario", "target", "req/s", "p50 ms", "p99 ms", "errors", "proxy CPU µs/req", "peak RSS MiB", "×direct"]
    align = ["---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]
    if nginx:
        head.append("×nginx")
        align.append("---:")
    head.append("notes")
    align.append("---")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]

    def fmt(value: float | int | None, spec: str) -> str:
        return "—" if value is None or value != value else format(value, spec)

    for row in rows:
        cells = [
            row.scenario,
            row.target,
            fmt(row.rps, ",.0f"),
            fmt(row.p50_ms, ".2f"),
            fmt(row.p99_ms, ".2f"),
            fmt(row.errors, "d"),
            fmt(row.cpu_us, ",.0f"),
            fmt(row.rss_mib, ".1f"),
            fmt(row.ratio_direct, ".2f"),
        ]
        if nginx:
            cells.append(fmt(row.ratio_nginx, ".2f"))
        cells.append(row.notes)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line() -> str:
    def version(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "missing"
        text = (done.stdout + done.stderr).strip().splitlines()
        return text[0] if text else "?"

    wrk = version(["wrk", "--version"]).split(" Copyright")[0] if have_wrk() else "wrk missing"
    nginx = version(["nginx", "-v"]) if Nginx.available() else "nginx missing"
    h2load = f", {h2load_version()}" if have_h2load() else ""
    return (
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, {wrk}, {nginx}{h2load}"
    )


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 s per run, scenarios 1 and 3")
    parser.add_argument("--long", action="store_true", help="add scenario 4 (long-lived streams; minutes)")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios: json,json3,sse,latency,long,scaling,h2,tls or 1-7 (upstreams = json3)",
    )
    parser.add_argument("--duration", type=int, default=None, help="seconds per measured run (default 5; --quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick 1)")
    parser.add_argument("--workers", default="1,2", help="llmrelay and nginx worker counts (default 1,2)")
    parser.add_argument("--concurrency", default="16,64", help="wrk connections in scenarios 1, 2 and 7")
    parser.add_argument(
        "--h2-shapes", default="4x16,16x16", help="scenario 6: HTTP/2 connections x streams each (HTTP/1.1: their product)"
    )
    parser.add_argument("--latency-clients", type=int, default=8, help="scenario 3: concurrent sequential clients")
    parser.add_argument("--long-duration", type=int, default=20, help="scenario 4a: seconds")
    parser.add_argument("--long-rounds", type=int, default=1, help="scenario 4: rounds")
    parser.add_argument("--slow-streams", type=int, default=10_000, help="scenario 4b: concurrent slow streams (0: skip 4b)")
    parser.add_argument("--slow-open-rate", type=float, default=200.0, help="scenario 4b: connections opened per second")
    parser.add_argument("--mock-processes", type=int, default=2)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--no-nginx", action="store_true", help="leave nginx out even when installed")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout of llmrelay (e.g. `git worktree add /tmp/base HEAD~3`), measured as 'llmrelay@base' in the same rounds",
    )
    parser.add_argument(
        "--observed",
        action="store_true",
        help="also measure this tree with its JSON access log on, written to a file ('llmrelay+logs'; metrics are on in every row), "
        "and, with --baseline, the baseline with its text access log on ('llmrelay@base+logs')",
    )
    parser.add_argument(
        "--limited",
        action="store_true",
        help="also measure this tree with one per = \"relay_key\" limit rule (requests and tokens) on every request ('llmrelay+limits')",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.md")
    parser.add_argument("--profile", action="store_true", help="run bench/profiling.py instead (py-spy on a worker)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 5)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.workers = [int(part) for part in args.workers.split(",") if part.strip()]
    args.concurrency = [int(part) for part in args.concurrency.split(",") if part.strip()]
    try:
        args.h2_shapes = [tuple(int(n) for n in part.lower().split("x", 1)) for part in args.h2_shapes.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--h2-shapes: connections x streams, e.g. 4x16,16x16 (not {args.h2_shapes!r})")
    if any(len(shape) != 2 or min(shape) < 1 for shape in args.h2_shapes):
        parser.error(f"--h2-shapes: connections x streams, e.g. 4x16,16x16 (not {args.h2_shapes!r})")
    if args.only:
        wanted: set[str] = set()
        for part in args.only.split(","):
            name = ALIASES.get(part.strip(), part.strip())
            if name == "scaling":
                wanted |= {"json", "sse"}
            elif name in SCENARIOS:
                wanted.add(name)
            else:
                parser.error(f"unknown scenario {part!r} (one of {', '.join(SCENARIOS)}, upstreams, scaling, 1-7)")
        args.scenarios = [name for name in SCENARIOS if name in wanted]
    elif args.quick:
        args.scenarios = ["json", "latency"]
    else:
        args.scenarios = ["json", "json3", "sse", "latency"] + (["long"] if args.long else [])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        from bench import profiling

        return profiling.main([])
    started = time.monotonic()
    nofile = raise_nofile()
    report = Report()
    wrk = have_wrk()
    nginx = Nginx.available() and not args.no_nginx
    if not wrk:
        report.notes.append("wrk is not installed (apt-get install wrk): wrk scenarios (1, 2, 4a, 7) skipped")
    if "h2" in args.scenarios and not have_h2load():
        report.notes.append("h2load is not installed (apt-get install nghttp2-client): scenario 6 skipped")
    if not Nginx.available():
        report.notes.append("nginx is not installed (apt-get install nginx-light): no nginx targets, no ×nginx column")
    if "long" in args.scenarios and nofile < 2 * args.slow_streams + 1000:
        report.notes.append(
            f"RLIMIT_NOFILE is {nofile} (the hard limit here): a 1-worker proxy holding {args.slow_streams:,} streams needs "
            f"about {2 * args.slow_streams:,} descriptors (client and upstream sides); expect errors from the 1-worker targets"
        )
    cases, skipped = build_cases(args, args.scenarios, wrk)
    for label in skipped:
        report.notes.append(f"{label}: skipped")
    if nginx and any(case.scenario in PROTOCOL_SCENARIOS for case in cases) and tls_targets.nginx_lacks():
        report.notes.append(f"nginx lacks {', '.join(tls_targets.nginx_lacks())}: no nginx rows in scenarios 6 and 7")
    ports = max((case.upstreams for case in cases), default=1)
    with MockServer(processes=args.mock_processes, ports=ports) as mock:
        for case in cases:
            run_case(case, mock, args, nginx, report)
    elapsed = time.monotonic() - started
    table = render_table(report.rows, nginx)
    if report.upstreams:
        table += "\n\nProxy CPU per request with one upstream and with several (same case, same rounds; medians):\n\n"
        table += render_upstreams(report.upstreams)
    if report.bars:
        table += "\n\n" + bars.render(report.bars)
    if report.pairs:
        table += "\n\nProxy CPU per request, row against row (each ratio from the two runs of one round):\n\n"
        table += render_pairs(report.pairs)
    print(table)
    if report.notes or report.failures:
        print()
        for failure in report.failures:
            print(f"- FAILED: {failure}")
        for note in report.notes:
            print(f"- {note}")
    print(f"\n({len(cases)} cases, {args.rounds} round(s), {args.duration} s per run, {elapsed:.0f} s in all; {machine_line()})")
    write_results(args, report, table, elapsed)
    return 1 if report.failures else 0


def write_results(args: argparse.Namespace, report: Report, table: str, elapsed: float) -> None:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/run.py " + " ".join(sys.argv[1:]) if sys.argv else "python bench/run.py"
    parts = [
        "# llmrelay benchmark: latest run",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, `{command.strip()}`, {elapsed:.0f} s.",
        f"Machine: {machine_line()}.",
        f"{args.rounds} interleaved round(s) of {args.duration} s per target; medians of the rounds; mock: "
        f"{args.mock_processes} processes; wrk -t{args.wrk_threads}.",
        "",
        table,
        "",
    ]
    if report.notes or report.failures:
        parts += ["Notes:", ""] + [f"- FAILED: {failure}" for failure in report.failures]
        parts += [f"- {note}" for note in report.notes] + [""]
    if report.details:
        parts += [
            "Per round (req/s, p99 ms, proxy CPU µs per request, max RSS MiB after the run, CPUs used by other processes):",
            "",
            "| case | target | req/s | p99 ms | CPU µs/req | RSS MiB | background CPUs |",
            "|---|---|---|---|---|---|---|",
            *report.details,
            "",
        ]
    args.output.write_text("\n".join(parts))
    _log(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
