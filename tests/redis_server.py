"""A real `redis-server` for the tests that need one: a free 127.0.0.1 port, a temporary directory,
nothing saved (`--save '' --appendonly no`), always stopped; it can be killed and started again on
the same port in the middle of a test (a Redis outage as the store sees it)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """`RedisServer(*extra_args, password=None, tls=None)`; `start()`, `stop()` (SIGTERM), `kill()`
    (SIGKILL), `restart()`; `url` is what a store connects to (with the password when there is one).
    `tls=(cert_file, key_file, ca_file)` serves TLS only (rediss://)."""

    def __init__(self, *extra_args: str, password: str | None = None, tls: tuple[str, str, str] | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.extra_args = list(extra_args)
        self.directory = Path(tempfile.mkdtemp(prefix="llmrelay-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.directory / "redis.log"

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{credentials}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        if self.tls:
            cert, key, ca = self.tls
            command[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            command += ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        self.process = subprocess.Popen(command + self.extra_args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            if self._answers():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT} s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as plain:
                sock = plain
                if self.tls:
                    sock = ssl.create_default_context(cafile=self.tls[2]).wrap_socket(plain, server_hostname="127.0.0.1")
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        # "+PONG", or "-NOAUTH" when a password is required: either way the server is up.
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def command(self, *args: str) -> bytes:
        """One command with redis-cli (for the tests' own checks and sabotage)."""
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        if self.tls:
            auth += ["--tls", "--cacert", self.tls[2]]
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *auth, *args], capture_output=True, timeout=START_TIMEOUT, check=True
        )
        return result.stdout.strip()

    def stop(self) -> None:
        self._end(kill=False)

    def kill(self) -> None:
        self._end(kill=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, kill: bool) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=START_TIMEOUT)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
