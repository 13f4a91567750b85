"""Where an llmrelay worker spends its time under load: py-spy (or cProfile) on the worker.

Starts the fast mock and `llmrelay serve --workers 1`, warms it up, puts it under wrk load (non-
streamed completions, keep-alive, c=64 by default; `--scenario sse` for streams), pins the worker to
a CPU of its own (our other processes to the rest), and samples the worker for `--duration` seconds.

Default: `py-spy record --format raw --function --gil`. The collapsed stacks are aggregated into

- the top functions by *own* time (samples whose innermost frame is the function) with their
  *cumulative* time (samples with the function anywhere on the stack, counted once per sample);
- the top functions by cumulative time, and own time by package (llmrelay, trio, h11, httpcore, ...).

Percentages are of the samples taken; with `--gil` (the default) only samples where the worker held
the GIL count, i.e. ran Python code: without it a worker that is runnable but waiting for a CPU is
sampled where it waits, mostly inside `send()`, which overstates socket calls on a busy machine.

`--cprofile`: the worker runs with bench/cprofile_hook on PYTHONPATH and cProfile is switched on for
the same window; the table then gives, per relayed request, how many times each function ran and its
own and cumulative time (inflated by cProfile's overhead; the call counts are exact).

Writes bench/results/profile.md and profile-stacks.txt (the raw stacks, for flamegraph.pl or
speedscope); with `--cprofile`, profile-cprofile.md and profile-worker.prof (for pstats or snakeviz). py-spy must attach to the worker: it needs
root or CAP_SYS_PTRACE.

Run from the repository root: `python bench/profiling.py [--duration 10] [--connections 64]
[--scenario json|sse] [--delay-ms M] [--top 25] [--cprofile] [--upstreams 3]` (or `python bench/run.py
--profile`).
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.targets import ROOT, MockServer, Relay, TargetError, cpu_seconds, new_workdir, raise_nofile, start_all  # noqa: E402
from bench.wrk import CHAT_BODY, EXTRA_TIMEOUT, STREAM_BODY, WrkResult, WrkScript, have_wrk, parse_summary, run_wrk, wrk_command  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HOOK = Path(__file__).resolve().parent / "cprofile_hook"
FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]+):(?P<line>\d+)\)$")
PATH = "/v1/chat/completions"
STDLIB = sysconfig.get_paths()["stdlib"]
PROF_WAIT = 15.0  # seconds to wait for the worker to write its cProfile stats


@dataclass(frozen=True)
class Function:
    name: str
    file: str
    line: int

    def where(self) -> str:
        return f"{short_path(self.file)}:{self.line}"


def short_path(path: str) -> str:
    """site-packages/x -> x, the repository -> relative, the standard library -> <stdlib>/x."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if path.startswith(str(ROOT) + "/"):
        return path[len(str(ROOT)) + 1 :]
    if path.startswith(STDLIB + "/"):
        return "<stdlib>/" + path[len(STDLIB) + 1 :]
    return path


def package_of(function: Function) -> str:
    path = short_path(function.file)
    if path.startswith("<stdlib>/"):
        return "stdlib " + path[len("<stdlib>/") :].split("/", 1)[0].removesuffix(".py")
    return path.split("/", 1)[0].removesuffix(".py")


# --- py-spy ----------------------------------------------------------------------------------


@dataclass
class Profile:
    samples: int
    own: Counter[Function]
    cumulative: Counter[Function]


def parse_collapsed(text: str) -> Profile:
    """Aggregate py-spy's raw (collapsed) stacks: `frame;frame;... count` per line, outermost first."""
    own: Counter[Function] = Counter()
    cumulative: Counter[Function] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        functions = []
        for frame in stack.split(";"):
            match = FRAME.match(frame)
            if match:
                functions.append(Function(match["name"], match["file"], int(match["line"])))
        if not functions:
            continue
        samples += count
        own[functions[-1]] += count
        for function in set(functions):
            cumulative[function] += count
    return Profile(samples, own, cumulative)


def render_samples(profile: Profile, top: int) -> list[str]:
    total = profile.samples or 1
    lines = [
        f"Top {top} functions by own time ({profile.samples:,} samples):",
        "",
        "| # | own % | cum % | function | file:line |",
        "|---:|---:|---:|---|---|",
    ]
    for rank, (function, count) in enumerate(profile.own.most_common(top), 1):
        lines.append(
            f"| {rank} | {100 * count / total:.1f} | {100 * profile.cumulative[function] / total:.1f} "
            f"| `{function.name}` | {function.where()} |"
        )
    lines += ["", f"Top {top} functions by cumulative time:", "", "| # | cum % | own % | function | file:line |", "|---:|---:|---:|---|---|"]
    for rank, (function, count) in enumerate(profile.cumulative.most_common(top), 1):
        lines.append(
            f"| {rank} | {100 * count / total:.1f} | {100 * profile.own[function] / total:.1f} "
            f"| `{function.name}` | {function.where()} |"
        )
    packages: Counter[str] = Counter()
    for function, count in profile.own.items():
        packages[package_of(function)] += count
    shares = ", ".join(f"{name} {100 * count / total:.1f}%" for name, count in packages.most_common(10))
    return lines + ["", f"Own time by package: {shares}"]


def sample_pyspy(args: argparse.Namespace, py_spy: str, worker: int, output: Path) -> tuple[list[str], str]:
    """py-spy on `worker` for the window; (report lines, one-line description), or raise RuntimeError."""
    command = [py_spy, "record", "--pid", str(worker), "--duration", str(args.duration), "--rate", str(args.rate)]
    command += ["--format", "raw", "--function", "--output", str(output)]
    if args.nonblocking:
        command.append("--nonblocking")
    if not args.all_samples:
        command.append("--gil")
    spy = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 60, check=False)
    if spy.returncode != 0 or not output.exists():
        raise RuntimeError(f"py-spy failed (exit {spy.returncode}): {spy.stderr.strip()[-800:]}")
    profile = parse_collapsed(output.read_text())
    expected = args.rate * args.duration
    what = (
        f"py-spy record --function{' --gil' if not args.all_samples else ''}{' --nonblocking' if args.nonblocking else ''}, "
        f"{args.rate} Hz for {args.duration} s: {profile.samples:,} samples of about {expected:,} "
        f"({100 * profile.samples / expected:.0f}% of the wall time"
        + (", only those holding the GIL: time in system calls is left out)" if not args.all_samples else ")")
    )
    return render_samples(profile, args.top), what


# --- cProfile --------------------------------------------------------------------------------


def sample_cprofile(args: argparse.Namespace, worker: int, mock: MockServer, output_dir: Path) -> tuple[list[str], str]:
    """cProfile in `worker` for the window (SIGRTMIN+1 on, SIGRTMIN+2 off and dump: see
    `cprofile_hook`); per-request figures."""
    before = mock.stats().get("requests", 0)
    os.kill(worker, signal.SIGRTMIN + 1)
    time.sleep(args.duration)
    os.kill(worker, signal.SIGRTMIN + 2)
    requests = max(1, mock.stats().get("requests", 0) - before)
    dump = output_dir / f"worker-{worker}.prof"
    deadline = time.monotonic() + PROF_WAIT
    while time.monotonic() < deadline and not dump.exists():
        time.sleep(0.1)
    time.sleep(0.5)  # let the dump finish
    if not dump.exists():
        raise RuntimeError("the worker wrote no cProfile stats (was bench/cprofile_hook on its PYTHONPATH?)")
    final = output_dir / "profile-worker.prof"
    dump.replace(final)
    stats = pstats.Stats(str(final)).stats  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_primitive, calls, own, cumulative, _callers) in stats.items():
        rows.append((own, cumulative, calls, Function(name, file, line)))
    rows.sort(key=lambda row: row[0], reverse=True)
    lines = [
        f"Top {args.top} functions by own time, per relayed request ({requests:,} requests in the window):",
        "",
        "| # | own µs/req | cum µs/req | calls/req | function | file:line |",
        "|---:|---:|---:|---:|---|---|",
    ]
    for rank, (own, cumulative, calls, function) in enumerate(rows[: args.top], 1):
        where = function.where() if function.line else "(built-in)"
        lines.append(
            f"| {rank} | {own / requests * 1e6:.1f} | {cumulative / requests * 1e6:.1f} | {calls / requests:.1f} "
            f"| `{function.name}` | {where} |"
        )
    busiest = sorted(rows, key=lambda row: row[2], reverse=True)[: args.top]
    lines += ["", f"Most called ({args.top}):", "", "| # | calls/req | own µs/req | function | file:line |", "|---:|---:|---:|---|---|"]
    for rank, (own, _cumulative, calls, function) in enumerate(busiest, 1):
        where = function.where() if function.line else "(built-in)"
        lines.append(f"| {rank} | {calls / requests:.1f} | {own / requests * 1e6:.1f} | `{function.name}` | {where} |")
    total_calls = sum(row[2] for row in rows)
    what = f"cProfile for {args.duration} s: {total_calls / requests:,.0f} function calls per request; times are inflated by cProfile"
    return lines, what


# --- the run ---------------------------------------------------------------------------------


def pin(worker: int, others: list[int]) -> int | None:
    """The worker alone on the last CPU, our other processes (wrk, mock, supervisor) on the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    try:
        os.sched_setaffinity(worker, {cpus[-1]})
        for pid in others:
            os.sched_setaffinity(pid, set(cpus[:-1]))
    except OSError:
        return None
    return cpus[-1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of sampling")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--scenario", choices=("json", "sse"), default="json")
    parser.add_argument("--events", type=int, default=20, help="--scenario sse: events per stream")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="--scenario sse: gap before each event")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--nonblocking", action="store_true", help="py-spy does not pause the worker to sample")
    parser.add_argument(
        "--all-samples",
        action="store_true",
        help="count samples in system calls too (default: py-spy --gil, only samples holding the GIL)",
    )
    parser.add_argument("--cprofile", action="store_true", help="cProfile in the worker instead of py-spy")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the worker to its own CPU")
    parser.add_argument(
        "--upstreams", type=int, default=1, help="the endpoint's upstreams (weights 1, 2, ...; one mock port each)"
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not args.cprofile and not Path(py_spy).exists():
        print("py-spy is not installed: pip install py-spy (or use --cprofile)")
        return 1
    if not have_wrk():
        print("wrk is not installed (apt-get install wrk)")
        return 1
    raise_nofile()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    body, headers = (CHAT_BODY, {}) if args.scenario == "json" else (STREAM_BODY, {"x-mock-events": str(args.events)})
    if args.scenario == "sse" and args.delay_ms:
        headers["x-mock-delay-ms"] = f"{args.delay_ms:g}"
    scenario = "JSON" if args.scenario == "json" else f"SSE {args.events} events" + (f" {args.delay_ms:g} ms apart" if args.delay_ms else "")
    env = None
    if args.cprofile:
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH", "")])),
            "LLMRELAY_BENCH_CPROFILE": str(args.output_dir.resolve()),
        }
    started = time.monotonic()
    result: WrkResult | None = None
    workdir = new_workdir()
    with MockServer(processes=2, ports=args.upstreams) as mock, WrkScript(body, headers) as script:
        relay = Relay(mock, 1, workdir, env=env, upstreams=args.upstreams)
        try:
            start_all([relay])
            url = relay.url(PATH)
            run_wrk(url, script, connections=args.connections, duration=2)  # warm up
            worker = relay.worker_pids()[0]
            load_seconds = args.duration + 3
            load = subprocess.Popen(
                wrk_command(url, script, connections=args.connections, duration=load_seconds),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            pinned = None if args.no_pin else pin(worker, [load.pid, *mock.pids(), *relay.pids()[:1]])
            time.sleep(1.0)
            cpu_before, wall_before = cpu_seconds([worker]), time.monotonic()
            if args.cprofile:
                lines, what = sample_cprofile(args, worker, mock, args.output_dir)
            else:
                lines, what = sample_pyspy(args, py_spy, worker, args.output_dir / "profile-stacks.txt")
            worker_cpus = (cpu_seconds([worker]) - cpu_before) / (time.monotonic() - wall_before)
            stdout, _ = load.communicate(timeout=load_seconds + EXTRA_TIMEOUT)
            result = parse_summary(stdout)
        except (TargetError, RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"profile failed: {exc} (relay config and log in {workdir})")
            return 1
        finally:
            relay.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    load_line = (
        f"wrk -t1 -c{args.connections} {scenario}: {result.rps:,.0f} req/s over the whole load "
        f"(p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, errors {result.errors})"
        if result
        else f"wrk -t1 -c{args.connections} {scenario}: no summary"
    )
    header = [
        "# llmrelay worker profile",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, the worker of `llmrelay serve --workers 1` under {load_line}"
        + (f", through {args.upstreams} upstreams (weights 1-{args.upstreams})." if args.upstreams > 1 else "."),
        f"{what}. The worker used {worker_cpus:.2f} CPUs (/proc) during the window"
        + (f"; it was pinned to CPU {pinned}, the load generator and mock to the others." if pinned is not None else "."),
        "",
    ]
    text = "\n".join(header + lines)
    print(text)
    report = args.output_dir / ("profile-cprofile.md" if args.cprofile else "profile.md")
    report.write_text(text + "\n")
    print(f"\n(wrote {report}; {time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
