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
