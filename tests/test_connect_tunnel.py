"""CONNECT tunnels (forward-proxy mode) through a real relay process, with curl as the client.

The destination is a local TLS server (the mock provider with a trustme certificate) whose
`127.0.0.1:PORT` is on the allow-list: curl speaks TLS to it through the tunnel and checks its
certificate, so the bytes went through unchanged. Refusals are read from raw sockets, where every
header of the answer can be seen. The last tests drive the byte pump itself on a socket pair.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import trio

from llmrelay.io.transport import SocketTransport
from llmrelay.proto.errors import ClientDisconnected
from llmrelay.relay.tunnel import TunnelEnd, TunnelPump
from mock_providers import MockProvider
from relaytest import access_records, endpoint_config, free_port, toml_value, wait_until
from test_upstream_proxies import start_proxy, tls_mock  # noqa: F401 - fixtures (pproxy, a TLS mock)
from test_websocket import H2Client

pytestmark = pytest.mark.timeout(60)

KEY = "rk-connect-3e9d1b7a5c2f"
WRONG = "rk-connect-wrong-000000"


def connect_config(allow: list[str], *extra: str, **keys: object) -> str:
    settings = {"enabled": True, "allow": allow, "auth_keys": [KEY], **keys}
    lines = ["[server]", "", "[server.connect]"] + [f"{name} = {toml_value(value)}" for name, value in settings.items()]
    endpoints = extra or ('[endpoints.placeholder]\ntarget_base = "http://127.0.0.1:9"\n',)  # (one is required)
    return "\n".join(lines) + "\n\n" + "\n".join(endpoints)


def curl(relay, url: str, ca_path: Path, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    command = ["curl", "-sS", "-p", "-x", f"http://127.0.0.1:{relay.port}", "--cacert", str(ca_path), "--max-time", "10"]
    return subprocess.run([*command, *args, url], capture_output=True, text=True, timeout=20)


def raw_connect(port: int, target: str, headers: dict[str, str] | None = None) -> tuple[socket.socket, bytes]:
    """Send a CONNECT on a new connection; the socket and the answer's head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return sock, answer


def read_to_end(sock: socket.socket, already: bytes = b"") -> bytes:
    data = already
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def tunnel_records(relay) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    return [record for record in access_records(relay) if record.get("outcome") not in (None, "ok") or record.get("status") == "200"]


def connect_lines(relay) -> list[str]:  # type: ignore[no-untyped-def]
    return [line for line in relay.logs().splitlines() if "llmrelay.access" in line and '"CONNECT ' in line]


# -- tunnels that open ---------------------------------------------------------------------------------


def test_curl_reaches_an_allowed_tls_server_with_a_bearer_key(tls_mock, start_relay) -> None:  # type: ignore[no-untyped-def]
    server, ca_path = tls_mock
    relay = start_relay(connect_config([f"127.0.0.1:{server.port}"]))
    result = curl(relay, f"https://127.0.0.1:{server.port}/v1/models", ca_path, "--proxy-header", f"Proxy-Authorization: Bearer {KEY}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"][0]["id"] == "mock-model"
    line = wait_until(lambda: connect_lines(relay), 5)[0]
    assert f'"CONNECT 127.0.0.1:{server.port}"' in line and "status=200" in line
    fields = dict(token.split("=", 1) for token in line.split() if "=" in token and token.split("=", 1)[0].isidentifier())
    assert int(fields["in"]) > 200 and int(fields["out"]) > 200  # a TLS handshake and a request each way
    assert fields["outcome"] in ("client_closed", "upstream_closed")
    assert fields["upstream"] == f"127.0.0.1:{server.port}"
    assert KEY not in relay.logs()


def test_basic_credentials_carry_the_key_as_their_password(tls_mock, start_relay) -> None:  # type: ignore[no-untyped-def]
    server, ca_path = tls_mock
    relay = start_relay(connect_config([f"127.0.0.1:{server.port}"]))
    result = curl(relay, f"https://127.0.0.1:{server.port}/v1/models", ca_path, "--proxy-user", f"anyone:{KEY}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"]
    wrong = curl(relay, f"https://127.0.0.1:{server.port}/v1/models", ca_path, "--proxy-user", f"anyone:{WRONG}")
    assert wrong.returncode != 0 and "407" in wrong.stderr
    assert KEY not in relay.logs() and WRONG not in relay.logs()
    assert base64.b64encode(f"anyone:{KEY}".encode()).decode() not in relay.logs()


def test_without_auth_no_key_is_asked(tls_mock, start_relay) -> None:  # type: ignore[no-untyped-def]
    server, ca_path = tls_mock
    relay = start_relay(connect_config([f"127.0.0.1:{server.port}"], auth=False))
    result = curl(relay, f"https://127.0.0.1:{server.port}/v1/models", ca_path)
    assert result.returncode == 0, result.stderr


def test_a_tunnel_through_the_proxy_of_via_endpoint(tls_mock, mock: MockProvider, start_relay, start_proxy) -> None:  # type: ignore[no-untyped-def] # noqa: F811
    server, ca_path = tls_mock
    proxy = start_proxy("http")
    egress = endpoint_config("egress", mock, proxy_url=proxy.url())
    relay = start_relay(connect_config([f"127.0.0.1:{server.port}"], egress, via_endpoint="egress"))
    result = curl(relay, f"https://127.0.0.1:{server.port}/v1/models", ca_path, "--proxy-header", f"Proxy-Authorization: Bearer {KEY}")
    assert result.returncode == 0, result.stderr
    assert proxy.wait_for_line_to("127.0.0.1", server.port), proxy.log()
    line = wait_until(lambda: connect_lines(relay), 5)[0]
    assert "endpoint=egress" in line


def test_an_http2_plain_connect_opens_a_tunnel(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(connect_config([f"127.0.0.1:{mock.port}"]))
    client = H2Client(relay.port)
    try:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id,
            [
                (b":method", b"CONNECT"),
                (b":authority", f"127.0.0.1:{mock.port}".encode()),
                (b"proxy-authorization", f"Bearer {KEY}".encode()),
            ],
        )
        client.flush()
        response = client.wait_for(lambda: client.response(stream_id))
        assert dict(response.headers)[b":status"] == b"200"
        client.conn.send_data(stream_id, b"GET /v1/models HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n\r\n")
        client.flush()
        answer = client.wait_for(lambda: b"mock-model" in client.data.get(stream_id, b"") and client.data[stream_id])
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        client.close()


# -- refusals ----------------------------------------------------------------------------------------


def test_no_key_or_a_wrong_key_gets_407_with_a_challenge(tls_mock, start_relay) -> None:  # type: ignore[no-untyped-def]
    server, _ = tls_mock
    relay = start_relay(connect_config([f"127.0.0.1:{server.port}"]))
    target = f"127.0.0.1:{server.port}"
    for headers in (None, {"Proxy-Authorization": f"Bearer {WRONG}"}, {"Proxy-Authorization": "Basic !!!"}):
        sock, answer = raw_connect(relay.port, target, headers)
        with sock:
            head = answer.split(b"\r\n\r\n", 1)[0].lower()
            assert head.startswith(b"http/1.1 407 ")
            assert b'proxy-authenticate: bearer realm="llmrelay"' in head
            assert b'proxy-authenticate: basic realm="llmrelay"' in head
            assert b"connection: close" in head
            assert read_to_end(sock) is not None  # the relay closes the connection
    assert WRONG not in relay.logs()


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:{other}",  # another port of an allowed address
        "127.0.0.2:{port}",  # an IP literal not on the list
        "[::1]:{port}",
        "example.com:443",  # a name not on the list
        "localhost:{port}",  # on the list, but it resolves to loopback
    ],
)
def test_a_destination_outside_the_list_or_inside_the_network_gets_403(tls_mock, start_relay, target: str) -> None:  # type: ignore[no-untyped-def]
    server, _ = tls_mock
    relay = start_relay(connect_config([f"127.0.0.1:{server.port}", f"localhost:{server.port}"]))
    destination = target.format(port=server.port, other=server.port + 1)
    sock, answer = raw_connect(relay.port, destination, {"Proxy-Authorization": f"Bearer {KEY}"})
    with sock:
        assert answer.startswith(b"HTTP/1.1 403 "), answer
    assert server.requests == []


def test_connect_while_disabled_gets_405(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay("[server]\n\n" + endpoint_config("oai", mock))
    sock, answer = raw_connect(relay.port, f"127.0.0.1:{mock.port}", {"Proxy-Authorization": f"Bearer {KEY}"})
    with sock:
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 405 ") and b"connection: close" in head and b"\r\nallow: " in head
    assert mock.requests == []


def test_a_malformed_connect_target_is_refused_at_parse_time(start_relay, tls_mock) -> None:  # type: ignore[no-untyped-def]
    server, _ = tls_mock
    relay = start_relay(connect_config([f"127.0.0.1:{server.port}"]))
    for target in ("127.0.0.1", "user@127.0.0.1:1", "/path"):
        sock, answer = raw_connect(relay.port, target, {"Proxy-Authorization": f"Bearer {KEY}"})
        with sock:
            assert answer.startswith(b"HTTP/1.1 400 "), (target, answer)


def test_an_unreachable_destination_gets_502(start_relay) -> None:  # type: ignore[no-untyped-def]
    dead = free_port()
    relay = start_relay(connect_config([f"127.0.0.1:{dead}"]))
    sock, answer = raw_connect(relay.port, f"127.0.0.1:{dead}", {"Proxy-Authorization": f"Bearer {KEY}"})
    with sock:
        assert answer.startswith(b"HTTP/1.1 502 "), answer
    line = wait_until(lambda: connect_lines(relay), 5)[0]
    assert "outcome=connect_failed" in line


def test_a_quiet_tunnel_is_closed_after_idle_timeout(tls_mock, start_relay) -> None:  # type: ignore[no-untyped-def]
    server, _ = tls_mock
    relay = start_relay(connect_config([f"127.0.0.1:{server.port}"], idle_timeout=1))
    sock, answer = raw_connect(relay.port, f"127.0.0.1:{server.port}", {"Proxy-Authorization": f"Bearer {KEY}"})
    with sock:
        assert answer.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert read_to_end(sock) == b""
        assert 0.8 < time.monotonic() - started < 5
    line = wait_until(lambda: connect_lines(relay), 5)[0]
    assert "outcome=idle_timeout" in line


def test_a_drain_cuts_an_open_tunnel_at_its_deadline(tls_mock, start_relay) -> None:  # type: ignore[no-untyped-def]
    server, _ = tls_mock
    config = connect_config([f"127.0.0.1:{server.port}"]).replace("[server]\n", "[server]\ndrain_timeout = 2\n", 1)
    relay = start_relay(config)
    sock, answer = raw_connect(relay.port, f"127.0.0.1:{server.port}", {"Proxy-Authorization": f"Bearer {KEY}"})
    with sock:
        assert answer.startswith(b"HTTP/1.1 200 ")
        relay.send_signal(signal.SIGUSR2)
        assert wait_until(lambda: "draining" in relay.logs(), 15)
        started = time.monotonic()
        sock.settimeout(15)
        assert read_to_end(sock) == b""
        assert time.monotonic() - started > 1.0
    line = wait_until(lambda: connect_lines(relay), 5)[0]
    assert "outcome=cut_at_drain_deadline" in line


# -- the byte pump itself (`llmrelay.relay.tunnel`), on a socket pair ------------------------------


class FakeTunnel:
    """The client's side of a tunnel (the `Tunnel` protocol) fed from a memory channel."""

    def __init__(self, incoming: "trio.MemoryReceiveChannel[bytes]", broken: bool = False) -> None:
        self.incoming = incoming
        self.sent: list[bytes] = []
        self.eof = False
        self.closed = False
        self.broken = broken

    async def receive(self) -> bytes:
        try:
            return await self.incoming.receive()
        except trio.EndOfChannel:
            return b""

    async def send(self, data: bytes) -> None:
        if self.broken:
            raise ClientDisconnected("gone")
        self.sent.append(data)

    async def send_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True


def pump_pair(idle: float = 5.0, linger: float = 5.0, broken: bool = False):  # type: ignore[no-untyped-def]
    ours, peer = socket.socketpair()
    send, receive = trio.open_memory_channel[bytes](10)
    client = FakeTunnel(receive, broken)
    pump = TunnelPump(client, SocketTransport(ours), idle, linger)
    return pump, client, send, trio.socket.from_stdlib_socket(peer)


async def test_the_pump_relays_both_ways_and_passes_a_half_close_on() -> None:
    pump, client, to_upstream, upstream = pump_pair()
    async with trio.open_nursery() as nursery:
        ended: list[TunnelEnd] = []

        async def run() -> None:
            ended.append(await pump.run(b"early "))

        nursery.start_soon(run)
        await to_upstream.send(b"request")
        assert await upstream.recv(100) == b"request"
        await to_upstream.aclose()  # the client ends its side
        assert await upstream.recv(100) == b""  # ... and the upstream sees the end (a FIN)
        await upstream.send(b"answer after the half-close")
        upstream.close()
    assert ended == [TunnelEnd.CLIENT_CLOSED]
    assert b"".join(client.sent) == b"early answer after the half-close"
    assert client.eof and not client.closed  # both sides ended theirs: a clean end
    assert (pump.bytes_up, pump.bytes_down) == (7, len(b"early answer after the half-close"))


async def test_the_pump_ends_after_idle_timeout_with_nothing_moving() -> None:
    pump, client, to_upstream, upstream = pump_pair(idle=0.3)
    started = trio.current_time()
    with trio.fail_after(5):
        end = await pump.run()
    assert end is TunnelEnd.IDLE_TIMEOUT and 0.25 < trio.current_time() - started < 2
    assert client.closed
    assert await upstream.recv(100) == b""  # the upstream connection was closed
    upstream.close()


async def test_the_other_side_gets_only_the_linger_after_a_close() -> None:
    pump, client, to_upstream, upstream = pump_pair(idle=30, linger=0.3)
    await to_upstream.aclose()
    with trio.fail_after(5):
        end = await pump.run()
    assert end is TunnelEnd.CLIENT_CLOSED and client.closed  # the upstream never closed its half
    upstream.close()


async def test_a_client_that_breaks_ends_the_pump_at_once() -> None:
    pump, client, to_upstream, upstream = pump_pair(broken=True)
    await upstream.send(b"for nobody")
    with trio.fail_after(5):
        end = await pump.run()
    assert end is TunnelEnd.CLIENT_GONE and client.closed and pump.bytes_down == 0
    upstream.close()
