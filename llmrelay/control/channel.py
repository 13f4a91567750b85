"""The control pipe's framing and the one channel both ends use.

Each frame is a 4-byte big-endian length followed by one msgpack-encoded message of the tagged union
in `messages`. `encode_frame` and `FrameReader` are sans-IO (bytes in, messages out); `ControlChannel`
is the thin trio glue around a socket stream that the supervisor holds for each worker and each worker
holds for its supervisor: one send, serialised by a lock, and one receive.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import trio

from llmrelay.control.messages import ControlMessage

MAX_FRAME = 16 * 1024 * 1024
READ_SIZE = 65536
_LENGTH = struct.Struct(">I")

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ControlMessage)


class FrameError(Exception):
    """A frame on the control pipe was oversized or did not decode."""


def encode_frame(message: Any) -> bytes:
    payload = _encoder.encode(message)
    if len(payload) > MAX_FRAME:
        raise FrameError(f"control frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Sans-IO frame splitter: feed bytes, get messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[ControlMessage]:
        self._buffer += data
        messages: list[ControlMessage] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise FrameError(f"control frame of {length} bytes exceeds {MAX_FRAME}")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[_LENGTH.size : end])
            del self._buffer[:end]
            try:
                messages.append(_decoder.decode(payload))
            except (msgspec.DecodeError, ValueError) as exc:  # ValueError: invalid UTF-8 in a string
                raise FrameError(f"undecodable control frame: {exc}") from None
        return messages


class ControlChannel:
    """One end of a control pipe: whole messages out, whole messages in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._reader = FrameReader()
        self._send_lock = trio.Lock()

    async def send(self, message: Any) -> bool:
        """Send one message; False when the other end is gone (its pipe closed or broke)."""
        frame = encode_frame(message)
        async with self._send_lock:
            try:
                await self._stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            return True

    async def receive(self) -> list[ControlMessage] | None:
        """The next messages (one read may hold several); None once the pipe closed or broke.

        Raises FrameError for an oversized or undecodable frame: the other end cannot be trusted.
        """
        try:
            data = await self._stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not data:
            return None
        return self._reader.feed(data)

    async def aclose(self) -> None:
        await self._stream.aclose()
