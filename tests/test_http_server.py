"""The HTTP/1.1 side with raw sockets: what a strict parser refuses, pipelining, keep-alive,
100-continue, streamed uploads, Host routing, and timeouts."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time

import httpx
import pytest

from relaytest import endpoint_config
from mock_providers import MockProvider


def raw(port: int, data: bytes, timeout: float = 5.0, half_close: bool = False) -> bytes:
    """Send `data` on a new connection and read until the relay closes it (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


class ResponseReader:
    """Reads Content-Length-framed responses from one socket, in order, keeping the bytes of the next
    response when two arrive in one read (pipelined answers do)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""

    def read(self) -> tuple[bytes, bytes]:
        """The next response's (head, body)."""
        data = self.pending
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed early: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed early: {head!r}"
            rest += chunk
        self.pending = rest[length:]
        return head, rest[:length]


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read one Content-Length-framed response (nothing may follow it yet); return (head, body)."""
    reader = ResponseReader(sock)
    response = reader.read()
    assert not reader.pending, "bytes of another response arrived: use ResponseReader"
    return response


@pytest.fixture
def relay(mock: MockProvider, start_relay):  # type: ignore[no-untyped-def]
    config = (
        "[server]\nheader_timeout = 1.0\n"
        + endpoint_config("oai", mock, "openai", "/v1", auth_keys=["relay-key"], api_key="sk-x", max_body_size=64 * 1024 * 1024)
        + endpoint_config("small", mock, "openai", "/v1", max_body_size=1000)
        + endpoint_config("hosted", mock, "openai", "", hosts=["api.hosted.test"])
    )
    return start_relay(config)


GOOD = b"GET /small/v1/models HTTP/1.1\r\nHost: relay\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /small/v1/echo HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /small/v1/echo HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
        (b"POST /small/v1/echo HTTP/1.0\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /small/v1/echo HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /small/v1/echo HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 501),
        (b"POST /small/v1/echo HTTP/1.1\r\nHost: r\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        (b"POST /small/v1/echo HTTP/1.1\r\nHost: r\r\nContent-Length: +5\r\n\r\nabcde", 400),
        (b"GET /small/v1/models HTTP/1.1\r\nHost: r\r\nX-Folded: a\r\n b\r\n\r\n", 400),
        (b"GET /small/v1/models HTTP/1.1\nHost: r\n\n", 400),
        (b"GET /small/v1/models HTTP/1.1\r\nHost: r\nX: y\r\n\r\n", 400),
        (b"GET /small/v1/models HTTP/2.0\r\nHost: r\r\n\r\n", 505),
        (b"GET /small/v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /small/v1/models HTTP/1.1\r\n\r\n", 400),
        (b"GET /small/v1/models HTTP/1.1\r\nHost : r\r\n\r\n", 400),
        (b"GET /small/v1/models HTTP/1.1\r\nHost: r\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET http://evil.test/small/v1/models HTTP/1.1\r\nHost: r\r\n\r\n", 400),
        (b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n", 405),
        (b"GET /small/../oai/v1/models HTTP/1.1\r\nHost: r\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: r\r\n\r\n", 414),
        (b"GET /small/v1/models HTTP/1.1\r\nHost: r\r\n" + b"X-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
        (b"GET /small/v1/models HTTP/1.1\r\nHost: r\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
        (b"this is not http\r\n\r\n", 400),
    ],
)
def test_ambiguous_or_malformed_requests_are_refused_and_closed(
    relay, mock: MockProvider, request_bytes: bytes, status: int  # type: ignore[no-untyped-def]
) -> None:
    before = len(mock.requests)
    # A second, valid request is pipelined behind: it must never be parsed or forwarded.
    answer = raw(relay.port, request_bytes + GOOD)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1
    assert b"connection: close" in answer.lower()
    assert len(mock.requests) == before
    assert httpx.get(relay.url("/small/v1/models"), timeout=5).status_code == 200  # the worker still serves


def test_a_tls_client_on_the_plain_port_is_closed_with_a_log_line(relay) -> None:  # type: ignore[no-untyped-def]
    """An `https://` URL pointed at the plain listener: no HTTP answer it could not read, a clear log."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with context.wrap_socket(sock, server_hostname="relay.test") as tls:
                tls.recv(1)
    deadline = time.monotonic() + 5
    while "a TLS handshake on a plain HTTP listener" not in relay.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "a TLS handshake on a plain HTTP listener" in relay.logs()
    assert httpx.get(relay.url("/small/v1/models"), timeout=5).status_code == 200


def test_pipelined_requests_are_answered_in_order(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    requests = b"".join(
        b"POST /small/v1/echo HTTP/1.1\r\nHost: r\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        for body in (b"first", b"second-body", b"3")
    )
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        sock.sendall(requests)
        reader = ResponseReader(sock)  # the three answers may arrive in one read
        bodies = [reader.read()[1] for _ in range(3)]
    assert [b.split(b"\n")[1] for b in bodies] == [b"5", b"11", b"1"]
    assert bodies[0].split(b"\n")[0] == hashlib.sha256(b"first").hexdigest().encode()


def test_keep_alive_connection_serves_many_requests(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        for _ in range(20):
            sock.sendall(GOOD)
            head, body = read_response(sock)
            assert head.startswith(b"HTTP/1.1 200")
            assert b'"object":"list"' in body.replace(b" ", b"")


def test_expect_100_continue(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    head = (
        b"POST /oai/v1/echo HTTP/1.1\r\nHost: r\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
        b"Authorization: Bearer %s\r\n\r\n"
    )
    before = len(mock.requests)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        sock.sendall(head % b"wrong")
        response = sock.recv(65536)
        assert response.startswith(b"HTTP/1.1 401 "), response  # refused before the body was sent
        assert b"100 Continue" not in response
    assert len(mock.requests) == before
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        sock.sendall(head % b"relay-key")
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(b"body")
        final_head, body = read_response(sock)
        assert final_head.startswith(b"HTTP/1.1 200")
    assert body.split(b"\n")[1] == b"4"
    assert "expect" not in mock.last().headers


def test_large_chunked_upload_is_streamed_not_buffered(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    size = 48 * 1024 * 1024
    block = bytes(range(256)) * 256  # 64 KiB
    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)

    def body():  # type: ignore[no-untyped-def]
        for _ in range(size // len(block)):
            yield block

    worker = relay.worker_pids()[0]
    response = httpx.post(
        relay.url("/oai/v1/echo"), content=body(), headers={"authorization": "Bearer relay-key"}, timeout=60
    )
    assert response.status_code == 200
    assert response.text.split("\n") == [digest.hexdigest(), str(size)]
    assert mock.last().headers.get("transfer-encoding") == "chunked"
    peak_kib = _vm_hwm_kib(worker)
    assert peak_kib < 150 * 1024, f"worker peak RSS {peak_kib} KiB: the upload was held in memory"


def _vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_body_size_limit(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    before = len(mock.requests)
    response = httpx.post(relay.url("/small/v1/echo"), content=b"x" * 2000, timeout=5)
    assert response.status_code == 413
    assert len(mock.requests) == before

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"y" * 500

    # A chunked body has no length up front: the limit applies as it streams, the upstream request
    # is abandoned, and the client still gets a clean 413.
    response = httpx.post(relay.url("/small/v1/echo"), content=chunks(), timeout=5)
    assert response.status_code == 413
    assert "exceeds 1000 bytes" in response.json()["error"]["message"]


def test_host_routing(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(relay.url("/v1/models"), headers={"host": "api.hosted.test"}, timeout=5)
    assert response.status_code == 200
    assert mock.last().path == "/v1/models"
    assert mock.last().headers["host"] == f"127.0.0.1:{mock.port}"
    assert mock.last().headers["x-forwarded-host"] == "api.hosted.test"


def test_slow_request_head_gets_408(relay) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    answer = raw(relay.port, b"GET /small/v1/models HTTP/1.1\r\nHost: r\r\n", timeout=5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3


def test_client_forwarding_headers_are_rebuilt(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    httpx.get(
        relay.url("/small/v1/models"),
        headers={"x-forwarded-for": "6.6.6.6", "forwarded": "for=6.6.6.6", "x-real-ip": "6.6.6.6", "connection": "x-private", "x-private": "1", "keep-alive": "timeout=5"},
        timeout=5,
    )
    seen = mock.last().headers
    assert seen["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"  # forwarded_headers = "append", the default
    for gone in ("forwarded", "x-real-ip", "x-private", "keep-alive"):
        assert gone not in seen
