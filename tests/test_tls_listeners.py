"""TLS listeners next to plain ones: ALPN, mTLS, the TLS floor, plain HTTP on a TLS port, handshake
timeouts, certificates renewed on SIGHUP (a broken file keeps the old one), and check-config's
verdict on the files. Real `llmrelay serve` processes, real TLS clients (httpx, curl, ssl sockets),
certificates from trustme."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trustme

from relaytest import access_records, free_port, toml_value, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Certs:
    """A CA, a server certificate for 127.0.0.1 / localhost, and a client certificate, as files."""

    def __init__(self, directory: Path, name: str = "server") -> None:
        self.ca = trustme.CA()
        self.dir = directory
        self.ca_file = directory / f"{name}-ca.pem"
        self.cert_file = directory / f"{name}-cert.pem"
        self.key_file = directory / f"{name}-key.pem"
        self.client_file = directory / f"{name}-client.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.issue()
        client = self.ca.issue_cert("client@example.com")
        client.private_key_and_cert_chain_pem.write_to_path(str(self.client_file))

    def issue(self) -> None:
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        server.private_key_pem.write_to_path(str(self.key_file))

    def client_context(self, with_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if with_cert:
            context.load_cert_chain(str(self.client_file))
        return context


def listeners_config(mock_url: str, plain: int, tls_port: int, tls: dict[str, object]) -> str:
    return (
        "[[server.listen]]\n"
        f'host = "127.0.0.1"\nport = {plain}\n\n'
        "[[server.listen]]\n"
        f'host = "127.0.0.1"\nport = {tls_port}\n'
        f"tls = {toml_value(tls)}\n\n"
        "[endpoints.openai]\n"
        f'target_base = "{mock_url}/v1"\nprovider = "openai"\n'
    )


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


def start_tls_relay(start_relay, mock, certs: Certs, **tls: object):  # type: ignore[no-untyped-def]
    plain, tls_port = free_port(), free_port()
    settings = {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file), **tls}
    relay = start_relay(listeners_config(mock.base_url, plain, tls_port, settings), port=plain, port_flag=False)
    return relay, tls_port


def served_certificate(port: int, ca_file: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der


def test_plain_and_tls_listeners_serve_side_by_side(start_relay, mock, certs: Certs) -> None:
    relay, tls_port = start_tls_relay(start_relay, mock, certs)
    plain = httpx.post(relay.url("/openai/v1/chat/completions"), json=CHAT, timeout=10)
    assert plain.status_code == 200
    with httpx.Client(verify=certs.client_context(), timeout=10) as client:
        secure = client.post(f"https://127.0.0.1:{tls_port}/openai/v1/chat/completions", json=CHAT)
        assert secure.status_code == 200
        assert secure.http_version == "HTTP/1.1"
        assert secure.json() == plain.json()
        streamed = client.post(
            f"https://127.0.0.1:{tls_port}/openai/v1/chat/completions", json={**CHAT, "stream": True}
        )
        assert streamed.status_code == 200
        assert streamed.text.rstrip().endswith("data: [DONE]")
    assert "listening on 127.0.0.1:%d, 127.0.0.1:%d" % (relay.port, tls_port) in relay.logs()
    # The upstream is told the client came over https.
    assert mock.last().headers.get("x-forwarded-proto") == "https"


def test_curl_over_tls_with_alpn_http1(start_relay, mock, certs: Certs) -> None:
    relay, tls_port = start_tls_relay(start_relay, mock, certs)
    result = subprocess.run(
        [
            "curl", "-sS", "--http1.1", "--cacert", str(certs.ca_file), "-o", "-", "-w", "\n%{http_version} %{http_code}",
            "-H", "content-type: application/json", "-d", '{"model":"m","messages":[]}',
            f"https://127.0.0.1:{tls_port}/openai/v1/chat/completions",
        ],
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("1.1 200")


def test_mtls_requires_a_certificate_signed_by_the_client_ca(start_relay, mock, certs: Certs, tmp_path: Path) -> None:
    relay, tls_port = start_tls_relay(start_relay, mock, certs, client_ca_file=str(certs.ca_file))
    url = f"https://127.0.0.1:{tls_port}/openai/v1/chat/completions"
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(url, json=CHAT, verify=certs.client_context(with_cert=False), timeout=10)
    stranger = Certs(tmp_path, "stranger")  # a certificate from another CA is refused too
    context = certs.client_context()
    context.load_cert_chain(str(stranger.client_file))
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(url, json=CHAT, verify=context, timeout=10)
    answer = httpx.post(url, json=CHAT, verify=certs.client_context(with_cert=True), timeout=10)
    assert answer.status_code == 200
    assert wait_until(lambda: "TLS handshake with 127.0.0.1 failed" in relay.logs(), 5)


def test_tls_floor_refuses_older_clients(start_relay, mock, certs: Certs) -> None:
    relay, tls_port = start_tls_relay(start_relay, mock, certs, min_version="1.3")
    old = certs.client_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(f"https://127.0.0.1:{tls_port}/openai/v1/chat/completions", json=CHAT, verify=old, timeout=10)
    current = httpx.post(
        f"https://127.0.0.1:{tls_port}/openai/v1/chat/completions", json=CHAT, verify=certs.client_context(), timeout=10
    )
    assert current.status_code == 200


def test_plain_http_on_the_tls_port_gets_a_400_and_a_close(start_relay, mock, certs: Certs) -> None:
    relay, tls_port = start_tls_relay(start_relay, mock, certs)
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        started = time.monotonic()
        while chunk := sock.recv(4096):
            received += chunk
        assert time.monotonic() - started < 4
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"https://" in received
    assert wait_until(lambda: "plain HTTP on TLS listener" in relay.logs(), 5)


def test_a_silent_client_is_closed_at_the_handshake_timeout(start_relay, mock, certs: Certs) -> None:
    relay, tls_port = start_tls_relay(start_relay, mock, certs, handshake_timeout=1)
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert 0.8 < time.monotonic() - started < 5
    assert wait_until(lambda: "TLS handshake not done within 1 s" in relay.logs(), 5)
    # The worker still serves.
    assert httpx.get(relay.url("/health"), timeout=5).status_code == 200


def test_certificates_are_read_again_on_sighup_and_a_broken_one_keeps_the_old(start_relay, mock, certs: Certs) -> None:
    relay, tls_port = start_tls_relay(start_relay, mock, certs)
    first = served_certificate(tls_port, certs.ca_file)
    certs.issue()  # a renewed certificate (same CA), as certbot would leave it
    relay.send_signal(signal.SIGHUP)
    assert wait_until(lambda: relay.logs().count("reload ok") >= 1, 15)
    assert wait_until(lambda: served_certificate(tls_port, certs.ca_file) != first, 10)
    renewed = served_certificate(tls_port, certs.ca_file)
    certs.key_file.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    relay.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload rejected" in relay.logs(), 15)
    assert "server.listen[1].tls:" in relay.logs()
    assert served_certificate(tls_port, certs.ca_file) == renewed
    assert httpx.post(
        f"https://127.0.0.1:{tls_port}/openai/v1/chat/completions", json=CHAT, verify=certs.client_context(), timeout=10
    ).status_code == 200


def test_the_access_log_marks_requests_over_tls(start_relay, mock, certs: Certs) -> None:
    relay, tls_port = start_tls_relay(start_relay, mock, certs)
    httpx.post(
        f"https://127.0.0.1:{tls_port}/openai/v1/chat/completions",
        json=CHAT,
        verify=certs.client_context(),
        headers={"x-request-id": "over-tls"},
        timeout=10,
    )
    assert wait_until(lambda: any(r.get("rid") == "over-tls" for r in access_records(relay)), 5)


def run_check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmrelay", "check-config", str(path)], capture_output=True, text=True, timeout=30
    )


def test_check_config_loads_the_tls_files(tmp_path: Path, certs: Certs) -> None:
    other = Certs(tmp_path, "other")
    cases = {
        "missing": ({"cert_file": str(tmp_path / "nope.pem"), "key_file": str(certs.key_file)}, "nope.pem cannot be read"),
        "mismatch": (
            {"cert_file": str(certs.cert_file), "key_file": str(other.key_file)},
            f"{other.key_file} is not the key of the certificate in {certs.cert_file}",
        ),
        "client ca": (
            {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file), "client_ca_file": str(tmp_path / "x.pem")},
            "x.pem cannot be read",
        ),
    }
    for name, (tls, expected) in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.toml"
        path.write_text(listeners_config("http://127.0.0.1:9", 8000, 8443, tls))
        result = run_check_config(path)
        assert result.returncode != 0, name
        assert "server.listen[1].tls: " in result.stderr, (name, result.stderr)
        assert expected in result.stderr, (name, result.stderr)
    good = tmp_path / "good.toml"
    good.write_text(listeners_config("http://127.0.0.1:9", 8000, 8443, {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file)}))
    result = run_check_config(good)
    assert result.returncode == 0, result.stderr
    assert "listener: http://127.0.0.1:8000" in result.stdout
    assert "listener: https://127.0.0.1:8443  tls>=1.2" in result.stdout


def test_listen_and_the_flat_shorthand_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "both.toml"
    path.write_text(
        "[server]\nport = 8000\n\n[[server.listen]]\nport = 8001\n\n"
        '[endpoints.openai]\ntarget_base = "http://127.0.0.1:9/v1"\n'
    )
    result = run_check_config(path)
    assert result.returncode != 0
    assert "server.listen: cannot be combined with server.host / server.port" in result.stderr


def test_a_reload_that_adds_a_tls_listener_rolls_the_workers_onto_it(start_relay, mock, certs: Certs) -> None:
    plain = free_port()
    config = f'[server]\nport = {plain}\n\n[endpoints.openai]\ntarget_base = "{mock.base_url}/v1"\nprovider = "openai"\n'
    relay = start_relay(config, workers=2, port=plain, port_flag=False)
    tls_port = free_port()
    settings = {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file)}
    assert relay.config_path is not None
    relay.config_path.write_text(listeners_config(mock.base_url, plain, tls_port, settings))
    relay.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "rolling every worker onto them" in relay.logs(), 15), relay.logs()
    url = f"https://127.0.0.1:{tls_port}/openai/v1/chat/completions"

    def tls_serves() -> bool:
        try:
            return httpx.post(url, json=CHAT, verify=certs.client_context(), timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(tls_serves, 20)
    assert httpx.post(relay.url("/openai/v1/chat/completions"), json=CHAT, timeout=10).status_code == 200
    # A rolling replacement keeps both listeners served, one slot at a time.
    relay.send_signal(signal.SIGUSR2)
    for _ in range(20):
        assert tls_serves()
        assert httpx.post(relay.url("/openai/v1/chat/completions"), json=CHAT, timeout=10).status_code == 200
