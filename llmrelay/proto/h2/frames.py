"""HTTP/2 framing (RFC 9113 section 4 and 6): the numbers of the protocol, and the frames a server
writes, built as bytes.

Every frame starts with the same 9 bytes: a 24-bit payload length, a type, flags and a 31-bit
stream id (`FRAME_HEADER`). The builders here return a whole frame; a header block longer than the
peer's maximum frame size is split into HEADERS and CONTINUATION frames (`header_frames`), a body
into DATA frames by the caller.
"""

from __future__ import annotations

import struct
from enum import IntEnum

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# length (high byte, low 16 bits), type, flags, stream id (its reserved top bit masked by readers)
FRAME_HEADER = struct.Struct(">BHBBL")
FRAME_HEADER_LENGTH = 9
STREAM_ID_MASK = 0x7FFFFFFF
MAX_WINDOW = 2**31 - 1  # no flow-control window may grow past this (RFC 9113 section 6.9.1)
DEFAULT_WINDOW = 65535  # every window's size before SETTINGS / WINDOW_UPDATE (section 6.9.2)
DEFAULT_MAX_FRAME_SIZE = 16384
LARGEST_FRAME_SIZE = 16777215

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# SETTINGS identifiers (RFC 9113 section 6.5.2; 8 is RFC 8441's)
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6
ENABLE_CONNECT_PROTOCOL = 0x8

_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")
_U32 = struct.Struct(">L")


class ErrorCodes(IntEnum):
    """The error codes of RST_STREAM and GOAWAY (RFC 9113 section 7)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return FRAME_HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def settings_frame(settings: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(code, value) for code, value in settings.items()))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """The (identifier, value) pairs of a SETTINGS payload whose length is a multiple of 6."""
    return [_SETTING.unpack_from(payload, at) for at in range(0, len(payload), 6)]


SETTINGS_ACK = frame(SETTINGS, ACK, 0)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream_frame(stream_id: int, error_code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(error_code))


def goaway_frame(last_stream_id: int, error_code: int) -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, error_code))


def read_u32(payload: bytes) -> int:
    """The first four bytes of `payload` as an unsigned integer (the reserved top bit included)."""
    return int(_U32.unpack_from(payload)[0])


def header_frames(stream_id: int, block: bytes, end_stream: bool, max_frame_size: int) -> bytes:
    """A header block as one HEADERS frame, or HEADERS and CONTINUATION frames when it is longer
    than `max_frame_size`."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame_size:
        return frame(HEADERS, flags | END_HEADERS, stream_id, block)
    parts = [block[start : start + max_frame_size] for start in range(0, len(block), max_frame_size)]
    frames = [frame(HEADERS, flags, stream_id, parts[0])]
    for part in parts[1:-1]:
        frames.append(frame(CONTINUATION, 0, stream_id, part))
    frames.append(frame(CONTINUATION, END_HEADERS, stream_id, parts[-1]))
    return b"".join(frames)


class FrameError(Exception):
    """The peer broke the protocol: the connection ends with GOAWAY(`error_code`)."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.reason = reason


class FrameReader:
    """Cuts a client's bytes into frames: the connection preface first, then (type, flags, stream
    id, payload) for every whole frame; a partial one waits for the next bytes. A frame longer than
    `max_frame_size` (our SETTINGS_MAX_FRAME_SIZE) is a FRAME_SIZE_ERROR before its payload is
    buffered."""

    __slots__ = ("max_frame_size", "_buffer", "_preface")

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = b""
        self._preface = PREFACE  # what of the preface is still to come

    def frames(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        position = 0
        if self._preface:
            wanted = self._preface
            taken = data[: len(wanted)]
            if not wanted.startswith(taken):
                raise FrameError(ErrorCodes.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._preface = wanted[len(taken) :]
            if self._preface:
                return []
            position = len(taken)
        size = len(data)
        found: list[tuple[int, int, int, bytes]] = []
        unpack = FRAME_HEADER.unpack_from
        limit = self.max_frame_size
        while size - position >= FRAME_HEADER_LENGTH:
            high, low, kind, flags, stream_id = unpack(data, position)
            length = high << 16 | low
            if length > limit:
                raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, f"a frame of {length} bytes, over the {limit} allowed")
            end = position + FRAME_HEADER_LENGTH + length
            if end > size:
                break
            found.append((kind, flags, stream_id & STREAM_ID_MASK, data[position + FRAME_HEADER_LENGTH : end]))
            position = end
        if position < size:
            self._buffer = data[position:]
        return found
