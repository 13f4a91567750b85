"""The HTTP/1.1 client side of one upstream connection, sans-IO: a request head out; response bytes in,
a response head and body bytes out.

The response is judged by the same rules as a request the server receives: the strict field syntax
(`fields`), and the one `framing.body_framing` (both Content-Length and Transfer-Encoding, a coding
other than chunked alone, or a Content-Length list make it unrelayable, so a client never gets a
Content-Length that is not the length of the body it receives). The same code reads every response,
whatever way the connection was made (direct, TLS, through an HTTP or SOCKS5 proxy).
"""

from __future__ import annotations

import re

from llmrelay.proto.h1.fields import FIELD_LINE, connection_close_requested, htab_after_value, serialize_head
from llmrelay.proto.h1.framing import RESPONSE, UNTIL_CLOSE, BodyDecoder, FramingError, body_framing
from llmrelay.proto.messages import Headers

MAX_RESPONSE_HEAD = 65536
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")


class ResponseError(ValueError):
    """A response that cannot be relayed (malformed, ambiguous, or an unexpected protocol switch)."""


class ResponseClosed(ResponseError):
    """The upstream closed the connection before the response was complete."""


class ResponseHead:
    __slots__ = ("status", "headers", "framing", "length", "keep_alive")

    def __init__(self, status: int, headers: Headers, framing: int, length: int, keep_alive: bool) -> None:
        self.status = status
        self.headers = headers
        self.framing = framing
        self.length = length
        self.keep_alive = keep_alive


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """A request head (`target` in origin form, or absolute form for an HTTP proxy)."""
    return serialize_head(b"%s %s HTTP/1.1" % (method, target), headers)


def parse_response_head(head: bytes, method: bytes) -> ResponseHead:
    """Parse a response head (up to, not including, its blank line); raise FramingError when it is
    malformed or its framing ambiguous (RFC 9112 section 6.3)."""
    line_end = head.find(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(head if line_end < 0 else head[:line_end])
    if status_line is None:
        raise FramingError("malformed status line")
    http10 = status_line.group(1) == b"0"
    status = int(status_line.group(2))
    headers: Headers = []
    close = http10
    lengths: list[bytes] = []
    codings: list[bytes] = []
    if line_end >= 0:
        match_field = FIELD_LINE.fullmatch
        for line in head[line_end + 2 :].split(b"\r\n"):
            field = match_field(line)
            if field is None:
                raise FramingError("malformed header line")
            name, value = field.groups()
            name = name.lower()
            headers.append((name, value))
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings.append(value)
                if htab_after_value(line):
                    raise FramingError("HTAB after the Transfer-Encoding value")
            elif name == b"connection":
                close = close or connection_close_requested(value)
    if codings and http10:
        # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        raise FramingError("Transfer-Encoding in an HTTP/1.0 response")
    framing, length = body_framing(RESPONSE, method, status, lengths, codings)
    if framing == UNTIL_CLOSE:
        close = True
    return ResponseHead(status, headers, framing, length, not close)


class ClientProtocol:
    """One upstream connection's response side: carries one request at a time."""

    __slots__ = ("buffer", "decoder", "keep_alive", "received")

    def __init__(self) -> None:
        self.buffer = b""  # received and not yet used
        self.decoder: BodyDecoder | None = None
        self.keep_alive = False
        self.received = False  # any byte of the current response arrived

    def start_request(self) -> None:
        self.received = False
        self.decoder = None
        self.keep_alive = False

    def receive_data(self, data: bytes) -> None:
        self.received = True
        self.buffer = self.buffer + data if self.buffer else data

    def next_head(self, method: bytes) -> ResponseHead | None:
        """The response head once it is here whole (informational 100/103 heads are skipped), or
        None when more bytes are needed; ResponseError when it cannot be relayed."""
        while True:
            buffer = self.buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if b"\n\n" in buffer:  # a blank line of bare LFs: a lenient parser's end of the head
                    raise ResponseError("bare LF in head")
                if len(buffer) > MAX_RESPONSE_HEAD:
                    raise ResponseError("head too large")
                return None
            if end + 4 > MAX_RESPONSE_HEAD:  # the same limit whether the head came in one read or many
                raise ResponseError("head too large")
            if b"\n" in buffer[:end].replace(b"\r\n", b""):
                raise ResponseError("bare LF in head")
            try:
                head = parse_response_head(buffer[:end], method)
            except FramingError as exc:
                raise ResponseError(str(exc)) from None
            self.buffer = buffer[end + 4 :]
            if head.status == 101:
                raise ResponseError("upstream switched protocols, which is not relayed")
            if head.status >= 200:
                self.decoder = BodyDecoder(head.framing, head.length)
                self.keep_alive = head.keep_alive
                return head
            # 100 Continue, 103 Early Hints: the real answer follows

    @property
    def body_done(self) -> bool:
        decoder = self.decoder
        return decoder is not None and decoder.done

    def next_body(self) -> bytes | None:
        """Body content from the bytes received: content (b"" at the end: `body_done`), or None when
        more bytes are needed; ResponseError for a malformed body."""
        decoder = self.decoder
        assert decoder is not None
        if decoder.done:
            return b""
        data = self.buffer
        if not data:
            return None
        self.buffer = b""
        try:
            content = decoder.feed(data)
        except FramingError as exc:
            raise ResponseError(str(exc)) from None
        if decoder.done or content:
            return content
        return None

    def end_of_stream(self) -> None:
        """The upstream closed: the end of a close-delimited body, otherwise a ResponseError."""
        self.keep_alive = False
        decoder = self.decoder
        if decoder is None:
            raise ResponseClosed("closed inside the head" if self.buffer else "closed without answering")
        try:
            decoder.eof()
        except FramingError:
            raise ResponseClosed("closed mid-body") from None

    def reusable(self) -> bool:
        """Whether the last response ended cleanly, with nothing after it, on a kept-alive connection."""
        decoder = self.decoder
        return self.keep_alive and decoder is not None and decoder.done and not decoder.leftover and not self.buffer

