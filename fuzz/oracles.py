"""Three readings of the same HTTP/1.1 bytes: the relay's parser, h11's and httptools' (llhttp).

Each function takes the raw bytes a peer sent and returns what that parser makes of the first message
in them (for a response: the final one, after any informational 1xx), normalised so the three can be
compared with `==`:

- `Message`: the start line, the fields (names lower-cased, values without surrounding whitespace,
  Transfer-Encoding values lower-cased as h11 reports them), the body content, and `end`, the offset
  just past the message: where each parser would start reading the next one. `end` is None when the
  body has not ended within the bytes given (for a response: when it runs until the connection closes;
  httptools has no end-of-stream call, so for it None means only "not ended yet").
- `Refused`: the parser refuses the bytes (`reason` is its message; `unknown_method` marks llhttp's
  refusal of a method outside its fixed table, which says nothing about framing).
- `INCOMPLETE`: the head itself is not complete yet.

Trailer fields are checked by every parser but not compared: the relay drops them. Our side is the
sans-IO protocol code the server and the upstream client run (`ServerConnection` and `ServerExchange`,
`ClientProtocol`), fed the bytes at once. The imports of our parser are all in the block below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import h11
import httptools

# -- our parser (the only place this file names its modules) ---------------------------------------------
from llmrelay.proto.errors import RequestRejected
from llmrelay.proto.h1.client import ClientProtocol, ResponseError
from llmrelay.proto.h1.framing import UNTIL_CLOSE
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.proto.h1.server import ServerConnection, ServerExchange

Fields = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Message:
    start: tuple[bytes, ...]  # (method, target, version) or (version, status)
    fields: Fields
    body: bytes
    end: int | None
    keep_alive: bool = False  # not part of `key`: HTTP/1.0 keep-alive is optional, each decides

    def key(self) -> tuple[object, ...]:
        """What the three parsers must agree on."""
        return (self.start, self.fields, self.body, self.end)


@dataclass(frozen=True)
class Refused:
    reason: str
    unknown_method: bool = False


class _Incomplete:
    def __repr__(self) -> str:
        return "INCOMPLETE"


INCOMPLETE: Final = _Incomplete()
Result = Message | Refused | _Incomplete

LIMITS = HeadLimits()


def _field(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    name = name.lower()
    value = value.strip(b" \t")
    return name, value.lower() if name == b"transfer-encoding" else value


# -- ours ------------------------------------------------------------------------------------------------


def ours_request(data: bytes) -> Result:
    """The relay's server side (`ServerConnection`, `ServerExchange`) on the bytes received so far."""
    connection = ServerConnection(LIMITS, "http", ("", 0), max_requests=100)
    connection.receive_data(data)
    body = b""
    try:
        head = connection.next_head()
        if head is None:
            return INCOMPLETE
        if head.websocket:  # the relay answers 501 (relay/handler.py) and closes
            return Refused("501 WebSocket upgrade")
        exchange = ServerExchange(connection, head)
        while (content := exchange.next_body()) is not None:
            body += content
            if exchange.body_complete:
                break
    except RequestRejected as exc:
        return Refused(f"{exc.status} {exc.message}")
    return Message(
        start=(head.method, head.target, b"HTTP/" + head.http_version),
        fields=tuple(_field(name, value) for name, value in head.headers),
        body=body,
        end=len(data) - len(connection.buffer) if exchange.body_complete else None,
        keep_alive=head.keep_alive,
    )


def ours_response(data: bytes, method: bytes) -> Result:
    """The relay's client side (`ClientProtocol`) after sending `method`, on a connection that closes
    after `data`."""
    client = ClientProtocol()
    client.start_request()
    client.receive_data(data)
    body = b""
    try:
        head = client.next_head(method)
        if head is None:
            return INCOMPLETE
        while (content := client.next_body()) is not None:
            body += content
            if client.body_done:
                break
        if not client.body_done:
            client.end_of_stream()
    except ResponseError as exc:
        return Refused(str(exc))
    assert client.decoder is not None
    unused = len(client.buffer) + len(client.decoder.leftover)
    return Message(
        start=(_final_version(data), b"%d" % head.status),
        fields=tuple(_field(name, value) for name, value in head.headers),
        body=body,
        end=None if head.framing == UNTIL_CLOSE else len(data) - unused,
        keep_alive=head.keep_alive,
    )


def _final_version(data: bytes) -> bytes:
    """`HTTP/1.x` of the final response (after any 1xx heads) in bytes our client accepted."""
    position = 0
    while 100 <= int(data[position + 9 : position + 12]) < 200:
        position = data.index(b"\r\n\r\n", position) + 4
    return data[position : position + 8]


# -- h11 -------------------------------------------------------------------------------------------------


def _h11_body(connection: h11.Connection, data: bytes, eof: bool) -> tuple[bytes, int | None] | Refused:
    """Read Data events to EndOfMessage: (content, end offset), with None when it needs more bytes
    (or, with `eof`, when the body ended with the connection)."""
    content = b""
    while True:
        event = connection.next_event()
        if isinstance(event, h11.Data):
            content += event.data
        elif isinstance(event, h11.EndOfMessage):
            rest, closed = connection.trailing_data
            return content, None if closed else len(data) - len(rest)
        elif event is h11.NEED_DATA and eof:
            eof = False
            connection.receive_data(b"")  # close-delimited bodies end here, others are refused
        elif event is h11.NEED_DATA:
            return content, None
        else:
            return Refused(f"unexpected event {event!r}")


def h11_request(data: bytes) -> Result:
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    try:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            return INCOMPLETE
        assert isinstance(event, h11.Request), event
        body = _h11_body(connection, data, eof=False)
    except h11.RemoteProtocolError as exc:
        return Refused(str(exc))
    if isinstance(body, Refused):
        return body
    return Message(
        start=(event.method, event.target, b"HTTP/" + event.http_version),
        fields=tuple(_field(name, value) for name, value in event.headers),
        body=body[0],
        end=body[1],
    )


def h11_response(data: bytes, method: bytes) -> Result:
    """h11's client after sending `method`, on a connection that closes after `data`."""
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(data)
    try:
        event = connection.next_event()
        while isinstance(event, h11.InformationalResponse) and event.status_code != 101:
            event = connection.next_event()
        if event is h11.NEED_DATA:
            return INCOMPLETE
        if not isinstance(event, h11.Response):
            return Refused(f"unexpected event {event!r}")
        body = _h11_body(connection, data, eof=True)
    except h11.RemoteProtocolError as exc:
        return Refused(str(exc))
    if isinstance(body, Refused):
        return body
    return Message(
        start=(b"HTTP/" + event.http_version, b"%d" % event.status_code),
        fields=tuple(_field(name, value) for name, value in event.headers),
        body=body[0],
        end=body[1],
    )


# -- httptools (llhttp) ----------------------------------------------------------------------------------

# llhttp's refusals of a method outside its table (RTSP's and ICE's methods get the second).
_METHOD_REFUSALS = frozenset({"Invalid method encountered", "Invalid method for HTTP/x.x request"})


class _Recorder:
    """httptools' callbacks, collected for the message being read. The bytes are fed one at a time,
    so the offset where a message completes is known exactly (httptools reports no positions)."""

    def __init__(self, parser_class: type[httptools.HttpRequestParser] | type[httptools.HttpResponseParser]) -> None:
        self.parser = parser_class(self)
        self.complete = False
        self.on_message_begin()

    def on_message_begin(self) -> None:
        self.target = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.headers_done = False
        self.keep_alive = False
        self.status = 0

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:  # afterwards: trailer fields, not compared
            self.fields.append(_field(name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        if isinstance(self.parser, httptools.HttpResponseParser):
            self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if not 100 <= self.status < 200 or self.status == 101:  # a 1xx is followed by the real answer
            self.complete = True

    def feed(self, data: bytes) -> int | None | Refused:
        """Feed `data` byte by byte up to the end of the (final) message: its end offset, or None."""
        for index in range(len(data)):
            try:
                self.parser.feed_data(data[index : index + 1])
            except httptools.HttpParserUpgrade:
                pass  # raised once the message is complete; what follows belongs to another protocol
            except httptools.HttpParserError as exc:
                unknown = isinstance(exc, httptools.HttpParserInvalidMethodError) or str(exc) in _METHOD_REFUSALS
                return Refused(str(exc), unknown_method=unknown)
            if self.complete:
                return index + 1
        return None


def httptools_request(data: bytes) -> Result:
    recorder = _Recorder(httptools.HttpRequestParser)
    end = recorder.feed(data)
    if isinstance(end, Refused):
        return end
    if not recorder.headers_done:
        return INCOMPLETE
    parser = recorder.parser
    assert isinstance(parser, httptools.HttpRequestParser)
    return Message(
        start=(parser.get_method(), recorder.target, b"HTTP/" + parser.get_http_version().encode()),
        fields=tuple(recorder.fields),
        body=recorder.body,
        end=end,
        keep_alive=recorder.keep_alive,
    )


def httptools_response(data: bytes) -> Result:
    """llhttp's reading of the answer to a request that was not HEAD (it is not told the method)."""
    recorder = _Recorder(httptools.HttpResponseParser)
    end = recorder.feed(data)
    if isinstance(end, Refused):
        return end
    if not recorder.headers_done:
        return INCOMPLETE
    return Message(
        start=(b"HTTP/" + recorder.parser.get_http_version().encode(), b"%d" % recorder.status),
        fields=tuple(recorder.fields),
        body=recorder.body,
        end=end,
        keep_alive=recorder.keep_alive,
    )
