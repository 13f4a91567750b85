"""The benchmark still runs: a few seconds of scenario 3 (SSE latency, its own asyncio client, no
wrk or nginx needed), through real llmrelay and mock processes, printing its table.

Figures are not asserted (bench results are measurements, not tests); what is checked is that the
harness starts its targets, relays streams without errors and writes the markdown table.
"""

from __future__ import annotations

import subprocess
import sys

from relaytest import ROOT


def test_bench_smoke_run_prints_its_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    output = tmp_path / "bench.md"
    done = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--only",
            "latency",
            "--rounds",
            "1",
            "--duration",
            "1",
            "--workers",
            "1",
            "--no-nginx",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = output.read_text()
    assert "| scenario | target |" in table
    assert "llmrelay 1w" in table and "direct" in table
    assert "event delay" in table and "TTFB" in table
    assert "| scenario | target |" in done.stdout


def test_bench_three_upstreams_scenario_is_selectable_and_its_config_is_valid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`--only json3`: one JSON case at the highest concurrency whose relays also run with three
    upstreams (weights 1/2/3, one mock port each); the config it writes passes check-config."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench import run
    from bench.targets import MockServer, Relay

    args = run.parse_args(["--only", "json3", "--workers", "1", "--baseline", str(tmp_path)])
    cases, _ = run.build_cases(args, args.scenarios, wrk=True)
    assert [(case.label, case.upstreams) for case in cases] == [("1 JSON c=64", 3)]
    both = run.parse_args(["--only", "json,upstreams"])
    cases, _ = run.build_cases(both, both.scenarios, wrk=True)
    assert [(case.label, case.upstreams) for case in cases] == [("1 JSON c=16", 1), ("1 JSON c=64", 3)]

    mock = MockServer(ports=3)
    mock.ports, mock.port = [9101, 9102, 9103], 9101  # not started: only the config is checked
    names = [target.name for target in run.make_targets(mock, [1], False, tmp_path, tmp_path, upstreams=3)]
    assert names == ["direct", "llmrelay 1w", "llmrelay 1w ×3 upstreams", "llmrelay@base 1w"]
    config = tmp_path / "three.toml"
    config.write_text(Relay(mock, 1, tmp_path, upstreams=3).config_text())
    done = subprocess.run(
        [sys.executable, "-m", "llmrelay", "check-config", str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name, port, weight in (("one", 9101, 1), ("two", 9102, 2), ("three", 9103, 3)):
        assert f"upstream {name}  provider=openai  target=http://127.0.0.1:{port}/v1" in done.stdout
        assert f"weight={weight}  " in done.stdout


def test_bench_h2_and_tls_scenarios_are_selectable_and_their_relay_config_is_valid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`--only h2,tls`: h2load cases (JSON and SSE per connections × streams shape) and wrk TLS cases,
    each row one listener of a shared llmrelay process; the two-listener config passes check-config."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench import run, tls_targets
    from bench.targets import MockServer

    args = run.parse_args(["--only", "6,tls", "--h2-shapes", "4x16", "--concurrency", "64", "--workers", "1"])
    cases, _ = run.build_cases(args, args.scenarios, wrk=True)
    assert [(case.label, case.kind, case.connections, case.streams) for case in cases] == [
        ("6 h2 JSON 4×16", "h2load", 4, 16),
        ("6 h2 SSE 20 ev 4×16", "h2load", 4, 16),
        ("7 TLS JSON c=64", "wrk", 64, 1),
    ]
    mock = MockServer()
    mock.ports, mock.port = [9101], 9101  # not started: only the config is checked
    rows = run.make_targets(mock, [1], False, tmp_path, scenario="h2")
    assert [(target.name, target.protocol) for target in rows] == [
        ("direct", "h1"),
        ("llmrelay 1w HTTP/1.1", "h1"),
        ("llmrelay 1w h2c", "h2"),
        ("llmrelay 1w h2 TLS", "h2"),
    ]
    relay = rows[1].owner
    assert all(target.owner is relay for target in rows[1:])
    assert isinstance(relay, tls_targets.ListenersRelay)
    relay.port, relay.tls_port = 9201, 9202
    config = tmp_path / "listeners.toml"
    config.write_text(relay.config_text())
    done = subprocess.run(
        [sys.executable, "-m", "llmrelay", "check-config", str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "listener: http://127.0.0.1:9201" in done.stdout
    assert "listener: https://127.0.0.1:9202" in done.stdout
