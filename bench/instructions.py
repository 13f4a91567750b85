"""Instructions per relayed request, counted by valgrind's callgrind: a figure that does not move with
the machine's noise (a run's CPU time per request moves by ±20 % on a shared VM; this count by a few
per cent, from how requests batch in the event loop).

Each variant is the relay of `bench/run.py` (`bench.targets.Relay`, the same config) with one worker,
started under `valgrind --tool=callgrind --trace-children=yes --instr-atstart=no`: nothing is counted
until the load starts. h2load warms it up with `--warmup` requests, then the worker's counting is
switched on (`callgrind_control -i on`), `--requests` JSON requests are sent at `--concurrency`, and
counting stops. The figure is the worker's instructions (its threads included: callgrind runs them
one at a time) divided by the requests; the supervisor is not counted, nor is the kernel.

Variants: `this` (this tree), `this+logs` (JSON access log to a file), and with `--baseline DIR`
`base` and `base+logs` (that checkout, with its text access log). The rows are run `--rounds` times,
interleaved; medians.

    python bench/instructions.py --baseline /tmp/base --rounds 2

Needs valgrind (Debian `valgrind`) and h2load (`nghttp2-client`). Slow: a request costs about 50 times
its normal time under callgrind (a few minutes for the whole table). Limits are left to
`bench/run.py --limited`: a worker this slow asks for its leases in other proportions than at full
speed, and waits for grants a full-speed worker never waits for.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.targets import RELAY_ROUTE, MockServer, Relay, children_of  # noqa: E402
from bench.wrk import CHAT_BODY  # noqa: E402

READY_TIMEOUT = 180.0  # a relay under valgrind starts slowly
PATH = "/v1/chat/completions"


class CountedRelay(Relay):
    """`Relay` with its processes under callgrind (nothing counted until asked)."""

    def __init__(self, *args: object, output: Path, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.output = output

    def command(self, config: Path) -> list[str]:
        return [
            "valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no", "-q",
            f"--callgrind-out-file={self.output}/callgrind.%p", *super().command(config),
        ]  # fmt: skip

    def worker_pid(self) -> int:
        assert self._process is not None
        workers = children_of(self._process.pid)
        if len(workers) != 1:
            raise RuntimeError(f"expected one worker, found {workers}")
        return workers[0]


def h2load(url: str, requests: int, concurrency: int) -> int:
    body = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115
    body.write(CHAT_BODY)
    body.close()
    try:
        result = subprocess.run(
            ["h2load", "--h1", "-n", str(requests), "-c", str(concurrency), "-m", "1", "-d", body.name,
             "-H", "Content-Type: application/json", "-H", "Authorization: Bearer sk-bench-not-a-key", url],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
    finally:
        os.unlink(body.name)
    found = re.search(r"status codes: (\d+) 2xx", result.stdout)
    return int(found.group(1)) if found else 0


def measure(relay: CountedRelay, args: argparse.Namespace) -> float:
    relay.launch()
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while relay._serving_workers() != 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{relay.name} not ready under valgrind: {relay.log_tail()}")
            time.sleep(0.5)
        url = f"http://127.0.0.1:{relay.port}{RELAY_ROUTE}{PATH}"
        h2load(url, args.warmup, args.concurrency)
        pid = relay.worker_pid()
        subprocess.run(["callgrind_control", "--zero", str(pid)], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "--instr=on", str(pid)], capture_output=True, check=True)
        answered = h2load(url, args.requests, args.concurrency)
        subprocess.run(["callgrind_control", "--instr=off", str(pid)], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "--dump=measured", str(pid)], capture_output=True, check=True)
        if answered != args.requests:
            raise RuntimeError(f"{relay.name}: {answered} of {args.requests} requests answered 2xx")
        dumps = sorted(relay.output.glob(f"callgrind.{pid}.*"), key=lambda path: path.stat().st_mtime)
        totals = [line for line in dumps[-1].read_text().splitlines() if line.startswith(("summary:", "totals:"))]
        return int(totals[-1].split()[1]) / args.requests
    finally:
        if relay._process is not None:
            relay._process.send_signal(signal.SIGTERM)
            try:
                relay._process.wait(60)
            except subprocess.TimeoutExpired:
                relay._process.kill()
                relay._process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout of llmrelay, counted as `base`")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated variants (this, this+logs, base, base+logs)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("valgrind", "callgrind_control", "h2load") if shutil.which(tool) is None]
    if missing:
        print(f"needs {', '.join(missing)} (apt-get install -y valgrind nghttp2-client)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="llmrelay-instructions-"))
    variants: dict[str, dict[str, object]] = {"this": {}, "this+logs": {"observed": True}}
    if args.baseline is not None:
        variants["base"] = {"source": args.baseline}
        variants["base+logs"] = {"source": args.baseline, "observed": True}
    if args.only:
        variants = {name: keys for name, keys in variants.items() if name in args.only.split(",")}
    counts: dict[str, list[float]] = {name: [] for name in variants}
    try:
        with MockServer(processes=1) as mock:
            for round_index in range(args.rounds):
                for name, keys in variants.items():
                    output = workdir / f"{name}-{round_index}"
                    output.mkdir(parents=True)
                    relay = CountedRelay(mock, 1, output, output=output, **keys)  # type: ignore[arg-type]
                    counts[name].append(measure(relay, args))
                    print(f"[round {round_index + 1}] {name}: {counts[name][-1]:,.0f} instructions per request", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in counts.items() if values}
    print(f"\nInstructions per JSON request (worker, callgrind; {args.requests} requests at c={args.concurrency}, medians of {args.rounds}):\n")
    print("| variant | instructions / request | ÷ this | ÷ base | ÷ base+logs |")
    print("|---|---:|---:|---:|---:|")
    for name, value in medians.items():
        cells = [f"{value / medians[other]:.3f}" if other in medians else "—" for other in ("this", "base", "base+logs")]
        print(f"| {name} | {value:,.0f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
