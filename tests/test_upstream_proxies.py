"""Upstream proxies: the relay reaches its target through a real HTTP or SOCKS5 proxy (pproxy).

Every test runs real processes on 127.0.0.1: an `llmrelay serve` supervisor and its worker, a pproxy
server started as a subprocess, and the mock provider.  That a request really went through the
proxy is proved twice:

* pproxy's verbose log has a line `<proto> 127.0.0.1:<relay port> -> <host>:<mock port>`;
* the TCP connection on which the mock received the request (its recorded peer port) is a socket
  held open by the pproxy process, not by the relay's worker (looked up in /proc).

A proxy that is down, refuses the relay's credentials or cannot reach the target gives the client a
502 in the provider's error shape, never a silent direct connection, and no proxy password, provider
key or relay key ever shows in a log or an error body.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import anthropic
import httpx
import openai
import pytest
import trustme

from relaytest import endpoint_config, free_port, toml_value
from mock_providers import MockProvider

pytestmark = pytest.mark.timeout(60)

if not Path("/proc/net/tcp").exists():  # pragma: no cover - the socket-owner proof reads /proc
    pytest.skip("needs Linux /proc", allow_module_level=True)

TIMEOUT = 10.0  # seconds, on every client call
PROXY_USER = "alice"
PROXY_PASSWORD = "secret"
ODD_USER = "bob"
ODD_PASSWORD = "p@ss:w/rd#1"  # needs percent-encoding in a URL
WRONG_PASSWORD = "not-the-right-pw"
PROVIDER_KEY = "sk-provider-4f0c2e1bd7a94c31"
RELAY_KEY = "rk-relay-9b3d5a7e2c8f4160"
MESSAGES = [{"role": "user", "content": "say hi"}]
CHAT = {"model": "gpt-mock", "messages": MESSAGES}


# -- pproxy -----------------------------------------------------------------------------------


@dataclass
class Proxy:
    scheme: str  # "http" or "socks5"
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: BinaryIO = field(repr=False)

    def url(self, user: str | None = None, password: str | None = None, scheme: str | None = None) -> str:
        auth = ""
        if user is not None:
            auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "") + "@"
        return f"{scheme or self.scheme}://{auth}127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines_to(self, host: str, port: int) -> list[str]:
        """Verbose lines of connections the proxy opened to host:port."""
        return [line for line in self.log().splitlines() if line.rstrip().endswith(f" -> {host}:{port}")]

    def wait_for_line_to(self, host: str, port: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines_to(host, port)
            if lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator:
    """start_proxy(scheme="http", users=None) -> Proxy; users: list of "user:password" lines."""
    started: list[Proxy] = []

    def start(scheme: str = "http", users: list[str] | None = None, tls: tuple[Path, Path] | None = None) -> Proxy:
        port = free_port()
        listen = f"{scheme}{'+ssl' if tls else ''}://127.0.0.1:{port}"
        if users:
            users_file = tmp_path / f"pproxy-users-{port}"
            users_file.write_text("\n".join(users) + "\n")
            listen += "##" + str(users_file)  # "#<file>" as the fragment: one user:password per line
        log_path = tmp_path / f"pproxy-{scheme}-{port}.log"
        log_file = open(log_path, "wb")
        command = [sys.executable, "-m", "pproxy", "-l", listen, "-v"]
        if users:
            command += ["--auth", "0"]  # no per-IP memory of a past login: every connection authenticates
        if tls:
            command += ["--ssl", f"{tls[0]},{tls[1]}"]
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        proxy = Proxy(scheme, port, process, log_path, log_file)
        started.append(proxy)
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"pproxy exited with {process.returncode}:\n{proxy.log()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pproxy not listening after 15 s:\n{proxy.log()}") from None
                time.sleep(0.05)
        return proxy

    yield start
    for proxy in started:
        if proxy.process.poll() is None:
            proxy.process.send_signal(signal.SIGTERM)
            try:
                proxy.process.wait(5)
            except subprocess.TimeoutExpired:
                proxy.process.kill()
                proxy.process.wait(5)
        proxy.log_file.close()


# -- proof that a connection belongs to a process ----------------------------------------------


def _tcp_inodes(local_port: int, remote_port: int) -> set[str]:
    """Inodes of loopback TCP sockets whose local port and remote port are the given ones."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                if inode != "0":
                    inodes.add(inode)
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def connection_owners(peer_port: int, server_port: int, pids: dict[str, int]) -> set[str]:
    """Names (keys of `pids`) of the processes holding the client end of peer_port -> server_port."""
    deadline = time.monotonic() + 2
    while True:
        inodes = _tcp_inodes(peer_port, server_port)
        owners = {name for name, pid in pids.items() if inodes & _socket_inodes(pid)}
        if owners or time.monotonic() > deadline:
            return owners
        time.sleep(0.02)


def assert_through_proxy(proxy: Proxy, mock: MockProvider, relay, requests_before: int = 0, host: str = "127.0.0.1") -> None:
    """The mock's requests since `requests_before` all came over connections opened by pproxy."""
    lines = proxy.wait_for_line_to(host, mock.port)
    assert lines, f"pproxy never logged a connection to {host}:{mock.port}:\n{proxy.log()}"
    workers = relay.worker_pids()
    assert workers, "the relay has no worker"
    pids = {"pproxy": proxy.process.pid, **{f"worker-{pid}": pid for pid in workers}}
    received = mock.requests[requests_before:]
    assert received, "the mock received nothing"
    for request in received:
        owners = connection_owners(request.peer[1], mock.port, pids)
        assert owners == {"pproxy"}, (
            f"the mock's peer port {request.peer[1]} belongs to {owners or 'nobody found'}, not to pproxy"
        )


# -- helpers ---------------------------------------------------------------------------------------


def endpoint_section(name: str, target_base: str, provider: str = "openai", **keys: object) -> str:
    """Like conftest.endpoint_config, for a target_base that is not the `mock` fixture's."""
    lines = [f"[endpoints.{name}]", f"target_base = {toml_value(target_base)}", f"provider = {toml_value(provider)}"]
    lines += [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def relay_config(*sections: str) -> str:
    return "[server]\n\n" + "\n".join(sections)


def openai_client(relay, endpoint: str, api_key: str = "sk-client") -> openai.OpenAI:
    return openai.OpenAI(base_url=relay.url(f"/{endpoint}/v1"), api_key=api_key, max_retries=0, timeout=TIMEOUT)


def post_chat(relay, endpoint: str, **kwargs) -> httpx.Response:
    return httpx.post(relay.url(f"/{endpoint}/v1/chat/completions"), json=CHAT, timeout=TIMEOUT, **kwargs)


def assert_openai_502(response: httpx.Response) -> dict:
    assert response.status_code == 502, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], dict) and body["error"]["message"], body
    assert body["error"]["type"] == "upstream_error", body
    return body


@pytest.fixture
def tls_mock(tmp_path: Path) -> Iterator[tuple[MockProvider, Path]]:
    """A TLS mock provider with a certificate for 127.0.0.1 and localhost, and its CA's PEM file."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_ctx)
    ca_path = tmp_path / "mock-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    with MockProvider(tls_context=server_ctx) as provider:
        yield provider, ca_path


# -- 1. HTTP proxy, plain-http target --------------------------------------------------------------


def test_http_proxy_plain_target_openai_sdk(mock: MockProvider, start_relay, start_proxy) -> None:
    proxy = start_proxy("http")
    relay = start_relay(relay_config(endpoint_config("oai", mock, proxy_url=proxy.url())))
    client = openai_client(relay, "oai")

    completion = client.chat.completions.create(model="gpt-mock", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from mock openai"
    assert completion.model == "gpt-mock"

    stream = client.chat.completions.create(
        model="gpt-mock", messages=MESSAGES, stream=True, extra_headers={"x-mock-events": "6"}
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "w0 w1 w2 w3 w4 w5"

    assert [r.path for r in mock.requests] == ["/v1/chat/completions"] * 2
    assert_through_proxy(proxy, mock, relay)
    assert mock.last().headers["host"] == f"127.0.0.1:{mock.port}"


# -- 2. SOCKS5 proxy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_socks5_proxy_anthropic_sdk_streamed(mock: MockProvider, start_relay, start_proxy, scheme: str) -> None:
    proxy = start_proxy("socks5")
    section = endpoint_config("ant", mock, provider="anthropic", base="", proxy_url=proxy.url(scheme=scheme))
    relay = start_relay(relay_config(section))
    client = anthropic.Anthropic(base_url=relay.url("/ant"), api_key="sk-ant-client", max_retries=0, timeout=TIMEOUT)
    args = {"model": "claude-mock", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}

    with client.messages.stream(**args, extra_headers={"x-mock-events": "5"}) as stream:
        assert "".join(stream.text_stream) == "w0 w1 w2 w3 w4"
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5

    events = list(client.messages.create(**args, stream=True))
    assert [e.type for e in events] == (
        ["message_start", "content_block_start"] + ["content_block_delta"] * 4
        + ["content_block_stop", "message_delta", "message_stop"]
    )
    message = client.messages.create(**args)
    assert message.content[0].text == "Hello from mock anthropic"  # type: ignore[union-attr]

    assert [r.path for r in mock.requests] == ["/v1/messages"] * 3
    for request in mock.requests:  # the client's own key passes through (SDK versions differ in the header)
        presented = {request.headers.get("x-api-key"), request.headers.get("authorization")}
        assert presented & {"sk-ant-client", "Bearer sk-ant-client"}, request.headers
    assert_through_proxy(proxy, mock, relay)
    assert all(line.startswith("socks5 ") for line in proxy.lines_to("127.0.0.1", mock.port))


# -- 3. HTTPS target through an HTTP proxy (CONNECT) ----------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_https_target_through_connect(tls_mock, start_relay, start_proxy, host: str) -> None:
    mock, ca_path = tls_mock
    proxy = start_proxy("http")
    target = f"https://{host}:{mock.port}/v1"
    good = endpoint_section("good", target, proxy_url=proxy.url(), ca_file=str(ca_path))
    bad = endpoint_section("bad", target, proxy_url=proxy.url())  # no ca_file: certifi's bundle
    relay = start_relay(relay_config(good, bad))
    workers = relay.worker_pids()
    client = openai_client(relay, "good")

    completion = client.chat.completions.create(model="gpt-mock", messages=MESSAGES, extra_headers={"x-mock-events": "40"})
    assert completion.choices[0].message.content == " ".join(f"w{i}" for i in range(40))
    stream = client.chat.completions.create(model="gpt-mock", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from mock openai"
    assert len(mock.requests) == 2
    assert mock.last().headers["host"] == f"{host}:{mock.port}"
    assert_through_proxy(proxy, mock, relay, host=host)

    # Wrong trust (certifi's bundle, which does not hold the test CA): 502, nothing reaches the mock.
    tunnels_before = len(proxy.lines_to(host, mock.port))
    started = time.monotonic()
    response = post_chat(relay, "bad")
    assert time.monotonic() - started < 5
    assert_openai_502(response)
    assert len(mock.requests) == 2
    # The relay did go through the proxy for it: pproxy logged one more tunnel to the mock.
    deadline = time.monotonic() + 5
    while len(proxy.lines_to(host, mock.port)) <= tunnels_before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(proxy.lines_to(host, mock.port)) > tunnels_before, proxy.log()

    # The worker keeps serving: same worker, good endpoint answers, bad one still fails cleanly.
    assert post_chat(relay, "good").json()["choices"][0]["message"]["content"] == "Hello from mock openai"
    assert_openai_502(post_chat(relay, "bad"))
    assert post_chat(relay, "good").status_code == 200
    assert relay.worker_pids() == workers
    assert len(mock.requests) == 4
    assert_through_proxy(proxy, mock, relay, host=host)


def test_https_proxy_verified_with_its_own_ca(tmp_path: Path, tls_mock, mock: MockProvider, start_relay, start_proxy) -> None:
    """TLS to the proxy itself: forwarding a plain target inside it, CONNECT and TLS-in-TLS for an https
    one; the proxy is verified with `proxy_ca_file`, the target with `ca_file`, never one for the other."""
    target, target_ca = tls_mock
    proxy_ca = trustme.CA()
    cert, key = tmp_path / "proxy-cert.pem", tmp_path / "proxy-key.pem"
    issued = proxy_ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    proxy_ca_path = tmp_path / "proxy-ca.pem"
    proxy_ca.cert_pem.write_to_path(str(proxy_ca_path))
    proxy = start_proxy("http", tls=(cert, key))
    url = f"https://127.0.0.1:{proxy.port}"
    relay = start_relay(
        relay_config(
            endpoint_config("plain", mock, proxy_url=url, proxy_ca_file=str(proxy_ca_path)),
            endpoint_section(
                "tls", f"https://127.0.0.1:{target.port}/v1", proxy_url=url,
                proxy_ca_file=str(proxy_ca_path), ca_file=str(target_ca),
            ),
            endpoint_config("unverified", mock, proxy_url=url),  # certifi does not know the proxy's CA
            endpoint_section(  # the target's CA does not vouch for the proxy
                "crossed", f"https://127.0.0.1:{target.port}/v1", proxy_url=url, ca_file=str(target_ca),
            ),
        )
    )
    assert post_chat(relay, "plain").json()["choices"][0]["message"]["content"] == "Hello from mock openai"
    assert post_chat(relay, "tls").json()["choices"][0]["message"]["content"] == "Hello from mock openai"
    for name in ("unverified", "crossed"):
        body = assert_openai_502(post_chat(relay, name))
        assert "TLS handshake with the upstream proxy failed" in body["error"]["message"], body
    assert proxy.lines_to("127.0.0.1", mock.port) and proxy.lines_to("127.0.0.1", target.port)
    assert len(mock.requests) == 1 and len(target.requests) == 1


# -- 4. proxy down -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_proxy_down_gives_502_and_no_direct_connection(mock: MockProvider, start_relay, scheme: str) -> None:
    closed = free_port()  # nothing listens there
    section = endpoint_config("oai", mock, proxy_url=f"{scheme}://127.0.0.1:{closed}", connect_timeout=3)
    relay = start_relay(relay_config(section))
    workers = relay.worker_pids()
    for _ in range(2):
        started = time.monotonic()
        response = post_chat(relay, "oai")
        assert time.monotonic() - started < 5
        assert_openai_502(response)
    # Through the SDK too: an APIStatusError 502, not a hang or a connection error.
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client(relay, "oai").chat.completions.create(model="gpt-mock", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 502
    assert mock.requests == []  # never a silent direct connection
    assert relay.worker_pids() == workers


@pytest.mark.parametrize("mode", ["http-forward", "http-connect", "socks5"])
def test_target_down_behind_working_proxy_gives_502(tls_mock, start_relay, start_proxy, mode: str) -> None:
    proxy = start_proxy("socks5" if mode == "socks5" else "http")
    closed = free_port()
    scheme = "https" if mode == "http-connect" else "http"
    section = endpoint_section("oai", f"{scheme}://127.0.0.1:{closed}/v1", proxy_url=proxy.url(), connect_timeout=3)
    relay = start_relay(relay_config(section))
    started = time.monotonic()
    response = post_chat(relay, "oai")
    assert time.monotonic() - started < 5
    assert_openai_502(response)
    assert proxy.wait_for_line_to("127.0.0.1", closed), proxy.log()
    assert post_chat(relay, "oai").status_code == 502




@pytest.fixture
def broken_proxy() -> Iterator:
    """broken_proxy(reply) -> port of a server that reads what comes, writes `reply` and closes."""
    listeners: list[socket.socket] = []

    def start(reply: bytes) -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listeners.append(listener)

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(2)
                    try:
                        conn.recv(4096)
                        if reply:
                            conn.sendall(reply)
                    except OSError:
                        pass

        threading.Thread(target=serve, daemon=True).start()
        return listener.getsockname()[1]

    yield start
    for listener in listeners:
        listener.close()


@pytest.mark.parametrize("reply", [b"", b"this is not a proxy\r\n\r\n"], ids=["drop", "garbage"])
@pytest.mark.parametrize(
    "scheme", ["http", "socks5"]
)
def test_broken_proxy_gives_502(mock: MockProvider, start_relay, broken_proxy, scheme: str, reply: bytes) -> None:
    port = broken_proxy(reply)
    relay = start_relay(relay_config(endpoint_config("oai", mock, proxy_url=f"{scheme}://127.0.0.1:{port}")))
    workers = relay.worker_pids()
    started = time.monotonic()
    response = post_chat(relay, "oai")
    assert time.monotonic() - started < 5
    assert mock.requests == []
    assert relay.worker_pids() == workers
    assert_openai_502(response)
    assert "Traceback" not in relay.logs()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "malformed upstream response: both Content-Length and Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n",
            "malformed upstream response: HTAB after the Transfer-Encoding value",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", "malformed upstream response: Content-Length with a list"),
    ],
    ids=["cl-and-te", "te-htab", "cl-list"],
)
def test_one_strictness_whatever_the_way(
    start_relay, start_proxy, broken_proxy, reply: bytes, message: str
) -> None:
    """The same parser judges a response whether the target is reached directly, forwarded by an HTTP
    proxy or tunnelled through SOCKS5: `proxy_url` never changes what is relayed."""
    target = broken_proxy(reply)  # a target that answers `reply` to anything
    http_proxy, socks_proxy = start_proxy("http"), start_proxy("socks5")
    base = f"http://127.0.0.1:{target}/v1"
    relay = start_relay(
        relay_config(
            endpoint_section("direct", base),
            endpoint_section("forwarded", base, proxy_url=http_proxy.url()),
            endpoint_section("socks", base, proxy_url=socks_proxy.url()),
        )
    )
    for name in ("direct", "forwarded", "socks"):
        body = assert_openai_502(post_chat(relay, name))
        assert body["error"]["message"].startswith(message), (name, body)
    assert http_proxy.lines_to("127.0.0.1", target) and socks_proxy.lines_to("127.0.0.1", target)


# -- 5. proxy authentication ----------------------------------------------------------------------------------

AUTH_MODES = ["http-forward", "http-connect", "socks5"]


@pytest.fixture
def auth_setup(request, mock: MockProvider, tls_mock, start_relay, start_proxy):
    """(relay, proxy, target mock) for request.param in AUTH_MODES; endpoints ok, odd, wrong, nocreds."""
    mode = request.param
    tls, ca_path = tls_mock
    target = tls if mode == "http-connect" else mock
    proxy = start_proxy(
        "socks5" if mode == "socks5" else "http",
        users=[f"{PROXY_USER}:{PROXY_PASSWORD}", f"{ODD_USER}:{ODD_PASSWORD}"],
    )
    extra: dict[str, object] = {"ca_file": str(ca_path)} if mode == "http-connect" else {}
    urls = {
        "ok": proxy.url(PROXY_USER, PROXY_PASSWORD),
        "odd": proxy.url(ODD_USER, ODD_PASSWORD),  # percent-encoded '@', ':', '/', '#'
        "wrong": proxy.url(PROXY_USER, WRONG_PASSWORD),
        "nocreds": proxy.url(),
    }
    sections = [endpoint_config(name, target, proxy_url=url, **extra) for name, url in urls.items()]
    relay = start_relay(relay_config(*sections))
    return relay, proxy, target


def assert_no_proxy_password(relay, *bodies: str) -> None:
    logs = relay.logs()
    for secret in (PROXY_PASSWORD, ODD_PASSWORD, quote(ODD_PASSWORD, safe=""), WRONG_PASSWORD):
        assert secret not in logs, f"{secret!r} in the relay log:\n{logs}"
        for body in bodies:
            assert secret not in body, body


@pytest.mark.parametrize("auth_setup", AUTH_MODES, indirect=True)
def test_proxy_auth_right_credentials(auth_setup) -> None:
    relay, proxy, target = auth_setup
    for name in ("ok", "odd", "ok"):
        completion = openai_client(relay, name).chat.completions.create(model="gpt-mock", messages=MESSAGES)
        assert completion.choices[0].message.content == "Hello from mock openai"
    stream = openai_client(relay, "odd").chat.completions.create(model="gpt-mock", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from mock openai"
    assert len(target.requests) == 4
    assert_through_proxy(proxy, target, relay)
    for request in target.requests:
        assert "proxy-authorization" not in request.headers
    assert_no_proxy_password(relay)


@pytest.mark.parametrize(
    "auth_setup",
    ["http-forward", "http-connect", "socks5"],
    indirect=True,
)
def test_proxy_auth_wrong_password_gives_502(auth_setup) -> None:
    relay, proxy, target = auth_setup
    started = time.monotonic()
    response = post_chat(relay, "wrong")
    assert time.monotonic() - started < 5
    assert target.requests == []
    assert_no_proxy_password(relay, response.text, json.dumps(dict(response.headers)))
    assert_openai_502(response)
    # The worker keeps serving, through the same proxy with the right password.
    assert post_chat(relay, "ok").status_code == 200
    assert_openai_502(post_chat(relay, "wrong"))
    assert len(target.requests) == 1
    assert_no_proxy_password(relay)


@pytest.mark.parametrize(
    "auth_setup",
    [
        "http-forward",
        "http-connect",
        "socks5",
    ],
    indirect=True,
)
def test_proxy_auth_missing_credentials_gives_502(auth_setup) -> None:
    relay, proxy, target = auth_setup
    started = time.monotonic()
    response = post_chat(relay, "nocreds")
    assert time.monotonic() - started < 5
    assert target.requests == []
    assert_no_proxy_password(relay, response.text)
    assert_openai_502(response)
    assert post_chat(relay, "ok").status_code == 200


@pytest.mark.parametrize("auth_setup", ["http-forward", "http-connect"], indirect=True)
def test_client_cannot_lend_proxy_credentials(auth_setup) -> None:
    """Proxy-Authorization is hop-by-hop: a client's never reaches the relay's proxy."""
    relay, proxy, target = auth_setup
    stolen = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    response = post_chat(relay, "nocreds", headers={"proxy-authorization": stolen})
    assert response.status_code == 502, (response.status_code, response.text)
    assert target.requests == []
    assert "proxy-authenticate" not in response.headers


# -- 6. keys stay where they belong ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_keys_never_leak_to_proxy_or_logs(mock: MockProvider, start_relay, start_proxy, scheme: str) -> None:
    proxy = start_proxy(scheme)
    section = endpoint_config(
        "oai", mock, proxy_url=proxy.url(), api_key=PROVIDER_KEY, auth_keys=[RELAY_KEY]
    )
    relay = start_relay(relay_config(section))
    client = openai_client(relay, "oai", api_key=RELAY_KEY)

    raw = client.chat.completions.with_raw_response.create(model="gpt-mock", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "Hello from mock openai"
    stream = client.chat.completions.create(model="gpt-mock", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from mock openai"
    # Without the relay key: 401 from the relay itself, nothing upstream.
    with pytest.raises(openai.AuthenticationError):
        openai_client(relay, "oai", api_key="rk-wrong").chat.completions.create(model="gpt-mock", messages=MESSAGES)

    assert len(mock.requests) == 2
    for request in mock.requests:
        assert request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
        dump = json.dumps(request.raw_headers) + request.path + request.body.decode(errors="replace")
        assert RELAY_KEY not in dump
    assert_through_proxy(proxy, mock, relay)

    for key in (PROVIDER_KEY, RELAY_KEY):
        assert key not in proxy.log(), proxy.log()
        assert key not in relay.logs(), relay.logs()
        assert key not in json.dumps(dict(raw.headers))
