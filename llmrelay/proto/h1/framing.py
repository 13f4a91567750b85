"""HTTP/1.1 message framing, sans-IO: the one `body_framing` rule, body decoders, chunk encoding.

Shared by the server (requests in, responses out) and the client (responses in). The decoders are
strict where framing is concerned (a chunk size is hex digits and optional extensions, every line ends
in CRLF, a chunk's data is followed by CRLF, sizes and trailer blocks are bounded), because two parsers
that disagree on where a body ends is how a request is smuggled. They are tested against h11 and
httptools in `fuzz/`.
"""

from __future__ import annotations

import enum
import re

from llmrelay.proto.h1.fields import FIELD_LINE, is_token

MAX_CHUNK_LINE = 4096
MAX_TRAILER_BYTES = 16384
LAST_CHUNK = b"0\r\n\r\n"
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# A chunk size line: the size, then extensions as RFC 9112 section 7.1.1 writes them (without the BWS
# that llhttp refuses): `;name` or `;name=value`, the value a token or a quoted-string. Lenient parsers
# skip whatever follows a `;` up to the CRLF, strict ones refuse what is not this.
_EXT_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_EXT_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;%s(?:=(?:%s|%s))?)*" % (_EXT_TOKEN, _EXT_TOKEN, _EXT_QUOTED))

# How a message body is delimited.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3  # a response without framing fields: its body ends when the connection closes


class Role(enum.IntEnum):
    """Which kind of message `body_framing` judges."""

    REQUEST = 0  # a request from a client
    RESPONSE = 1  # a response, as received from a provider and as sent to a client


REQUEST = Role.REQUEST
RESPONSE = Role.RESPONSE


class FramingError(ValueError):
    """A message's framing is malformed or ambiguous; the message says how (never quoting body bytes).

    `status` is what a client gets when its request is refused for it (501: a transfer coding the relay
    does not implement; 400: anything else). A response refused for it is a 502.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def content_length(values: list[bytes]) -> int:
    """The length given by a message's Content-Length field values (each as received).

    One field with one decimal value, or FramingError. A list, even of equal values (`5, 5`, or two
    fields saying 5), is refused in both directions: RFC 9110 section 8.6 allows it, and the relay
    would have to rewrite it before passing it on; no provider or SDK sends one.
    """
    if len(values) != 1:
        raise FramingError("more than one Content-Length")
    value = values[0]
    if _DIGITS.fullmatch(value) is None:
        raise FramingError("Content-Length with a list of values" if b"," in value else "malformed Content-Length")
    return int(value)


def body_framing(role: Role, method: bytes, status: int, lengths: list[bytes], codings: list[bytes]) -> tuple[int, int]:
    """How a message body is delimited, from its Content-Length and Transfer-Encoding field values (as
    received); the one rule for requests in, responses in and responses out.

    Returns (CHUNKED, 0), (LENGTH, n), (NO_BODY, 0) for a response that has none whatever its fields
    say (to HEAD; 1xx, 204, 304), and for neither field: a request has no body, (LENGTH, 0); a response
    is (UNTIL_CLOSE, 0) (received: it ends when the connection closes; sent: the server picks chunked
    or close-delimited by the client's version).

    Raises FramingError for anything two parsers could read differently (RFC 9112 section 6.3), in
    both roles and before the no-body cases: both fields together (never forwarded as they are:
    refused), a coding other than `chunked` alone, a Content-Length that is not one decimal value.
    """
    if codings:
        if lengths:
            raise FramingError("both Content-Length and Transfer-Encoding")
        parts = [part.strip(b" \t").lower() for value in codings for part in value.split(b",")]
        if parts != [b"chunked"]:
            if b"chunked" not in parts and all(is_token(coding) for coding in parts):
                raise FramingError("unsupported transfer coding", 501)
            raise FramingError("malformed or repeated Transfer-Encoding")
        framing, length = CHUNKED, 0
    elif lengths:
        framing, length = LENGTH, content_length(lengths)
    elif role is REQUEST:
        return LENGTH, 0
    else:
        framing, length = UNTIL_CLOSE, 0
    if role is RESPONSE and (method == b"HEAD" or status in (204, 304) or status < 200):
        return NO_BODY, 0
    return framing, length


class BodyDecoder:
    """Turns the bytes of a message body, fed as they arrive, into its content.

    `feed()` returns the content found in the bytes given (b"" when none yet) and sets `done` at the
    end of the body; bytes after the end are kept in `leftover` (the next pipelined message).
    """

    __slots__ = ("framing", "remaining", "done", "leftover", "_buffer", "_state", "_trailer_bytes")

    # chunked states
    _SIZE = 0
    _DATA = 1
    _DATA_END = 2
    _TRAILERS = 3

    def __init__(self, framing: int, length: int = 0) -> None:
        self.framing = framing
        self.remaining = length
        self.done = framing == NO_BODY or (framing == LENGTH and length == 0)
        self.leftover = b""
        self._buffer = b""
        self._state = self._SIZE
        self._trailer_bytes = 0

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.leftover += data
            return b""
        framing = self.framing
        if framing == LENGTH:
            remaining = self.remaining
            if len(data) < remaining:
                self.remaining = remaining - len(data)
                return data
            self.remaining = 0
            self.done = True
            if len(data) > remaining:
                self.leftover = data[remaining:]
                return data[:remaining]
            return data
        if framing == UNTIL_CLOSE:
            return data
        return self._feed_chunked(data)

    def eof(self) -> None:
        """The peer closed: fine for a close-delimited body, an error when more was announced."""
        if self.done:
            return
        if self.framing == UNTIL_CLOSE:
            self.done = True
            return
        raise FramingError("connection closed before the end of the body")

    def _feed_chunked(self, data: bytes) -> bytes:
        if self._state == self._SIZE and not self._buffer:
            # Fast path: exactly one whole chunk (an SSE event as a provider writes it).
            line_end = data.find(b"\r\n")
            if 0 < line_end <= 16 and data.endswith(b"\r\n") and _HEX.fullmatch(data, 0, line_end):
                size = int(data[:line_end], 16)
                if size and len(data) == line_end + size + 4:
                    return data[line_end + 2 : line_end + 2 + size]
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        out: list[bytes] = []
        position = 0
        size = len(buffer)
        while position < size:
            state = self._state
            if state == self._SIZE:
                # Whole chunks (several events read at once) are taken without the state machine.
                line_end = buffer.find(b"\r\n", position, position + 18)
                if line_end > position and _HEX.fullmatch(buffer, position, line_end):
                    chunk_size = int(buffer[position:line_end], 16)
                    end = line_end + 2 + chunk_size
                    if chunk_size and buffer[end : end + 2] == b"\r\n":
                        out.append(buffer[line_end + 2 : end])
                        position = end + 2
                        continue
            if state == self._DATA:
                take = min(self.remaining, size - position)
                out.append(buffer[position : position + take])
                position += take
                self.remaining -= take
                if self.remaining == 0:
                    self._state = self._DATA_END
                continue
            line_end = buffer.find(b"\r\n", position)
            if line_end == -1:
                rest = buffer[position:]
                if b"\n" in rest or (b"\r" in rest[:-1]):
                    raise FramingError("bare CR or LF in chunked framing")
                if state == self._TRAILERS:
                    if self._trailer_bytes + len(rest) > MAX_TRAILER_BYTES:
                        raise FramingError("trailer block too large")
                elif len(rest) > MAX_CHUNK_LINE:
                    raise FramingError("chunk size line too long")
                self._buffer = rest
                break
            line = buffer[position:line_end]
            position = line_end + 2
            if state == self._DATA_END:
                if line:
                    raise FramingError("chunk data not followed by CRLF")
                self._state = self._SIZE
            elif state == self._SIZE:
                if len(line) > MAX_CHUNK_LINE:
                    raise FramingError("chunk size line too long")
                match = _CHUNK_LINE.fullmatch(line)
                if match is None:
                    raise FramingError("malformed chunk size line")
                chunk_size = int(match.group(1), 16)
                if chunk_size:
                    self.remaining = chunk_size
                    self._state = self._DATA
                else:
                    self._state = self._TRAILERS
            else:  # trailers: dropped, but bounded and checked
                if not line:
                    self.done = True
                    self.leftover = buffer[position:]
                    break
                self._trailer_bytes += len(line) + 2
                if self._trailer_bytes > MAX_TRAILER_BYTES:
                    raise FramingError("trailer block too large")
                if FIELD_LINE.fullmatch(line) is None:
                    raise FramingError("malformed trailer line")
        return b"".join(out) if len(out) != 1 else out[0]


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)
