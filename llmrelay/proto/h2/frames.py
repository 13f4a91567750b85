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


# -- what a received frame's payload says, checked (RFC 9113 section 6) -----------------------------
def header_fragment(flags: int, stream_id: int, payload: bytes) -> tuple[bytes, bool]:
    """A HEADERS frame's header block fragment, without padding and priority, and whether the
    stream depends on itself (a stream error)."""
    if stream_id == 0 or not stream_id & 1:
        raise FrameError(ErrorCodes.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, not one a client may open")
    if not flags & (PADDED | PRIORITY_FLAG):
        return payload, False
    start, end = 0, len(payload)
    if flags & PADDED:
        if not end:
            raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "a padded HEADERS frame without its pad length")
        start, end = 1, end - payload[0]
    self_dependent = False
    if flags & PRIORITY_FLAG:
        if end - start < 5:
            raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "a HEADERS frame too short for its priority")
        self_dependent = read_u32(payload[start : start + 4]) & STREAM_ID_MASK == stream_id
        start += 5
    if end < start:
        raise FrameError(ErrorCodes.PROTOCOL_ERROR, "HEADERS padding longer than the frame")
    return payload[start:end], self_dependent


def data_content(flags: int, stream_id: int, payload: bytes) -> bytes:
    """A DATA frame's data, without padding."""
    if stream_id == 0:
        raise FrameError(ErrorCodes.PROTOCOL_ERROR, "DATA on stream 0")
    if not flags & PADDED:
        return payload
    size = len(payload)
    if not size or payload[0] >= size:
        raise FrameError(ErrorCodes.PROTOCOL_ERROR, "DATA padding longer than the frame")
    return payload[1 : size - payload[0]]


def window_increment(payload: bytes) -> int:
    if len(payload) != 4:
        raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "a WINDOW_UPDATE frame not of 4 bytes")
    return read_u32(payload) & STREAM_ID_MASK


def reset_code(stream_id: int, payload: bytes) -> int:
    if len(payload) != 4:
        raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "a RST_STREAM frame not of 4 bytes")
    if stream_id == 0:
        raise FrameError(ErrorCodes.PROTOCOL_ERROR, "RST_STREAM on stream 0")
    return read_u32(payload)


def settings_received(flags: int, stream_id: int, payload: bytes) -> list[tuple[int, int]] | None:
    """The settings a SETTINGS frame carries, each value checked; None for an acknowledgement."""
    if stream_id:
        raise FrameError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS on a stream")
    if flags & ACK:
        if payload:
            raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
        return None
    if len(payload) % 6:
        raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "a SETTINGS frame whose length is not a multiple of 6")
    settings = parse_settings(payload)
    for code, value in settings:
        if code == INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
            raise FrameError(ErrorCodes.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
        if code == MAX_FRAME_SIZE and not DEFAULT_MAX_FRAME_SIZE <= value <= LARGEST_FRAME_SIZE:
            raise FrameError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
        if code in (ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL) and value > 1:
            raise FrameError(ErrorCodes.PROTOCOL_ERROR, "a SETTINGS flag other than 0 or 1")
    return settings


def ping_answer(flags: int, stream_id: int, payload: bytes) -> bytes | None:
    """The PING ACK to send for a PING (None for an ACK)."""
    if stream_id:
        raise FrameError(ErrorCodes.PROTOCOL_ERROR, "PING on a stream")
    if len(payload) != 8:
        raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "a PING frame not of 8 bytes")
    return None if flags & ACK else frame(PING, ACK, 0, payload)


def check_priority(stream_id: int, payload: bytes) -> None:
    """A PRIORITY frame is checked, never acted upon (RFC 9113 section 5.3.2)."""
    if stream_id == 0:
        raise FrameError(ErrorCodes.PROTOCOL_ERROR, "PRIORITY on stream 0")
    if len(payload) != 5:
        raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "a PRIORITY frame not of 5 bytes")


def goaway_code(stream_id: int, payload: bytes) -> int:
    if stream_id:
        raise FrameError(ErrorCodes.PROTOCOL_ERROR, "GOAWAY on a stream")
    if len(payload) < 8:
        raise FrameError(ErrorCodes.FRAME_SIZE_ERROR, "a GOAWAY frame under 8 bytes")
    return read_u32(payload[4:])
