"""The HTTP/1.1 server side of one connection, sans-IO: bytes in, request heads and body bytes out;
response heads and bodies in, bytes to send out.

`ServerConnection` is the connection's state machine (`ConnectionState`, moved by `ConnectionEvent`s
through `CONNECTION_TRANSITIONS`): it waits for a request head, serves one exchange at a time, and
then either takes the next request (keep-alive; bytes already received are the next pipelined
request), reads and drops a request body the response did not need, or closes. `ServerExchange` is
one request on it: the request body (with `100 Continue` owed to a client that asked for it) and the
response, framed by the one `framing.body_framing` rule, with its phases checked by
`messages.TRANSITIONS`. The trio driver (`llmrelay.server.h1`) adds only the waiting, the timers and
the sends.
"""

from __future__ import annotations

import enum
import re
from operator import itemgetter

from llmrelay.proto.errors import InvalidResponseHead, RequestRejected
from llmrelay.proto.h1.fields import connection_close_requested, is_token, serialize_head, status_line
from llmrelay.proto.h1.framing import (
    CHUNKED,
    LAST_CHUNK,
    LENGTH,
    NO_BODY,
    RESPONSE,
    UNTIL_CLOSE,
    BodyDecoder,
    FramingError,
    body_framing,
    encode_chunk,
)
from llmrelay.proto.h1.head_guard import HeadLimits, find_head_end, parse_request_head, request_line_parts
from llmrelay.proto.messages import TRANSITIONS, Headers, RequestHead, ResponseEvent, ResponsePhase, advance

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
DISCARD_LIMIT = 1024 * 1024  # an unread request body larger than this is not read to keep the connection

_PENDING, _DONE, _ABORTED = ResponsePhase.PENDING, ResponsePhase.DONE, ResponsePhase.ABORTED
_HEAD, _END, _ABORT, _BODY = ResponseEvent.HEAD, ResponseEvent.END, ResponseEvent.ABORT, ResponseEvent.BODY
_UNSAFE_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NOT_TRAILERS = {b"content-length", b"transfer-encoding", b"host", b"connection", b"te", b"trailer"}
_BODY_AFTER = {phase: TRANSITIONS.get((phase, ResponseEvent.BODY)) for phase in ResponsePhase}



_NAME = itemgetter(0)


def _values(headers: Headers, names: list[bytes], name: bytes) -> list[bytes]:
    """The values of the fields called `name`, in order (`names`: the names of `headers`)."""
    count = names.count(name)
    if not count:
        return []
    if count == 1:
        return [headers[names.index(name)][1]]
    return [value for field, value in headers if field == name]

class ConnectionState(enum.IntEnum):
    AWAITING_HEAD = 0  # between requests: idle, or part of a head received
    EXCHANGE = 1  # a request is being served
    DISCARDING = 2  # its response ended before its body was read: the body is read and dropped
    CLOSED = 3


class ConnectionEvent(enum.IntEnum):
    HEAD = 0  # a whole request head was parsed
    REUSE = 1  # the exchange ended cleanly and the connection can carry another request
    DISCARD = 2  # it ended cleanly, but the request body is still unread
    DISCARDED = 3  # that body has been read to its end
    CLOSE = 4  # a refusal, a client gone, an aborted response, `Connection: close`, a full stop


CONNECTION_TRANSITIONS: dict[tuple[ConnectionState, ConnectionEvent], ConnectionState] = {
    (ConnectionState.AWAITING_HEAD, ConnectionEvent.HEAD): ConnectionState.EXCHANGE,
    (ConnectionState.AWAITING_HEAD, ConnectionEvent.CLOSE): ConnectionState.CLOSED,
    (ConnectionState.EXCHANGE, ConnectionEvent.REUSE): ConnectionState.AWAITING_HEAD,
    (ConnectionState.EXCHANGE, ConnectionEvent.DISCARD): ConnectionState.DISCARDING,
    (ConnectionState.EXCHANGE, ConnectionEvent.CLOSE): ConnectionState.CLOSED,
    (ConnectionState.DISCARDING, ConnectionEvent.DISCARDED): ConnectionState.AWAITING_HEAD,
    (ConnectionState.DISCARDING, ConnectionEvent.CLOSE): ConnectionState.CLOSED,
    (ConnectionState.CLOSED, ConnectionEvent.CLOSE): ConnectionState.CLOSED,
}


_AWAITING_HEAD, _EXCHANGE = ConnectionState.AWAITING_HEAD, ConnectionState.EXCHANGE
assert CONNECTION_TRANSITIONS[_EXCHANGE, ConnectionEvent.REUSE] is _AWAITING_HEAD
assert CONNECTION_TRANSITIONS[_AWAITING_HEAD, ConnectionEvent.HEAD] is _EXCHANGE


class InvalidTransition(RuntimeError):
    pass


class ServerConnection:
    """One client connection: the bytes received and not yet used, and where it stands."""

    __slots__ = ("limits", "scheme", "client", "max_requests", "state", "served", "buffer")

    def __init__(self, limits: HeadLimits, scheme: str, client: tuple[str, int], max_requests: int) -> None:
        self.limits = limits
        self.scheme = scheme
        self.client = client
        self.max_requests = max_requests
        self.state = ConnectionState.AWAITING_HEAD
        self.served = 0
        self.buffer = b""  # received, not yet used: a head in the making, body bytes, the next request

    def _move(self, event: ConnectionEvent) -> ConnectionState:
        try:
            state = CONNECTION_TRANSITIONS[self.state, event]
        except KeyError:
            raise InvalidTransition(f"a connection cannot take {event.name} while {self.state.name}") from None
        self.state = state
        return state

    # -- bytes in ---------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data

    def put_back(self, data: bytes) -> None:
        self.buffer = data + self.buffer if self.buffer else data

    def has_input(self) -> bool:
        """Whether bytes of a next request are here (blank lines between requests do not count)."""
        buffer = self.buffer
        if buffer[:1] in (b"\r", b"\n"):
            buffer = self.buffer = buffer.lstrip(b"\r\n")
        return bool(buffer)

    # -- request heads ----------------------------------------------------------------------------
    def next_head(self) -> RequestHead | None:
        """The next request's head once it is here whole (None: more bytes are needed).

        Raises RequestRejected for a head that is malformed, ambiguous or over a limit, even before
        it is complete when its prefix already says so; the connection is then to be closed after
        the refusal (`refusal()`).
        """
        buffer = self.buffer
        if buffer[:1] in (b"\r", b"\n"):
            buffer = self.buffer = buffer.lstrip(b"\r\n")
        end = find_head_end(buffer, self.limits)
        if end < 0:
            return None
        head = parse_request_head(buffer[:end], self.limits, self.scheme, self.client)
        # The move comes before the head is taken: an illegal call changes nothing.
        if self.state is _AWAITING_HEAD:  # (the usual move, without the table lookup's call)
            self.state = _EXCHANGE
        else:
            self._move(ConnectionEvent.HEAD)
        self.buffer = buffer[end:]
        self.served += 1
        return head

    def last_request_line(self) -> tuple[bytes, bytes]:
        """Method and target of the head being received (for the log line of a refusal)."""
        return request_line_parts(self.buffer)

    def refusal(self, status: int, headers: Headers, body: bytes) -> bytes:
        """The bytes of an error answered by the server itself; the connection closes after them."""
        self._move(ConnectionEvent.CLOSE)
        return serialize_head(status_line(status), [*headers, (b"connection", b"close")]) + body

    # -- between exchanges ------------------------------------------------------------------------
    def finish(self, exchange: ServerExchange, closing: bool) -> ConnectionState:
        """After a response: AWAITING_HEAD (keep-alive), DISCARDING (read and drop the rest of the
        request body first) or CLOSED. `closing`: the transport is gone or the server stops."""
        if closing or exchange.client_gone or exchange.close_after or exchange.phase is not _DONE:
            return self._move(ConnectionEvent.CLOSE)
        if not exchange.body_complete:
            return self._move(ConnectionEvent.DISCARD)
        if self.state is _EXCHANGE:  # (the usual move, without the table lookup's call)
            self.state = _AWAITING_HEAD
            return _AWAITING_HEAD
        return self._move(ConnectionEvent.REUSE)

    def discarded(self, complete: bool) -> ConnectionState:
        """The unread body was read to its end (`complete`), or could not be (too large, malformed,
        client gone)."""
        return self._move(ConnectionEvent.DISCARDED if complete else ConnectionEvent.CLOSE)

    def close(self) -> None:
        self._move(ConnectionEvent.CLOSE)


class ServerExchange:
    """One request on a `ServerConnection` and the framing of its response."""

    __slots__ = (
        "connection",
        "head",
        "phase",
        "close_after",
        "body_complete",
        "client_gone",
        "discarded",
        "sends",
        "_decoder",
        "_continue_sent",
        "_pending",
        "_framing",
        "_remaining",
    )

    def __init__(self, connection: ServerConnection, head: RequestHead, close_after: bool = False) -> None:
        self.connection = connection
        self.head = head
        self.phase = _PENDING
        self.close_after = close_after or not head.keep_alive or connection.served >= connection.max_requests
        self.client_gone = False
        if head.body_length is None:
            self._decoder = BodyDecoder(CHUNKED)
        else:
            self._decoder = BodyDecoder(LENGTH, head.body_length)
        self.body_complete = self._decoder.done
        self.discarded = 0  # body bytes read and dropped after the response
        self.sends = 0  # body sends so far (a response that keeps sending shows the client is there)
        self._continue_sent = False
        self._pending = b""  # the response head, until body bytes can go with it
        self._framing = NO_BODY
        self._remaining = 0

    def close_when_done(self) -> None:
        self.close_after = True

    # -- request body -----------------------------------------------------------------------------
    def continue_due(self) -> bool:
        """Whether `100 Continue` is owed now: the client asked for it, its body is wanted, and no
        response has begun. True once; the caller sends `CONTINUE`."""
        if self.head.expect_continue and not self._continue_sent and self.phase is _PENDING:
            self._continue_sent = True
            return True
        return False

    def next_body(self) -> bytes | None:
        """Body content from the bytes received so far: the content (b"" at the end of the body, then
        `body_complete` is True), or None when more bytes are needed. Bytes past the end of the body
        stay with the connection (the next pipelined request)."""
        if self.body_complete:
            return b""
        connection = self.connection
        data = connection.buffer
        if not data:
            return None
        connection.buffer = b""
        decoder = self._decoder
        try:
            content = decoder.feed(data)
        except FramingError as exc:
            raise RequestRejected(400, f"malformed request body: {exc}") from None
        if decoder.done:
            if decoder.leftover:
                connection.put_back(decoder.leftover)
                decoder.leftover = b""
            self.body_complete = True
            return content
        return content or None

    def discard_body(self) -> bool | None:
        """Drop the request body bytes received so far (the response did not need them): True once
        the body is complete, False when more than DISCARD_LIMIT bytes would have to be read (the
        connection is not worth it), None while more bytes are needed."""
        while True:
            content = self.next_body()
            if self.body_complete:
                return True
            if content is None:
                return None if self.discarded <= DISCARD_LIMIT else False
            self.discarded += len(content)
            if self.discarded > DISCARD_LIMIT:
                return False

    # -- response ---------------------------------------------------------------------------------
    def start_response(self, status: int, headers: Headers) -> None:
        """Frame the response head (it waits to leave with the first body bytes: `take_pending`).

        Raises InvalidResponseHead when the head cannot be relayed as it is (an informational status,
        ambiguous framing); InvalidPhase for a second head.
        """
        phase = advance(self.phase, _HEAD)
        line = status_line(status)
        names = list(map(_NAME, headers))  # (the three fields that matter are found by C code)
        lengths = _values(headers, names, b"content-length")
        codings = _values(headers, names, b"transfer-encoding")
        connection = _values(headers, names, b"connection") or None
        try:
            framing, length = body_framing(RESPONSE, self.head.method, status, lengths, codings)
        except FramingError as exc:
            raise InvalidResponseHead(f"response head: {exc}") from None
        http10 = self.head.http_version == b"1.0"
        if framing == LENGTH:
            self._remaining = length
        elif framing == CHUNKED and http10:
            # An HTTP/1.0 client knows no transfer coding (RFC 9112 section 6.1): the body goes as it
            # is, delimited by the close.
            framing = UNTIL_CLOSE
            headers = [(name, value) for name, value in headers if name != b"transfer-encoding"]
            self.close_after = True
        elif framing == UNTIL_CLOSE:
            if http10:
                self.close_after = True
            else:
                framing = CHUNKED
                headers = [*headers, (b"transfer-encoding", b"chunked")]
        close_said = connection is not None and any(connection_close_requested(value) for value in connection)
        if close_said:
            self.close_after = True  # the handler's own `Connection: close` is kept
        elif self.close_after:
            if connection is not None:  # (a keep-alive the connection will not honour)
                headers = [(name, value) for name, value in headers if name != b"connection"]
            headers = [*headers, (b"connection", b"close")]
        self._framing = framing
        self.phase = phase
        self._pending = serialize_head(line, headers)

    def take_pending(self) -> bytes:
        """The response head not sent yet (b"" when none waits)."""
        pending = self._pending
        self._pending = b""
        return pending

    def _frame(self, data: bytes) -> bytes:
        framing = self._framing
        if framing == CHUNKED:
            return encode_chunk(data)
        if framing == LENGTH:
            if len(data) > self._remaining:
                raise InvalidResponseHead("response body longer than its Content-Length")
            self._remaining -= len(data)
            return data
        if framing == UNTIL_CLOSE:
            return data
        return b""  # HEAD, 204, 304: no body on the wire

    def body_bytes(self, data: bytes) -> bytes:
        """What to send for body bytes `data` (with the response head when it still waits)."""
        if _BODY_AFTER[self.phase] is None:  # (the table's answer for BODY, looked up once per phase)
            advance(self.phase, _BODY)  # raises: a body before the head or after the end
        if not data:
            return b""
        payload = b"%x\r\n%b\r\n" % (len(data), data) if self._framing == CHUNKED else self._frame(data)
        if self._pending:
            payload = self._pending + payload
            self._pending = b""
        self.sends += 1
        return payload

    def end_bytes(self, data: bytes = b"") -> bytes:
        """What to send to end the response, with `data` as its last body bytes."""
        phase = advance(self.phase, _END)  # raises before anything is framed
        payload = self._frame(data) if data else b""
        if self._framing == CHUNKED:
            payload += LAST_CHUNK
        elif self._framing == LENGTH and self._remaining:
            self.close_after = True  # shorter than announced: the client must not reuse the connection
        if self._pending:
            payload = self._pending + payload
            self._pending = b""
        self.phase = phase
        return payload

    def tunnel_head(self, status: int, headers: Headers) -> bytes:
        """The head that turns the connection into a tunnel (101 for an upgrade, 2xx for CONNECT):
        no body framing follows, and the connection is not reused after the tunnel ends."""
        if status == 101:
            line = b"HTTP/1.1 101 Switching Protocols"
        elif status == 200 and self.head.method == b"CONNECT":
            line = b"HTTP/1.1 200 Connection Established"  # (what every forward proxy says)
        else:
            line = status_line(status)
        self.phase = advance(self.phase, _HEAD)
        self.close_after = True
        return serialize_head(line, headers)

    def trailer_bytes(self, trailers: Headers) -> bytes:
        """The end of a chunked response with trailer fields (after the last body bytes were framed):
        fields that are not plain tokens and values are dropped, never relayed broken."""
        fields = b"".join(
            b"%s: %s\r\n" % (name, value)
            for name, value in trailers
            if is_token(name) and not _UNSAFE_VALUE.search(value) and name not in _NOT_TRAILERS
        )
        return b"0\r\n" + fields + b"\r\n"

    def cut(self) -> bool:
        """Cut the response; True when the connection must close now (it had not ended yet)."""
        phase = advance(self.phase, _ABORT)
        if phase is self.phase:  # aborting a response that already ended changes nothing
            return False
        self.phase = phase
        self.close_after = True
        return True

    def error_bytes(self, status: int, headers: Headers, body: bytes) -> bytes:
        """A whole error response answered by the server itself (sent with `Connection: close`)."""
        advance(self.phase, _HEAD)  # (raises before anything changes)
        self.close_after = True
        self.start_response(status, headers)
        return self.end_bytes(body)


def finished(exchange: ServerExchange) -> bool:
    """Whether the exchange's response is over (ended or cut)."""
    return exchange.phase is _DONE or exchange.phase is _ABORTED
