"""The admin listener's HTTP/1.1 server: small and strict, on the relay's own sans-IO HTTP/1.1 code.

One request per connection, answered with `Connection: close`. The head goes through the same
parser as the public listeners (`proto.h1.head_guard`, through `ServerConnection`), with tighter
size limits; a request body is read (admin requests have none worth reading) up to `MAX_BODY`, and
the whole request must arrive within `READ_TIMEOUT`, the answer leave within `WRITE_TIMEOUT`. At most
`MAX_CONNECTIONS` are served at once; more are closed at once. A handler's failure is answered 500
and logged: nothing here can end the supervisor.

`AdminListener` owns the listening socket: it binds the configured address (a failure is an error
line, and the relay serves on without it), and `follow` moves it when a reload changes the address.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from llmrelay.proto.errors import RequestRejected
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.proto.h1.server import CONTINUE, ServerConnection, ServerExchange
from llmrelay.proto.messages import Headers

log = logging.getLogger("supervisor")

LIMITS = HeadLimits(max_request_line=4096, max_header_bytes=16384, max_header_count=50)
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 32
RECEIVE_SIZE = 16384


@dataclass(frozen=True)
class AdminRequest:
    method: str
    path: str
    query: str
    headers: Headers  # names lower-cased

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


@dataclass(frozen=True)
class AdminResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_response(status: int, data: object, headers: list[tuple[bytes, bytes]] | None = None) -> AdminResponse:
    body = (json.dumps(data, indent=1) + "\n").encode()
    return AdminResponse(status, body, "application/json", headers or [])


def error_response(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> AdminResponse:
    return json_response(status, {"error": message}, headers)


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]


def response_head(response: AdminResponse) -> Headers:
    return [
        (b"content-type", response.content_type.encode("latin-1")),
        (b"content-length", str(len(response.body)).encode()),
        (b"cache-control", b"no-store"),
        *response.headers,
    ]


async def _feed(stream: trio.SocketStream, connection: ServerConnection) -> bool:
    """The next bytes the client sent, into the parser; False when it closed."""
    data = await stream.receive_some(RECEIVE_SIZE)
    if not data:
        return False
    connection.receive_data(data)
    return True


async def serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    """Read one request, answer it, close."""
    try:
        peer = stream.socket.getpeername()
        client = (str(peer[0]), int(peer[1]))
    except OSError:
        return
    connection = ServerConnection(LIMITS, "http", client, max_requests=1)
    exchange: ServerExchange | None = None
    try:
        with trio.fail_after(READ_TIMEOUT):
            head = connection.next_head()
            while head is None:
                if not await _feed(stream, connection):
                    return
                head = connection.next_head()
            exchange = ServerExchange(connection, head, close_after=True)
            if head.method == b"CONNECT" or head.websocket:
                raise RequestRejected(405, "method not allowed")
            if head.body_length is not None and head.body_length > MAX_BODY:
                raise RequestRejected(413, "request body too large")
            if exchange.continue_due():
                await stream.send_all(CONTINUE)
            size = 0
            while not exchange.body_complete:
                content = exchange.next_body()
                if content is None:
                    if not await _feed(stream, connection):
                        return
                    continue
                size += len(content)
                if size > MAX_BODY:
                    raise RequestRejected(413, "request body too large")
    except RequestRejected as exc:
        answer = error_response(exc.status, exc.message)
        if exchange is None:
            payload = connection.refusal(exc.status, response_head(answer), answer.body)
        else:
            payload = exchange.error_bytes(exc.status, response_head(answer), answer.body)
        await _send(stream, payload)
        return
    except trio.TooSlowError:
        return
    target = head.target.decode("latin-1")
    path, _, query = target.partition("?")
    request = AdminRequest(head.method.decode("latin-1"), path, query, head.headers)
    try:
        response = await handler(request)
    except Exception:
        log.exception("admin %s %s failed", request.method, path[:100])
        response = error_response(500, "internal error")
    exchange.start_response(response.status, response_head(response))
    await _send(stream, exchange.end_bytes(response.body))


async def _send(stream: trio.SocketStream, payload: bytes) -> None:
    with trio.move_on_after(WRITE_TIMEOUT):
        await stream.send_all(payload)
        await stream.send_eof()
        with trio.move_on_after(1.0):  # let the client close first (no RST on a request it is still sending)
            while await stream.receive_some(RECEIVE_SIZE):
                pass


async def accept_loop(
    listener: trio.SocketListener, handler: Handler, connections: trio.Nursery, limit: trio.CapacityLimiter
) -> None:
    """Accept until cancelled or closed; each connection in a task of `connections` (which outlives
    this loop: a listener that moves lets the requests it took finish), at most `limit` at once."""
    while True:
        try:
            stream = await listener.accept()
        except trio.ClosedResourceError:
            return
        except OSError as exc:  # EMFILE and the like: an expected state, not a reason to stop
            log.error("admin listener: accept failed: %s; pausing for 0.1 s", exc.strerror or exc)
            await trio.sleep(0.1)
            continue
        try:
            limit.acquire_on_behalf_of_nowait(stream)
        except trio.WouldBlock:
            connections.start_soon(_close, stream)
            continue
        connections.start_soon(_serve_limited, stream, handler, limit)


async def _close(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True):
        await stream.aclose()


async def _serve_limited(stream: trio.SocketStream, handler: Handler, limit: trio.CapacityLimiter) -> None:
    try:
        await serve_connection(stream, handler)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        limit.release_on_behalf_of(stream)
        await _close(stream)


def bind(host: str, port: int) -> trio.SocketListener:
    """A listening socket on (host, port); OSError when it cannot be bound."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"no address for {host}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def listener_url(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass(frozen=True)
class Address:
    host: str
    port: int


class AdminListener:
    """The admin listener's socket and accept loop, moved to a new address when the config asks.

    `run` lives in the supervisor's outer nursery (up to its exit, so that metrics and status stay
    reachable while workers roll, crash or drain); `follow` is called with each applied config's
    address (None: disabled) and returns at once.
    """

    def __init__(self, handler: Handler, on_bound: Callable[[str], None]) -> None:
        self._handler = handler
        self._on_bound = on_bound  # the effective URL ("" when not listening), for the status file
        self._wanted: Address | None = None
        self._bound: Address | None = None  # the last address tried
        self._serving: Address | None = None  # the address of the socket being served
        self._listener: trio.SocketListener | None = None
        self._scope: trio.CancelScope | None = None
        self._changed = trio.Event()
        self._limit = trio.CapacityLimiter(MAX_CONNECTIONS)
        self.url = ""

    def follow(self, address: Address | None) -> None:
        if address != self._wanted:
            self._wanted = address
            self._changed.set()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    wanted = self._wanted
                    if wanted != self._bound:
                        self._move(nursery, wanted)
                    await self._changed.wait()
                    self._changed = trio.Event()
        finally:
            self._stop()

    def _move(self, nursery: trio.Nursery, wanted: Address | None) -> None:
        self._bound = wanted
        if wanted is None:
            self._stop()
            return
        if wanted == self._serving:  # (back to the address still served after a failed move)
            return
        try:
            listener = bind(wanted.host, wanted.port)
        except OSError as exc:
            where = f"{wanted.host}:{wanted.port}"
            still = f"; still on {self.url}" if self.url else "; serving without it"
            log.error("admin listener: cannot listen on %s: %s%s", where, exc.strerror or exc, still)
            return
        self._stop()
        self._serving, self._listener = wanted, listener
        self.url = listener_url(listener)
        scope = self._scope = trio.CancelScope()
        nursery.start_soon(self._accept, listener, nursery, scope)
        log.info("admin listener on %s", self.url)
        self._on_bound(self.url)

    def _stop(self) -> None:
        """Close the listening socket now (so that nothing more is queued on it); requests taken finish."""
        if self._scope is None or self._listener is None:
            return
        self._scope.cancel()
        self._listener.socket.close()
        log.info("admin listener on %s closed", self.url)
        self._scope = self._listener = self._serving = None
        self.url = ""
        self._on_bound("")

    async def _accept(self, listener: trio.SocketListener, connections: trio.Nursery, scope: trio.CancelScope) -> None:
        with scope:
            await accept_loop(listener, self._handler, connections, self._limit)
