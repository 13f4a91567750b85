"""WebSockets through a real relay process: the `websockets` client library on one side, the
`websockets` echo provider (`ws_provider`) on the other, every byte through `llmrelay serve`.

An HTTP/1.1 upgrade is relayed as an upgrade on a fresh upstream connection (the relay key removed,
the provider key injected), then bytes both ways until either side closes; a refused upgrade is the
upstream's answer; the endpoint may refuse WebSockets; a quiet tunnel is closed after
`websocket_idle_timeout`; a reload leaves open sessions alone and a drain keeps them until its
deadline. HTTP/2 clients (RFC 8441 extended CONNECT) are relayed to the same HTTP/1.1 upstream.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from relaytest import access_records, free_port, toml_value, wait_until
from test_tls_listeners import Certs
from test_upstream_proxies import start_proxy  # noqa: F401 - the fixture (a real pproxy)
from ws_provider import WebSocketProvider

pytestmark = pytest.mark.timeout(60)

RELAY_KEY = "rk-ws-relay-5d1c9e07a3b2"
PROVIDER_KEY = "sk-ws-provider-8e4f2a6b1c90"
CLIENT_OWN_KEY = "sk-client-own-7a7a7a"


@pytest.fixture
def provider() -> Iterator[WebSocketProvider]:
    with WebSocketProvider() as server:
        yield server


def section(name: str, target_base: str, **keys: object) -> str:
    lines = [f"[endpoints.{name}]", f"target_base = {toml_value(target_base)}", 'provider = "openai"']
    lines += [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def config(provider: WebSocketProvider, *extra: str, server: str = "", **keys: object) -> str:
    main = section("ws", provider.base_url + "/v1", auth_keys=[RELAY_KEY], api_key=PROVIDER_KEY, **keys)
    return "[server]\n" + server + "\n" + main + "\n".join(extra)


def open_ws(relay, path: str = "/ws/v1/realtime", key: str | None = RELAY_KEY, **kwargs: object) -> ClientConnection:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return connect(
        f"ws://127.0.0.1:{relay.port}{path}",
        additional_headers=headers,
        open_timeout=10,
        close_timeout=5,
        max_size=None,
        ping_interval=None,
        **kwargs,  # type: ignore[arg-type]
    )


def session_records(relay) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    return [r for r in access_records(relay) if r.get("status") in ("101", "200") and r.get("endpoint") == "ws"]


# -- HTTP/1.1 --------------------------------------------------------------------------------------


def test_messages_pings_and_large_messages_are_relayed(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(config(provider))
    with open_ws(relay, subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response is not None and ws.response.headers["x-llmrelay-upstream"] == "ws#0"
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01\xfe\xff")
        assert ws.recv(timeout=5) == b"\x00\x01\xfe\xff"
        assert ws.ping(b"are you there").wait(5)
        big_text = "x" * (1 << 20)
        ws.send(big_text)
        assert ws.recv(timeout=10) == big_text
        big_binary = os.urandom(1 << 20)  # (incompressible: permessage-deflate is on)
        ws.send(big_binary)
        assert ws.recv(timeout=10) == big_binary
    # the upstream saw the provider key, never the relay key, and the handshake fields
    seen = provider.last()
    assert seen.path == "/v1/realtime"
    assert seen.header("authorization") == f"Bearer {PROVIDER_KEY}"
    assert all(RELAY_KEY not in value for _, value in seen.headers)
    assert seen.header("upgrade") == "websocket" and seen.header("sec-websocket-protocol") == "chat"
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    # one access-log line for the session, with the bytes each way and nothing secret
    record = wait_until(lambda: session_records(relay), 5)[0]
    assert record["status"] == "101" and record["outcome"] in ("client_closed", "upstream_closed")
    assert int(record["in"]) > 1 << 20 and int(record["out"]) > 1 << 20
    assert RELAY_KEY not in relay.logs() and PROVIDER_KEY not in relay.logs()


def test_the_close_code_of_the_upstream_reaches_the_client(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(config(provider))
    with open_ws(relay) as ws:
        ws.send("close:4001:bye now")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye now")


def test_the_client_closes_with_its_code(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(config(provider))
    with open_ws(relay) as ws:
        ws.send("one")
        assert ws.recv(timeout=5) == "one"
        ws.close(4002, "client done")
    assert (ws.close_code, ws.close_reason) == (4002, "client done")  # the upstream echoed the code back
    assert provider.wait_closed(1, 5)
    record = wait_until(lambda: session_records(relay), 5)[0]
    assert record["outcome"] in ("client_closed", "upstream_closed")


def test_without_the_relay_key_the_upgrade_is_refused(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(config(provider))
    for key in (None, "wrong-key"):
        with pytest.raises(InvalidStatus) as refused:
            open_ws(relay, key=key)
        assert refused.value.response.status_code == 401
    assert provider.upgrades == []


def test_a_refused_upgrade_is_relayed_as_the_upstreams_answer(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    """A pass-through endpoint (no relay key, no provider key): the client's own credential goes
    upstream, and the upstream's 401 comes back, status and body."""
    passthrough = section("open", provider.base_url + "/v1", auth_keys=[])
    relay = start_relay(config(provider, passthrough))
    provider.refuse(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
    with pytest.raises(InvalidStatus) as refused:
        open_ws(relay, path="/open/v1/realtime", key=CLIENT_OWN_KEY)
    response = refused.value.response
    assert response.status_code == 401
    assert json.loads(response.body or b"")["error"]["message"] == "bad key"
    assert provider.last().header("authorization") == f"Bearer {CLIENT_OWN_KEY}"
    provider.refuse(None)
    with open_ws(relay, path="/open/v1/realtime", key=CLIENT_OWN_KEY) as ws:
        ws.send("after")
        assert ws.recv(timeout=5) == "after"


def test_an_endpoint_that_does_not_allow_websockets_answers_403(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(config(provider, allow_websocket=False))
    with pytest.raises(InvalidStatus) as refused:
        open_ws(relay)
    response = refused.value.response
    assert response.status_code == 403
    assert json.loads(response.body or b"")["error"]["message"]  # the OpenAI error shape
    assert provider.upgrades == []


def test_an_upstream_that_is_down_gives_502(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    down = section("down", f"http://127.0.0.1:{dead_port}/v1", auth_keys=[RELAY_KEY])
    relay = start_relay(config(provider, down))
    with pytest.raises(InvalidStatus) as refused:
        open_ws(relay, path="/down/v1/realtime")
    assert refused.value.response.status_code == 502


class WrongAcceptServer:
    """An upstream that answers every upgrade with a 101 whose Sec-WebSocket-Accept is wrong."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                self.requests.append(head)
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: c29tZXRoaW5nIGVsc2UgZW50aXJlbHk=\r\n\r\n"
                )

    def close(self) -> None:
        self.sock.close()


def test_a_101_that_does_not_answer_the_key_gives_502(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    """The relay checks the upstream's accept value itself: on HTTP/2 the client has no key to check
    it with, and on HTTP/1.1 a wrong one must not become a tunnel either."""
    bad = WrongAcceptServer()
    try:
        relay = start_relay(config(provider, section("bad", f"http://127.0.0.1:{bad.port}", auth_keys=[RELAY_KEY], retries=0)))
        with pytest.raises(InvalidStatus) as refused:
            open_ws(relay, path="/bad/realtime")
        assert refused.value.response.status_code == 502
        client = H2Client(relay.port)
        try:
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream_id, extended_connect(relay.port, "/bad/realtime"))
            client.flush()
            response = client.wait_for(lambda: client.response(stream_id))
            assert dict(response.headers)[b":status"] == b"502"
        finally:
            client.close()
        assert len(bad.requests) == 2 and all(b"sec-websocket-key: " in head.lower() for head in bad.requests)
    finally:
        bad.close()


def test_an_idle_websocket_is_closed_on_both_sides(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(config(provider, websocket_idle_timeout=1))
    with open_ws(relay) as ws:
        ws.send("one")
        assert ws.recv(timeout=5) == "one"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert 0.8 < time.monotonic() - started < 5
    assert provider.wait_closed(1, 5)
    record = wait_until(lambda: session_records(relay), 5)[0]
    assert record["outcome"] == "idle_timeout"


def test_traffic_keeps_a_websocket_open_past_its_idle_timeout(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(config(provider, websocket_idle_timeout=1))
    with open_ws(relay) as ws:
        for index in range(6):
            ws.send(f"tick {index}")
            assert ws.recv(timeout=5) == f"tick {index}"
            time.sleep(0.4)


def test_a_websocket_to_a_tls_upstream_through_an_upstream_proxy(tmp_path: Path, start_relay, start_proxy) -> None:  # type: ignore[no-untyped-def] # noqa: F811
    proxy = start_proxy("http")
    with WebSocketProvider(tls=True, workdir=tmp_path) as tls_provider:
        relay = start_relay(
            "[server]\n"
            + section(
                "ws",
                tls_provider.base_url + "/v1",
                auth_keys=[RELAY_KEY],
                api_key=PROVIDER_KEY,
                proxy_url=proxy.url(),
                ca_file=str(tls_provider.ca_path),
            )
        )
        with open_ws(relay) as ws:
            ws.send("through the proxy")
            assert ws.recv(timeout=5) == "through the proxy"
        assert proxy.wait_for_line_to("127.0.0.1", tls_provider.port)
        assert tls_provider.last().header("authorization") == f"Bearer {PROVIDER_KEY}"


def test_a_websocket_over_the_relays_tls_listener(provider: WebSocketProvider, tmp_path: Path, start_relay) -> None:  # type: ignore[no-untyped-def]
    """wss:// to the relay: the tunnel's client side is a TLS stream (no half-close), and the close
    handshake still ends promptly on both sides."""
    certs = Certs(tmp_path)
    plain, tls_port = free_port(), free_port()
    tls = {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file)}
    listeners = (
        f'[[server.listen]]\nhost = "127.0.0.1"\nport = {plain}\n\n'
        f'[[server.listen]]\nhost = "127.0.0.1"\nport = {tls_port}\ntls = {toml_value(tls)}\n\n'
    )
    main = section("ws", provider.base_url + "/v1", auth_keys=[RELAY_KEY], api_key=PROVIDER_KEY)
    relay = start_relay(listeners + main, port=plain, port_flag=False)
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    with connect(
        f"wss://127.0.0.1:{tls_port}/ws/v1/realtime",
        ssl=context,
        additional_headers={"Authorization": f"Bearer {RELAY_KEY}"},
        open_timeout=10,
        close_timeout=5,
        max_size=None,
    ) as ws:
        for index in range(20):
            ws.send(f"secure {index}")
            assert ws.recv(timeout=5) == f"secure {index}"
        started = time.monotonic()
        ws.close(1000, "done")
    assert time.monotonic() - started < 4
    assert ws.close_code == 1000
    assert provider.wait_closed(1, 5)


# -- reload and drain ------------------------------------------------------------------------------


def test_a_reload_leaves_an_open_websocket_working(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(config(provider))
    with open_ws(relay) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        assert relay.config_path is not None
        relay.config_path.write_text(config(provider, section("other", provider.base_url, auth_keys=[RELAY_KEY])))
        relay.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "reload ok" in relay.logs(), 10)
        time.sleep(0.5)  # (the worker has the new generation; the old one retires)
        ws.send("after the reload")
        assert ws.recv(timeout=5) == "after the reload"
        with open_ws(relay, path="/other/realtime") as second:
            second.send("new generation")
            assert second.recv(timeout=5) == "new generation"
        ws.send("still")
        assert ws.recv(timeout=5) == "still"


def test_a_drain_keeps_a_websocket_until_its_deadline_then_cuts_it(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(config(provider, server="drain_timeout = 3\n"))
    with open_ws(relay) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        relay.send_signal(signal.SIGUSR2)  # a rolling replacement: this worker drains
        assert wait_until(lambda: relay.logs().count("ready (pid") >= 2, 15)
        assert wait_until(lambda: "draining" in relay.logs(), 5)
        drain_started = time.monotonic()
        ws.send("while draining")
        assert ws.recv(timeout=5) == "while draining"
        with pytest.raises(ConnectionClosed):
            while True:
                ws.send("tick")
                ws.recv(timeout=5)
                time.sleep(0.2)
        assert time.monotonic() - drain_started > 1.5
    record = wait_until(lambda: session_records(relay), 10)[0]
    assert record["outcome"] == "cut_at_drain_deadline"
    # the new worker serves new WebSockets
    with open_ws(relay) as ws:
        ws.send("new worker")
        assert ws.recv(timeout=5) == "new worker"


# -- HTTP/2 (RFC 8441) -----------------------------------------------------------------------------


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 section 5.2), for payloads under 64 KiB."""
    mask = b"\x11\x22\x33\x44"
    length = len(payload)
    header = bytes([0x80 | opcode]) + (bytes([0x80 | length]) if length < 126 else bytes([0x80 | 126]) + length.to_bytes(2, "big"))
    return header + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def read_frame(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """(opcode, payload, rest) of an unmasked server frame at the start of `buffer`, None if incomplete."""
    if len(buffer) < 2:
        return None
    length = buffer[1] & 0x7F
    start = 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, start = int.from_bytes(buffer[2:4], "big"), 4
    if len(buffer) < start + length:
        return None
    return buffer[0] & 0x0F, buffer[start : start + length], buffer[start + length :]


class H2Client:
    """A bare HTTP/2 client on a socket, driven by the `h2` library (prior knowledge, h2c)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.flush()
        self.events: list[h2.events.Event] = []
        self.data: dict[int, bytes] = {}
        self.settings_seen = False

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def pump(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("relay closed the HTTP/2 connection")
        for event in self.conn.receive_data(chunk):
            self.events.append(event)
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings_seen = True
            if isinstance(event, h2.events.DataReceived):
                self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()

    def wait_for(self, predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            self.pump()
        raise AssertionError("timed out waiting on the HTTP/2 connection")

    def response(self, stream_id: int) -> h2.events.ResponseReceived | None:
        for event in self.events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                return event
        return None

    def close(self) -> None:
        self.sock.close()


def extended_connect(port: int, path: str) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"127.0.0.1:%d" % port),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"chat"),
        (b"authorization", f"Bearer {RELAY_KEY}".encode()),
    ]


def test_an_http2_extended_connect_is_relayed_to_an_http1_upgrade(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(config(provider))
    client = H2Client(relay.port)
    try:
        client.wait_for(lambda: client.settings_seen)
        assert client.conn.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL) == 1
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, extended_connect(relay.port, "/ws/v1/realtime"))
        client.flush()
        response = client.wait_for(lambda: client.response(stream_id))
        headers = dict(response.headers)
        assert headers[b":status"] == b"200"
        assert headers[b"sec-websocket-protocol"] == b"chat"
        assert b"sec-websocket-accept" not in headers and b"upgrade" not in headers
        for payload in (b"over h2", b"second message", b"y" * 5000):
            client.conn.send_data(stream_id, ws_frame(payload))
            client.flush()
            frame = client.wait_for(lambda: read_frame(client.data.get(stream_id, b"")))
            opcode, echoed, rest = frame
            client.data[stream_id] = rest
            assert (opcode, echoed) == (1, payload)
        # a close frame, answered with the upstream's close frame, then the end of the stream
        client.conn.send_data(stream_id, ws_frame((1000).to_bytes(2, "big") + b"done", opcode=8))
        client.flush()
        frame = client.wait_for(lambda: read_frame(client.data.get(stream_id, b"")))
        assert frame[0] == 8 and int.from_bytes(frame[1][:2], "big") == 1000
        client.wait_for(
            lambda: any(
                isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)) and event.stream_id == stream_id
                for event in client.events
            )
        )
    finally:
        client.close()
    seen = provider.last()
    assert seen.header("authorization") == f"Bearer {PROVIDER_KEY}"
    assert seen.header("sec-websocket-key") is not None  # made by the relay
    record = wait_until(lambda: session_records(relay), 5)[0]
    assert record["status"] == "200" and int(record["in"]) > 5000 and int(record["out"]) > 5000


def test_a_browser_offers_its_relay_key_as_a_subprotocol(provider: WebSocketProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    """A browser cannot set headers on a WebSocket: OpenAI's Realtime API takes its key as the
    subprotocol `openai-insecure-api-key.KEY`. The relay accepts its relay key there, and removes
    that offer before the upgrade goes upstream with the provider key."""
    relay = start_relay(config(provider))
    offer = ["chat", f"openai-insecure-api-key.{RELAY_KEY}"]
    with open_ws(relay, key=None, subprotocols=offer) as ws:
        assert ws.subprotocol == "chat"
        ws.send("from a browser")
        assert ws.recv(timeout=5) == "from a browser"
    seen = provider.last()
    assert seen.header("sec-websocket-protocol") == "chat"
    assert seen.header("authorization") == f"Bearer {PROVIDER_KEY}"
    assert all(RELAY_KEY not in value for _, value in seen.headers)
    with pytest.raises(InvalidStatus) as refused:
        with open_ws(relay, key=None, subprotocols=["chat", "openai-insecure-api-key.not-the-key"]):
            pass
    assert refused.value.response.status_code == 401
    assert RELAY_KEY not in relay.logs()
