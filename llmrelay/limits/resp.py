"""RESP2, the Redis wire protocol, sans-IO: commands encoded to bytes, bytes parsed into replies.

There is no maintained Redis client that runs on trio natively, and the supervisor needs only a
handful of commands (EVALSHA/EVAL, SCRIPT LOAD, AUTH, SELECT, HGETALL), so it speaks RESP over its
own trio socket. This module is the protocol half: no sockets, no clock, bytes in and replies out, so
it is tested with byte strings and fuzzed.

A command is always an array of bulk strings (`encode_command`). A reply is one of:
simple string (`+OK` → `str`), error (`-ERR ...` → `ErrorReply`), integer (`:3` → `int`), bulk
string (`$3\\r\\nabc` → `bytes`; `$-1` → `None`), array (`*2 ...` → `list`, nested; `*-1` → `None`).
An error reply is a value, not an exception: in a pipeline, the command that failed is known by its
position and the replies after it still belong to their commands. Bytes that are not RESP raise
`ProtocolError` and poison the parser: nothing read after garbage can be trusted, the connection has
to go. Every length read from the wire is bounded before anything is allocated for it.
"""

from __future__ import annotations

import enum
from typing import Final, Union

import msgspec

MAX_LINE: Final = 64 * 1024  # a simple string, error, integer or length line
MAX_BULK: Final = 512 * 1024 * 1024  # Redis's own proto-max-bulk-len default
MAX_ARRAY: Final = 1 << 24
MAX_DEPTH: Final = 32  # arrays inside arrays (a script's nested tables)


class RespError(Exception):
    """Root of this module's errors."""


class ProtocolError(RespError):
    """The bytes are not RESP (or exceed a bound): the connection cannot be used any more."""


class ErrorReply(msgspec.Struct, frozen=True):
    """An error reply (`-NOSCRIPT No matching script...`): `code` is its first word."""

    message: str

    @property
    def code(self) -> str:
        return self.message.split(" ", 1)[0]


Reply = Union[str, bytes, int, None, ErrorReply, list["Reply"]]
Argument = Union[bytes, str, int]


class NeedData(enum.Enum):
    """The type of `NEED_DATA`: the bytes fed so far hold no complete reply yet (an enum, so that
    `reply is NEED_DATA` narrows the type)."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


def _argument(value: Argument) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):  # an int, but True/False on the wire is always a mistake
        raise TypeError("a Redis command argument cannot be a bool")
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")  # any str goes: a lone surrogate is no crash
    raise TypeError(f"a Redis command argument must be bytes, str or int, not {type(value).__name__}")


def encode_command(*args: Argument) -> bytes:
    """One command as RESP: an array of bulk strings (str as UTF-8, lone surrogates included; int
    in decimal)."""
    if not args:
        raise ValueError("a Redis command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _argument(arg)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


def encode_commands(commands: list[tuple[Argument, ...]]) -> bytes:
    """Several commands for one write (a pipeline)."""
    return b"".join(encode_command(*command) for command in commands)


def _integer(line: bytes, what: str) -> int:
    # int() would also take " 1", "+1", "1_000" and non-ASCII digits: RESP allows none of them.
    body = line[1:] if line[:1] == b"-" else line
    if not body or not body.isdigit() or len(body) > 20:
        raise ProtocolError(f"bad {what} {line[:40]!r}")
    return int(line)


class _Frame:
    """An array being read: how many items it has, and those read so far."""

    __slots__ = ("expected", "items")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.items: list[Reply] = []


class RespParser:
    """Feed bytes as they arrive, take complete replies out in order.

    Incremental: a reply split over many reads is never re-parsed from its start; the parser keeps
    the arrays it is inside of on a stack and the length of a bulk string it waits for."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0
        self._stack: list[_Frame] = []
        self._bulk = -1  # length of the bulk string whose bytes are awaited, -1 when none
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes | bytearray) -> None:
        if self._position and self._position == len(self._buffer):
            self._buffer.clear()
            self._position = 0
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes fed and not consumed yet."""
        return len(self._buffer) - self._position

    def next_reply(self) -> Reply | NeedData:
        """The next complete reply, or `NEED_DATA`; `ProtocolError` on garbage (and ever after)."""
        if self._broken is not None:
            raise self._broken
        try:
            return self._next()
        except ProtocolError as exc:
            self._broken = exc
            raise

    def _next(self) -> Reply | NeedData:
        while True:
            value: Reply
            if self._bulk >= 0:
                end = self._position + self._bulk
                if len(self._buffer) < end + 2:
                    return NEED_DATA
                if self._buffer[end : end + 2] != b"\r\n":
                    raise ProtocolError("bulk string not followed by CRLF")
                value = bytes(self._buffer[self._position : end])
                self._position = end + 2
                self._bulk = -1
            else:
                line = self._line()
                if line is None:
                    return NEED_DATA
                kind, rest = line[:1], line[1:]
                if kind == b"+":
                    value = rest.decode("utf-8", "replace")
                elif kind == b"-":
                    value = ErrorReply(rest.decode("utf-8", "replace"))
                elif kind == b":":
                    value = _integer(rest, "integer")
                elif kind == b"$":
                    length = _integer(rest, "bulk length")
                    if length == -1:
                        value = None
                    elif 0 <= length <= MAX_BULK:
                        self._bulk = length
                        continue
                    else:
                        raise ProtocolError(f"bulk length {length} out of bounds")
                elif kind == b"*":
                    count = _integer(rest, "array length")
                    if count == -1:
                        value = None
                    elif count == 0:
                        value = []
                    elif 0 < count <= MAX_ARRAY:
                        if len(self._stack) >= MAX_DEPTH:
                            raise ProtocolError("arrays nested too deep")
                        self._stack.append(_Frame(count))
                        continue
                    else:
                        raise ProtocolError(f"array length {count} out of bounds")
                else:
                    raise ProtocolError(f"unknown reply type {kind!r}")
            # A value is complete: it fills its array, which may complete its parent, and so on.
            while self._stack:
                frame = self._stack[-1]
                frame.items.append(value)
                if len(frame.items) < frame.expected:
                    break
                self._stack.pop()
                value = frame.items
            else:
                self._compact()
                return value

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n", self._position)
        if end < 0:
            if len(self._buffer) - self._position > MAX_LINE + 1:  # (+1: a CR whose LF is coming)
                raise ProtocolError("line too long")
            return None
        if end - self._position > MAX_LINE:
            raise ProtocolError("line too long")
        line = bytes(self._buffer[self._position : end])
        if not line:
            raise ProtocolError("empty line")
        if b"\n" in line or b"\r" in line:
            raise ProtocolError("bare CR or LF inside a line")
        self._position = end + 2
        return line

    def _compact(self) -> None:
        # Drop consumed bytes now and then rather than on every reply (a pipeline's replies
        # usually arrive together; deleting the front of a bytearray is a move of the rest).
        if self._position > 65536 or self._position == len(self._buffer):
            del self._buffer[: self._position]
            self._position = 0


__all__ = [
    "MAX_ARRAY",
    "MAX_BULK",
    "MAX_DEPTH",
    "MAX_LINE",
    "NEED_DATA",
    "Argument",
    "NeedData",
    "ErrorReply",
    "ProtocolError",
    "Reply",
    "RespError",
    "RespParser",
    "encode_command",
    "encode_commands",
]
