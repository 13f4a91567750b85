"""TlsTransport on real loopback TCP sockets: handshakes on both sides and ALPN, bulk transfers with
backpressure, every kind of end (close_notify, a bare close, a reset, our own close() under a waiting
task), cancellation, certificate verification, and interop with the stdlib's ssl sockets and with
trio.SSLStream. Certificates from trustme."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio
import trustme

from llmrelay.io.timers import TimerReason, TimerWheel, wheel
from llmrelay.io.tls_transport import TlsTransport
from llmrelay.io.transport import BrokenTransport

MiB = 1024 * 1024


class Certs:
    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("localhost", "127.0.0.1")

    def server(self, alpn: list[str] | None = None, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_cert.configure_cert(context)
        if alpn:
            context.set_alpn_protocols(alpn)
        if maximum is not None:
            context.maximum_version = maximum
        return context

    def client(self, alpn: list[str] | None = None, ca: trustme.CA | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        (ca or self.ca).configure_trust(context)
        if alpn:
            context.set_alpn_protocols(alpn)
        return context


@pytest.fixture(scope="module")
def certs() -> Certs:
    return Certs()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of loopback TCP sockets (client, server)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    yield client, server
    client.close()
    server.close()


async def both(*calls: Callable[[], Awaitable[object]]) -> None:
    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(call)


async def connected(
    certs: Certs,
    pair: tuple[socket.socket, socket.socket],
    server_alpn: list[str] | None = None,
    client_alpn: list[str] | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> tuple[TlsTransport, TlsTransport]:
    client = TlsTransport(pair[0], certs.client(client_alpn), server_hostname="localhost")
    server = TlsTransport(pair[1], certs.server(server_alpn, maximum), server_side=True)
    with trio.fail_after(5):
        await both(client.handshake, server.handshake)
    return client, server


async def receive_exactly(transport: TlsTransport, size: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < size:
        data = await transport.receive()
        assert data, f"end of stream after {got} of {size} bytes"
        parts.append(data)
        got += len(data)
    return b"".join(parts)


# -- handshakes and ALPN ------------------------------------------------------------------------------
@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2])
async def test_handshake_both_sides_and_a_request(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket], maximum: ssl.TLSVersion | None) -> None:
    client, server = await connected(certs, tcp_pair, maximum=maximum)
    assert client.ssl_object.version() == ("TLSv1.2" if maximum else "TLSv1.3")
    await client.send_all(b"GET / HTTP/1.1\r\n\r\n")
    assert await server.receive() == b"GET / HTTP/1.1\r\n\r\n"
    await server.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")  # (TLS 1.3: the session tickets go first)
    assert await client.receive() == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert not client.input_pending() and not server.input_pending()
    client.close()
    server.close()


@pytest.mark.parametrize(
    ("server_alpn", "client_alpn", "selected"),
    [(["h2", "http/1.1"], ["h2", "http/1.1"], "h2"), (["h2", "http/1.1"], ["http/1.1"], "http/1.1"), (["h2", "http/1.1"], None, None)],
)
async def test_alpn(
    certs: Certs, tcp_pair: tuple[socket.socket, socket.socket], server_alpn: list[str], client_alpn: list[str] | None, selected: str | None
) -> None:
    client, server = await connected(certs, tcp_pair, server_alpn, client_alpn)
    assert server.selected_alpn_protocol() == selected
    assert client.selected_alpn_protocol() == selected


# -- bulk, both ways, with backpressure ----------------------------------------------------------------
async def test_ten_mib_both_ways_at_once(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = await connected(certs, tcp_pair)
    up, down = os.urandom(10 * MiB), os.urandom(10 * MiB)
    got: dict[str, bytes] = {}

    async def read(name: str, transport: TlsTransport, size: int) -> None:
        got[name] = await receive_exactly(transport, size)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, up)
            nursery.start_soon(server.send_all, down)
            nursery.start_soon(read, "up", server, len(up))
            nursery.start_soon(read, "down", client, len(down))
    assert hashlib.sha256(got["up"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got["down"]).digest() == hashlib.sha256(down).digest()


async def test_a_send_waits_for_a_slow_reader_with_its_timer_armed(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = await connected(certs, tcp_pair)
    timer = TimerWheel().timer(lambda _reason: None)  # (never swept: only its state is looked at)
    data = os.urandom(10 * MiB)
    sent = trio.Event()

    async def send() -> None:
        await server.send_all(data, timer, 30.0)
        sent.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.sleep(0.2)
            assert not sent.is_set()  # the kernel's buffers are full: the send waits for the reader
            assert timer.reason is TimerReason.WRITE and timer.deadline != float("inf")
            received = await receive_exactly(client, len(data))
    assert received == data
    assert timer.deadline == float("inf")  # disarmed when the send finished


async def test_the_write_timer_breaks_a_stuck_send(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    _client, server = await connected(certs, tcp_pair)
    timer = wheel().timer(lambda _reason: server.close())
    with trio.fail_after(10), pytest.raises(BrokenTransport):
        await server.send_all(os.urandom(10 * MiB), timer, 0.3)
    assert timer.fired is TimerReason.WRITE



async def test_send_now_sends_what_the_kernel_takes(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = await connected(certs, tcp_pair)
    assert server.send_now(b"HTTP/1.1 204 No Content\r\n\r\n")  # (TLS 1.3: the tickets go first)
    assert server.send_now(b"")
    with trio.fail_after(5):
        assert await client.receive() == b"HTTP/1.1 204 No Content\r\n\r\n"


async def test_send_now_leaves_the_rest_to_finish_send(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = await connected(certs, tcp_pair)
    timer = TimerWheel().timer(lambda _reason: None)
    first, second = os.urandom(10 * MiB), os.urandom(MiB)
    assert not server.send_now(first)  # nobody reads: the kernel's buffers fill up
    finished = trio.Event()

    async def finish() -> None:
        await server.finish_send(timer, 30.0)
        finished.set()
        await server.send_all(second)  # (after the rest of the first: the record stream stays whole)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(finish)
            await trio.sleep(0.2)
            assert not finished.is_set()
            assert timer.reason is TimerReason.WRITE and timer.deadline != float("inf")
            received = await receive_exactly(client, len(first) + len(second))
    assert hashlib.sha256(received).digest() == hashlib.sha256(first + second).digest()
    assert timer.deadline == float("inf")


async def test_send_now_on_a_reset_connection(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, _server = await connected(certs, tcp_pair)
    await client.send_all(b"unread")  # unread input, and linger 0: the close is a reset
    tcp_pair[1].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.sleep(0.05)
    tcp_pair[1].close()
    await trio.sleep(0.05)
    with pytest.raises(BrokenTransport):
        for _ in range(100):
            client.send_now(b"x" * 1000)
            await trio.sleep(0.01)


# -- ends ---------------------------------------------------------------------------------------------
async def test_close_notify_is_the_end_even_while_the_socket_stays_open(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(tcp_pair[0])), certs.client(), server_hostname="localhost"
    )
    server = TlsTransport(tcp_pair[1], certs.server(), server_side=True)
    with trio.fail_after(5):
        await both(client.do_handshake, server.handshake)
        await client.send_all(b"last words")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.unwrap)  # close_notify, then waits for ours: the socket stays open
            assert await server.receive() == b"last words"
            assert await server.receive() == b""
            assert await server.receive() == b""  # (and stays so, without reading the socket)
            server.close()  # answers with our close_notify: unwrap() returns


async def test_our_close_sends_close_notify(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server = TlsTransport(tcp_pair[1], certs.server(), server_side=True)

    def client() -> bytes:
        tcp_pair[0].settimeout(10)
        # suppress_ragged_eofs=False: an end without close_notify would raise SSLEOFError here
        with certs.client().wrap_socket(tcp_pair[0], server_hostname="localhost", suppress_ragged_eofs=False) as tls:
            tls.sendall(b"hi")
            received = b""
            while chunk := tls.recv(100):
                received += chunk
            return received

    async def serve() -> None:
        await server.handshake()
        assert await server.receive() == b"hi"
        await server.send_all(b"bye")
        server.close()
        assert server.closed

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            assert await trio.to_thread.run_sync(client) == b"bye"


async def test_a_close_without_close_notify_is_an_end_not_an_error(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, _server = await connected(certs, tcp_pair)
    tcp_pair[1].close()  # the raw socket: no close_notify (what many HTTPS clients do)
    with trio.fail_after(5):
        assert await client.receive() == b""


async def test_a_reset_peer(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, _server = await connected(certs, tcp_pair)
    await client.send_all(b"unread")  # unread input, and linger 0: the close is a reset
    tcp_pair[1].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.sleep(0.05)
    tcp_pair[1].close()
    with trio.fail_after(5):
        assert await client.receive() == b""
        with pytest.raises(BrokenTransport):
            for _ in range(100):
                await client.send_all(b"x" * 1000)
                await trio.sleep(0.01)


async def test_close_wakes_a_waiting_receive(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, _server = await connected(certs, tcp_pair)
    got: list[bytes] = []

    async def receive() -> None:
        got.append(await client.receive())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.sleep(0.05)
            client.close()
    assert got == [b""]


async def test_close_wakes_a_waiting_send(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, _server = await connected(certs, tcp_pair)
    failed: list[BaseException] = []

    async def send() -> None:
        try:
            await client.send_all(os.urandom(10 * MiB))  # nobody reads: it waits
        except BrokenTransport as exc:
            failed.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.sleep(0.1)
            client.close()
    assert len(failed) == 1


# -- cancellation -------------------------------------------------------------------------------------
class BioPeer:
    """The other side driven by hand (an SSLObject over memory BIOs), so a test can put half a TLS
    record on the wire."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    async def handshake(self) -> None:
        while True:
            try:
                self.ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._send(self.outgoing.read())
                self.incoming.write(await self.sock.recv(65536))
        await self._send(self.outgoing.read())

    async def _send(self, data: bytes) -> None:
        while data:
            sent = await self.sock.send(data)
            data = data[sent:]

    def encrypt(self, data: bytes) -> bytes:
        self.ssl.write(data)
        return self.outgoing.read()


async def test_a_cancelled_receive_loses_nothing(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client = TlsTransport(tcp_pair[0], certs.client(), server_hostname="localhost")
    peer = BioPeer(tcp_pair[1], certs.server())
    with trio.fail_after(5):
        await both(client.handshake, peer.handshake)
        record = peer.encrypt(b"a whole message")
        await peer._send(record[:10])  # half a record: the receive takes it and waits for more
        with trio.move_on_after(0.1) as scope:
            await client.receive()
        assert scope.cancelled_caught
        await peer._send(record[10:])
        assert await client.receive() == b"a whole message"


async def test_a_cancelled_departure_style_wait_then_a_read(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = await connected(certs, tcp_pair)
    with trio.move_on_after(0.05) as scope:
        await server.receive_after_wait()
    assert scope.cancelled_caught
    await client.send_all(b"pipelined")
    with trio.fail_after(5):
        assert await server.receive_after_wait() == b"pipelined"


async def test_input_pending(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = await connected(certs, tcp_pair)
    assert not server.input_pending()
    await client.send_all(b"one")
    await client.send_all(b"two")
    await trio.lowlevel.wait_readable(server.sock)
    await trio.sleep(0.05)
    assert server.input_pending()
    assert await receive_exactly(server, 6) == b"onetwo"
    assert not server.input_pending()
    client.close()
    await trio.sleep(0.05)
    assert server.input_pending()  # the close_notify (and the end of stream) wait to be read



async def test_session_tickets_are_not_input(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    """A TLS 1.3 server sends its session tickets once the handshake is done, here before the client
    reads anything (some servers send them after their first answer): an idle pooled connection with
    only tickets unread is clean, and stays so."""
    client = TlsTransport(tcp_pair[0], certs.client(), server_hostname="localhost")
    peer = BioPeer(tcp_pair[1], certs.server())
    with trio.fail_after(5):
        await both(client.handshake, peer.handshake)
        assert client.ssl_object.version() == "TLSv1.3"
        await trio.lowlevel.wait_readable(client.sock)  # the tickets are in the kernel
        assert not client.input_pending()
        assert not client.input_pending()
        assert not socket_has_bytes(tcp_pair[0])  # they went through the TLS object
        await peer._send(peer.encrypt(b"HTTP/1.1 200 OK\r\n"))
        await trio.lowlevel.wait_readable(client.sock)
        assert client.input_pending()
        assert client.input_pending()  # (asking again keeps the data)
        assert await client.receive_after_wait() == b"HTTP/1.1 200 OK\r\n"  # (held: no wait)
        assert not client.input_pending()


async def test_input_pending_keeps_what_it_decrypts_in_order(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client = TlsTransport(tcp_pair[0], certs.client(), server_hostname="localhost")
    peer = BioPeer(tcp_pair[1], certs.server())
    with trio.fail_after(5):
        await both(client.handshake, peer.handshake)
        await trio.lowlevel.wait_readable(client.sock)
        assert not client.input_pending()  # (the session tickets: the socket is empty after)
        records = peer.encrypt(b"one") + peer.encrypt(b"two")
        cut = len(records) - 5
        await peer._send(records[:cut])  # "one" whole, "two" in part
        await wait_for_bytes(tcp_pair[0], cut)
        assert client.input_pending()
        await peer._send(records[cut:])
        assert await receive_exactly(client, 6) == b"onetwo"
        record = peer.encrypt(b"three")
        await peer._send(record[:10])  # only part of a record: nothing to read yet
        await wait_for_bytes(tcp_pair[0], 10)
        assert not client.input_pending()
        await peer._send(record[10:])
        await trio.lowlevel.wait_readable(client.sock)
        assert client.input_pending()
        assert await client.receive() == b"three"


@pytest.mark.parametrize("tickets_read", [True, False])
@pytest.mark.parametrize("end", ["close_notify", "close", "reset"])
async def test_input_pending_sees_every_end(
    certs: Certs, tcp_pair: tuple[socket.socket, socket.socket], end: str, tickets_read: bool
) -> None:
    client = TlsTransport(tcp_pair[0], certs.client(), server_hostname="localhost")
    peer = BioPeer(tcp_pair[1], certs.server())
    with trio.fail_after(5):
        await both(client.handshake, peer.handshake)
        if tickets_read:
            await trio.lowlevel.wait_readable(client.sock)
            assert not client.input_pending()
        # else: the tickets and the end wait in the kernel together; the end must not hide behind them
        if end == "close_notify":
            try:
                peer.ssl.unwrap()
            except ssl.SSLWantReadError:
                pass
            await peer._send(peer.outgoing.read())
        else:
            if end == "reset":
                await client.send_all(b"unread")  # unread input, and linger 0: the close is a reset
                await trio.sleep(0.05)
                tcp_pair[1].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.sock.close()
        await trio.lowlevel.wait_readable(client.sock)
        await trio.sleep(0.05)  # (the end may follow the tickets by a moment)
        assert client.input_pending()
        assert client.input_pending()
        assert await client.receive() == b""
        assert await client.receive() == b""


def socket_has_bytes(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


async def wait_for_bytes(sock: socket.socket, count: int) -> None:
    while len(sock.recv(count, socket.MSG_PEEK | socket.MSG_DONTWAIT) if socket_has_bytes(sock) else b"") < count:
        await trio.sleep(0.005)


# -- verification (client side) ----------------------------------------------------------------------
async def handshake_failures(client: TlsTransport, server: TlsTransport) -> tuple[BaseException | None, BaseException | None]:
    errors: list[BaseException | None] = [None, None]

    async def run(index: int, transport: TlsTransport) -> None:
        try:
            await transport.handshake()
        except (ssl.SSLError, BrokenTransport) as exc:
            errors[index] = exc
            transport.close()

    with trio.fail_after(5):
        await both(lambda: run(0, client), lambda: run(1, server))
    return errors[0], errors[1]


async def test_wrong_ca(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client = TlsTransport(tcp_pair[0], certs.client(ca=trustme.CA()), server_hostname="localhost")
    server = TlsTransport(tcp_pair[1], certs.server(), server_side=True)
    client_error, server_error = await handshake_failures(client, server)
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert "certificate verify failed" in str(client_error)
    assert isinstance(server_error, ssl.SSLError)  # the client's alert reached it
    assert "UNKNOWN_CA" in (server_error.reason or "").upper()


async def test_wrong_hostname(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client = TlsTransport(tcp_pair[0], certs.client(), server_hostname="api.example.com")
    server = TlsTransport(tcp_pair[1], certs.server(), server_side=True)
    client_error, _server_error = await handshake_failures(client, server)
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert "api.example.com" in str(client_error) or "Hostname mismatch" in str(client_error)


async def test_a_peer_that_leaves_mid_handshake(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server = TlsTransport(tcp_pair[1], certs.server(), server_side=True)
    tcp_pair[0].sendall(b"\x16\x03\x01\x00\x05hel")  # the start of a ClientHello record, then gone
    tcp_pair[0].close()
    with trio.fail_after(5), pytest.raises(ssl.SSLError):
        await server.handshake()


async def test_close_during_the_handshake(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server = TlsTransport(tcp_pair[1], certs.server(), server_side=True)
    failed: list[BaseException] = []

    async def handshake() -> None:
        try:
            await server.handshake()
        except BrokenTransport as exc:
            failed.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake)
            await trio.sleep(0.05)
            server.close()
    assert len(failed) == 1


# -- interop ------------------------------------------------------------------------------------------
async def test_interop_stdlib_client(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server = TlsTransport(tcp_pair[1], certs.server(["h2", "http/1.1"]), server_side=True)
    body = os.urandom(3 * MiB)

    def client() -> bytes:
        tcp_pair[0].settimeout(10)
        with certs.client(["http/1.1"]).wrap_socket(tcp_pair[0], server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            tls.sendall(body)
            received = b""
            while len(received) < len(body):
                received += tls.recv(65536)
            return received

    async def serve() -> None:
        await server.handshake()
        await server.send_all(await receive_exactly(server, len(body)))  # echo

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            echoed = await trio.to_thread.run_sync(client)
    assert echoed == body


async def test_interop_stdlib_server(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client = TlsTransport(tcp_pair[0], certs.client(), server_hostname="127.0.0.1")
    body = os.urandom(3 * MiB)

    def server() -> None:
        tcp_pair[1].settimeout(10)
        with certs.server().wrap_socket(tcp_pair[1], server_side=True) as tls:
            received = b""
            while len(received) < len(body):
                received += tls.recv(65536)
            tls.sendall(received)
            tls.unwrap()  # close_notify both ways

    async def talk() -> None:
        await client.handshake()
        await client.send_all(body)
        assert await receive_exactly(client, len(body)) == body
        assert await client.receive() == b""
        client.close()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, server)
            await talk()


@pytest.mark.parametrize("ours", ["server", "client"])
async def test_interop_trio_ssl_stream(certs: Certs, tcp_pair: tuple[socket.socket, socket.socket], ours: str) -> None:
    client_sock, server_sock = tcp_pair
    theirs_sock = trio.SocketStream(trio.socket.from_stdlib_socket(client_sock if ours == "server" else server_sock))
    if ours == "server":
        transport = TlsTransport(server_sock, certs.server(["h2"]), server_side=True)
        stream = trio.SSLStream(theirs_sock, certs.client(["h2"]), server_hostname="localhost", https_compatible=True)
    else:
        transport = TlsTransport(client_sock, certs.client(["h2"]), server_hostname="localhost")
        stream = trio.SSLStream(theirs_sock, certs.server(["h2"]), server_side=True, https_compatible=True)
    body = os.urandom(2 * MiB)

    async def theirs() -> None:
        await stream.do_handshake()
        received = b""
        while len(received) < len(body):
            received += await stream.receive_some()
        await stream.send_all(received)
        await stream.aclose()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(theirs)
            await transport.handshake()
            assert transport.selected_alpn_protocol() == "h2"
            await transport.send_all(body)
            assert await receive_exactly(transport, len(body)) == body
            assert await transport.receive() == b""
            transport.close()
