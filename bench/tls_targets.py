"""Targets of the HTTP/2 and TLS scenarios: one proxy process, several listeners, one row each.

llmrelay runs with two listeners, a plain one (HTTP/1.1, and h2c by prior knowledge) and a TLS one
(ALPN h2 and http/1.1); nginx with three, plain HTTP/1.1, `http2` (h2c; nginx 1.22 cannot serve
both on one port) and `ssl http2`. Both use the same certificate, made with trustme in the case's
directory (the load generators do not verify it). Each row of the table is a `Face`: one listener of
such a process spoken to in one protocol; its CPU and memory are the whole process's, measured while
only that face has load (the faces run one after the other, like any targets).

Both proxies keep a connection for the whole run (`keepalive_requests` and
`max_requests_per_connection` raised to 1,000,000): h2load does not reconnect after a GOAWAY in a
timed run, and a TLS run then pays one handshake per connection and run, as a long-lived client does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.targets import RELAY_ROUTE, Direct, MockServer, Nginx, Relay, Target, TargetError, free_port

KEEPALIVE_REQUESTS = 1_000_000
HTTP1 = "HTTP/1.1"  # face labels: the row's target is "<process> <label>", e.g. "llmrelay 1w h2c"
H2C = "h2c"
H2_TLS = "h2 TLS"
PLAIN = "plain"
TLS = "TLS"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost from a throw-away CA: (chain file, key file)."""
    try:
        import trustme
    except ImportError as exc:  # a test dependency: pip install -e '.[test]'
        raise TargetError("trustme is not installed (pip install -e '.[test]'): no certificate for TLS") from exc
    issued = trustme.CA().issue_cert("127.0.0.1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server-chain.pem", directory / "server-key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def nginx_lacks() -> list[str]:
    """The modules this nginx needs for h2c and TLS that it was built without (`nginx -V`)."""
    try:
        done = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ["nginx"]
    built = done.stdout + done.stderr
    return [module for module in ("http_v2_module", "http_ssl_module") if f"--with-{module}" not in built]


class ListenersRelay(Relay):
    """llmrelay with a plain listener (`port`: HTTP/1.1 and h2c) and a TLS one (`tls_port`)."""

    def __init__(self, mock: MockServer, workers: int, workdir: Path, cert: Path, key: Path) -> None:
        super().__init__(mock, workers, workdir)
        self.workdir = workdir / f"llmrelay-{workers}w-listeners"
        self.cert, self.key = cert, key
        self.tls_port = 0

    def server_text(self) -> str:
        # `--port` moves the first listener: the plain one gets `port` from the command line.
        return (
            super().server_text()
            + f"max_requests_per_connection = {KEEPALIVE_REQUESTS}\n"
            + f'[[server.listen]]\nhost = "127.0.0.1"\nport = {self.port}\n'
            + f'[[server.listen]]\nhost = "127.0.0.1"\nport = {self.tls_port}\n'
            + f'tls = {{ cert_file = "{self.cert}", key_file = "{self.key}" }}\n'
        )

    def launch(self) -> None:
        self.tls_port = free_port()
        super().launch()


class ListenersNginx(Nginx):
    """nginx with plain HTTP/1.1 (`port`), h2c (`h2c_port`) and `ssl http2` (`tls_port`) listeners."""

    def __init__(self, mock: MockServer, workers: int, workdir: Path, cert: Path, key: Path) -> None:
        super().__init__(mock, workers, workdir)
        self.prefix = workdir / f"nginx-{workers}w-listeners"
        self.cert, self.key = cert, key
        self.h2c_port = self.tls_port = 0

    @staticmethod
    def available() -> bool:
        return shutil.which("nginx") is not None and not nginx_lacks()

    def listen_lines(self) -> list[str]:
        return super().listen_lines() + [
            f"listen 127.0.0.1:{self.h2c_port} http2 backlog=4096",
            f"listen 127.0.0.1:{self.tls_port} ssl http2 backlog=4096",
        ]

    def http_text(self) -> str:
        return (
            f"    keepalive_requests {KEEPALIVE_REQUESTS};\n"
            f"    ssl_certificate {self.cert};\n"
            f"    ssl_certificate_key {self.key};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        )

    def launch(self) -> None:
        self.h2c_port, self.tls_port = free_port(), free_port()
        super().launch()


class Face(Target):
    """One listener of `process`, spoken to in `protocol` over `scheme`: one row of the table."""

    def __init__(self, process: Target, label: str, scheme: str, port_attribute: str, protocol: str) -> None:
        super().__init__(process.mock, process.workers)
        self.process = process
        self.label = label
        self.scheme = scheme
        self.port_attribute = port_attribute
        self.protocol = protocol

    @property
    def name(self) -> str:
        return f"{self.process.name} {self.label}"

    @property
    def owner(self) -> Target:
        return self.process

    def url(self, path: str) -> str:
        port = getattr(self.process, self.port_attribute)
        return f"{self.scheme}://127.0.0.1:{port}{RELAY_ROUTE}{path}"

    def pids(self) -> list[int]:
        return self.process.pids()


def protocol_targets(scenario: str, mock: MockServer, workers: int, nginx: bool, workdir: Path) -> list[Target]:
    """The rows of scenario "h2" (HTTP/1.1, h2c and h2 over TLS of each proxy) or "tls" (HTTP/1.1
    over plain and TLS listeners), with `direct` first."""
    cert, key = make_certificate(workdir / "tls")
    relay = ListenersRelay(mock, workers, workdir, cert, key)
    proxy = ListenersNginx(mock, workers, workdir, cert, key) if nginx else None
    if scenario == "h2":
        targets: list[Target] = [
            Direct(mock),
            Face(relay, HTTP1, "http", "port", "h1"),
            Face(relay, H2C, "http", "port", "h2"),
            Face(relay, H2_TLS, "https", "tls_port", "h2"),
        ]
        if proxy is not None:
            targets += [
                Face(proxy, HTTP1, "http", "port", "h1"),
                Face(proxy, H2C, "http", "h2c_port", "h2"),
                Face(proxy, H2_TLS, "https", "tls_port", "h2"),
            ]
        return targets
    targets = [Direct(mock), Face(relay, PLAIN, "http", "port", "h1"), Face(relay, TLS, "https", "tls_port", "h1")]
    if proxy is not None:
        targets += [Face(proxy, PLAIN, "http", "port", "h1"), Face(proxy, TLS, "https", "tls_port", "h1")]
    return targets
