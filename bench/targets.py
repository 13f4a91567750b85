"""The processes a benchmark talks to: the fast mock, llmrelay, nginx, and what /proc says about them.

Each target is started from a temporary directory of its own, answers `url(path)` for the mock's
path `path` (`/v1/chat/completions`), and names the processes whose CPU time and memory count as the
proxy's: llmrelay's supervisor and workers, nginx's master and workers (none for `direct`).
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
FAST_MOCK = Path(__file__).resolve().parent / "fast_mock.py"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
NOFILE_WANTED = 65_536
RELAY_ROUTE = "/oai"  # llmrelay's endpoint name and nginx's location: /oai/v1/... -> mock /v1/...
UPSTREAM_NAMES = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class TargetError(RuntimeError):
    """A target did not start, or died."""


# --- /proc ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(") ", 1)[1].split()


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc/*/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` (processes that are gone count 0)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A `VmHWM`/`VmRSS`-style field of /proc/PID/status in KiB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def raise_nofile(wanted: int = NOFILE_WANTED) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard when allowed) to `wanted` for us and our children."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_process(process: subprocess.Popen[bytes], extra_pids: list[int], sig: int = signal.SIGTERM) -> None:
    """Signal `process`, wait for it, then SIGKILL it and `extra_pids` (its children) if still there."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    for pid in extra_pids:
        if _stat_fields(pid) is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- the mock ---------------------------------------------------------------------------------


class MockServer:
    """bench/fast_mock.py in a subprocess (a context manager).

    With `ports` > 1 the same processes listen on that many ports (`ports`), the first one `port`:
    the upstreams of a several-upstream endpoint, each its own address, all served alike.
    """

    def __init__(self, processes: int = 2, ports: int = 1) -> None:
        self.processes = processes
        self.port_count = max(1, ports)
        self.port = 0
        self.ports: list[int] = []
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> MockServer:
        self._process = subprocess.Popen(
            [sys.executable, str(FAST_MOCK), "--port", "0", "--processes", str(self.processes)]
            + ["--ports", str(self.port_count)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        line = b""
        deadline = time.monotonic() + START_TIMEOUT
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            readable, _, _ = select.select([fd], [], [], 0.2)
            if readable:
                data = os.read(fd, 256)
                if not data:
                    break
                line += data
        if not line.startswith(b"ready "):
            self.stop()
            raise TargetError(f"fast_mock did not start (said {line!r})")
        self.ports = [int(part) for part in line.split()[1:]]
        if len(self.ports) != self.port_count:
            self.stop()
            raise TargetError(f"fast_mock listens on {len(self.ports)} ports, not {self.port_count} (said {line!r})")
        self.port = self.ports[0]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def pids(self) -> list[int]:
        if self._process is None:
            return []
        return [self._process.pid, *children_of(self._process.pid)]

    def stats(self) -> dict[str, int]:
        """The mock's counters: `active_streams`, `streams`, `requests` (empty when it does not answer)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/_mock/stats")
            data: dict[str, int] = json.loads(connection.getresponse().read())
            return data
        except (OSError, http.client.HTTPException, ValueError):
            return {}
        finally:
            connection.close()

    def stop(self) -> None:
        if self._process is not None:
            _stop_process(self._process, children_of(self._process.pid))
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# --- targets ----------------------------------------------------------------------------------


class Target(ABC):
    """Something between the load generator and the mock (or nothing, for `direct`)."""

    kind: str = ""
    protocol: str = "h1"  # how a load generator speaks to it: "h1" (HTTP/1.1) or "h2"

    def __init__(self, mock: MockServer, workers: int = 0) -> None:
        self.mock = mock
        self.workers = workers
        self.port = 0

    @property
    def name(self) -> str:
        return f"{self.kind} {self.workers}w" if self.workers else self.kind

    @property
    def owner(self) -> Target:
        """The target whose processes serve this one: itself, but for one listener of a shared process
        (bench/tls_targets.py), which is started, stopped and asked for its problems through its owner."""
        return self

    @abstractmethod
    def url(self, path: str) -> str: ...

    def launch(self) -> None:
        """Start the processes; `wait_ready` waits for them."""

    def wait_ready(self) -> None:
        """Return once the target serves, or raise TargetError."""

    def stop(self) -> None:
        """Stop the processes (idempotent)."""

    def pids(self) -> list[int]:
        """The processes whose CPU and memory are the proxy's."""
        return []

    def problems(self) -> list[str]:
        """Warning and error lines the target logged since it started."""
        return []


class Direct(Target):
    kind = "direct"

    def url(self, path: str) -> str:
        return self.mock.url(path)


class Relay(Target):
    """`python -m llmrelay serve` with `workers` workers and one endpoint `oai` -> the mock.

    With `upstreams` = N > 1 the endpoint has N upstreams `one`, `two`, ... of weights 1, 2, ... N,
    each on its own port of the mock (`MockServer(ports=N)`). Only the current tree understands
    `[[endpoints.X.upstreams]]`: a `source` checkout gets the one-upstream form.
    """

    kind = "llmrelay"

    def __init__(
        self,
        mock: MockServer,
        workers: int,
        workdir: Path,
        env: dict[str, str] | None = None,
        source: Path | None = None,
        upstreams: int = 1,
        observed: bool = False,
        limited: bool = False,
    ) -> None:
        super().__init__(mock, workers)
        # This tree: its JSON access log to a file (metrics are on by default); a baseline checkout
        # (which may predate log formats and files): its text access log, through stderr to relay.log.
        self.observed = observed
        if self.observed:
            self.kind = "llmrelay+logs"
        self.limited = limited and source is None  # one `per = "relay_key"` rule that never refuses
        if self.limited:
            self.kind = "llmrelay+limits"
        if upstreams > 1 and len(mock.ports) < upstreams:
            raise ValueError(f"{upstreams} upstreams need a mock on {upstreams} ports (it has {len(mock.ports)})")
        if not 1 <= upstreams <= len(UPSTREAM_NAMES):
            raise ValueError(f"1 to {len(UPSTREAM_NAMES)} upstreams, not {upstreams}")
        self.upstreams = upstreams
        self.env = dict(env or {})  # extra environment variables for the supervisor (and so its workers)
        self.source_tree = source
        # The tree measured: this checkout (the one bench/ lives in, whatever an editable install
        # points at), or `source`, another checkout of llmrelay.
        self.env.setdefault("PYTHONPATH", str(ROOT))
        if source is not None:
            # Another checkout of llmrelay (an earlier commit, say), measured in the same run: its
            # packages come first on the import path of the supervisor and of every worker it starts.
            self.kind = "llmrelay@base+logs" if observed else "llmrelay@base"
            self.env["PYTHONPATH"] = str(source.resolve())
        self.workdir = workdir / (f"{self.kind}-{workers}w" + (f"-{upstreams}up" if upstreams > 1 else ""))
        self._process: subprocess.Popen[bytes] | None = None
        self._children: list[int] = []

    @property
    def name(self) -> str:
        base = super().name
        return f"{base} ×{self.upstreams} upstreams" if self.upstreams > 1 else base

    def config_text(self) -> str:
        return self.server_text() + self.admin_text() + self.endpoint_text() + self.limits_text()

    def limits_text(self) -> str:
        # The rule every request falls under, counted in requests and tokens (so each request is
        # estimated, admitted from a lease and corrected by its usage), with limits it never reaches.
        if not self.limited:
            return ""
        return (
            '\n[[limits.rules]]\nname = "per-key"\nper = "relay_key"\n'
            "requests_per_minute = 1000000000\ntokens_per_minute = 1000000000000\n"
        )

    def admin_text(self) -> str:
        # A free admin port, so that several relays of one run never compete for 9811 (a baseline
        # checkout may predate the admin listener: it gets none of this).
        return "[server.admin]\nport = 0\n" if self.source_tree is None else ""

    def server_text(self) -> str:
        # Connection limits are raised above every scenario's concurrency (10,000 streams through one
        # worker in scenario 4) so that the relay's code is measured, not its default limits.
        text = "[server]\naccess_log = false\nlog_level = \"warning\"\nmax_connections = 30000\n"
        if self.observed:
            text = text.replace("access_log = false", "access_log = true")
            if self.source_tree is None:
                text += f'log_format = "json"\naccess_log_file = "{self.workdir / "access.log"}"\n'
            else:  # (a tree whose access lines follow log_level: they are info lines there)
                text = text.replace('log_level = "warning"', 'log_level = "info"')
        return text

    def endpoint_text(self) -> str:
        endpoint = RELAY_ROUTE.strip("/")
        text = (
            f"[endpoints.{endpoint}]\n"
            'provider = "openai"\n'
            "max_connections = 30000\n"
        )
        if self.upstreams == 1:
            return text + f'target_base = "http://127.0.0.1:{self.mock.port}/v1"\n'
        # Several upstreams inherit the endpoint's provider and limits; weights 1, 2, 3, ...
        for index in range(self.upstreams):
            text += (
                f"[[endpoints.{endpoint}.upstreams]]\n"
                f'name = "{UPSTREAM_NAMES[index]}"\n'
                f'target_base = "http://127.0.0.1:{self.mock.ports[index]}/v1"\n'
                f"weight = {index + 1}\n"
            )
        return text

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{RELAY_ROUTE}{path}"

    def command(self, config: Path) -> list[str]:
        return [sys.executable, "-m", "llmrelay", "serve", "--config", str(config), "--port", str(self.port)] + [
            "--workers", str(self.workers), "--pid-file", str(self.workdir / "relay.pid"),
        ]  # fmt: skip

    def launch(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.workdir / "bench.toml"
        config.write_text(self.config_text())
        log = open(self.workdir / "relay.log", "wb")  # noqa: SIM115 - the child keeps writing to it
        try:
            self._process = subprocess.Popen(
                self.command(config),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env={**os.environ, **self.env},
            )
        finally:
            log.close()

    def wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TargetError(f"{self.name} exited with {self._process.returncode}: {self.log_tail()}")
            serving = self._serving_workers()
            if serving == self.workers:
                self._children = children_of(self._process.pid)
                return
            time.sleep(0.1)
        raise TargetError(f"{self.name} did not get {self.workers} workers serving in {START_TIMEOUT} s")

    def _serving_workers(self) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            if response.status != 200:
                return 0
            health = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError):
            return 0
        finally:
            connection.close()
        return sum(1 for worker in health.get("workers", []) if worker.get("state") == "serving")

    def pids(self) -> list[int]:
        if self._process is None:
            return []
        return [self._process.pid, *children_of(self._process.pid)]

    def worker_pids(self) -> list[int]:
        return children_of(self._process.pid) if self._process is not None else []

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.workdir / "relay.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def problems(self) -> list[str]:
        try:
            text = (self.workdir / "relay.log").read_text(errors="replace")
        except OSError:
            return []
        # (at log_level "warning" every line is a problem; a baseline measured with its access log
        # runs at "info", and then only its warning and error lines are)
        lines = [line for line in text.splitlines() if line.strip()]
        if self.source_tree is not None and self.observed:
            lines = [line for line in lines if any(f" {level} [" in line for level in ("WARNING", "ERROR", "CRITICAL"))]
        return lines

    def stop(self) -> None:
        if self._process is not None:
            children = sorted(set(self._children) | set(children_of(self._process.pid)))
            _stop_process(self._process, children)
            self._process = None


class Nginx(Target):
    """nginx with `workers` worker processes proxying /oai/ to the mock over keep-alive HTTP/1.1."""

    kind = "nginx"

    def __init__(self, mock: MockServer, workers: int, workdir: Path) -> None:
        super().__init__(mock, workers)
        self.prefix = workdir / f"nginx-{workers}w"
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("nginx") is not None

    def config_text(self) -> str:
        user = "user root;\n" if os.geteuid() == 0 else ""
        prefix = self.prefix
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        listen = "\n".join(f"        {line};" for line in self.listen_lines())
        return f"""{user}worker_processes {self.workers};
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections {max(1024, nofile - 64)};
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{self.http_text()}    upstream mock {{
        server 127.0.0.1:{self.mock.port};
        keepalive 64;
    }}
    server {{
{listen}
        location {RELAY_ROUTE}/ {{
            proxy_pass http://mock/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""

    def listen_lines(self) -> list[str]:
        return [f"listen 127.0.0.1:{self.port} backlog=4096"]

    def http_text(self) -> str:
        """More directives of the `http` block (none here)."""
        return ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{RELAY_ROUTE}{path}"

    def launch(self) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.prefix / "nginx.conf"
        config.write_text(self.config_text())
        self._process = subprocess.Popen(
            ["nginx", "-c", str(config), "-p", str(self.prefix), "-e", str(self.prefix / "error.log"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TargetError(f"{self.name} exited with {self._process.returncode}: {self.problems()[-5:]}")
            if len(children_of(self._process.pid)) >= self.workers and _port_open(self.port):
                return
            time.sleep(0.05)
        raise TargetError(f"{self.name} did not start in {START_TIMEOUT} s")

    def pids(self) -> list[int]:
        if self._process is None:
            return []
        return [self._process.pid, *children_of(self._process.pid)]

    def problems(self) -> list[str]:
        try:
            text = (self.prefix / "error.log").read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if any(f"[{level}]" in line for level in ("warn", "error", "crit", "alert", "emerg"))]

    def stop(self) -> None:
        if self._process is not None:
            _stop_process(self._process, children_of(self._process.pid))
            self._process = None


def start_all(targets: list[Target]) -> None:
    """Launch every target, then wait for each (they start in parallel)."""
    for target in targets:
        target.launch()
    for target in targets:
        target.wait_ready()


def stop_all(targets: list[Target]) -> None:
    for target in targets:
        target.stop()


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="llmrelay-bench-"))

