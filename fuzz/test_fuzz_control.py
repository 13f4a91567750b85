"""Fuzzes the supervisor <-> worker control pipe framing (`llmrelay.control`).

The control pipe is a byte stream: the OS may hand a frame over in any number of pieces, and a crashed
or confused peer can write anything. These properties check that any sequence of messages (every
member of the ControlMessage union: Ready, Heartbeat with WorkerStats, Drain, Stopped, HealthTable,
UpstreamEvent, ConfigApplied, ConfigRejected, and Config carrying a real RelayConfig), encoded and fed in arbitrarily split chunks,
comes out exactly and in order; that arbitrary bytes, well-framed noise and corrupted frames make
`FrameReader.feed` return messages or raise `FrameError`, never anything else; and that a length
prefix above MAX_FRAME is refused as soon as its fourth byte arrives, before any payload is buffered
(with the exact MAX_FRAME boundary checked on both sides), including a frame with invalid UTF-8 in a
string, which msgspec reports as UnicodeDecodeError.
"""

from __future__ import annotations

import struct
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from llmrelay.config.load import load_config
from llmrelay.config.resolved import RelayConfig
from llmrelay.control import MAX_FRAME, ControlMessage, FrameError, FrameReader, Ready, encode_frame

LENGTH = struct.Struct(">I")
EMBEDDED_CONFIG = load_config(None, environ={})
msgpack_ints = st.integers(-(2**63), 2**64 - 1)  # every integer msgpack can carry


def _values(tp: Any) -> st.SearchStrategy[Any]:
    """Any value of a control-message field type (Structs, lists and dicts of them, scalars)."""
    if tp is int:
        return msgpack_ints
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is bool:
        return st.booleans()
    if tp is str:
        return st.text(max_size=20)
    if tp is RelayConfig:
        return st.just(EMBEDDED_CONFIG)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return st.builds(tp, **{field.name: _values(field.type) for field in msgspec.structs.fields(tp)})
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return st.lists(_values(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(_values(args[0]), _values(args[1]), max_size=3)
    raise TypeError(f"no strategy for control field type {tp!r}")


# Every member of the ControlMessage union, every field filled in (defaults included).
MESSAGE_TYPES: tuple[type[msgspec.Struct], ...] = typing.get_args(ControlMessage)
messages: st.SearchStrategy[ControlMessage] = st.one_of([_values(cls) for cls in MESSAGE_TYPES])


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """`stream` cut at arbitrary points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    return [stream[start:end] for start, end in zip(bounds, bounds[1:])]


def feed_all(reader: FrameReader, chunks: list[bytes]) -> list[ControlMessage]:
    received: list[ControlMessage] = []
    for chunk in chunks:
        received += reader.feed(chunk)
    return received


@given(sent=st.lists(messages, max_size=8), data=st.data())
def test_messages_round_trip_in_order_across_any_split(sent: list[ControlMessage], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(message) for message in sent)
    reader = FrameReader()
    assert feed_all(reader, data.draw(chunked(stream))) == sent
    assert reader.feed(b"") == []


@st.composite
def corrupted_frame(draw: st.DrawFn) -> bytes:
    """A valid frame with bytes of its payload overwritten, inserted or removed, length re-framed."""
    payload = bytearray(encode_frame(draw(messages))[LENGTH.size :])
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(payload)))
        action = draw(st.sampled_from(["overwrite", "insert", "remove"]))
        if action == "insert" or at == len(payload):
            payload[at:at] = bytes([draw(st.integers(0, 255))])
        elif action == "overwrite":
            payload[at] = draw(st.integers(0, 255))
        else:
            del payload[at]
    return LENGTH.pack(len(payload)) + bytes(payload)


garbage = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=60).map(lambda payload: LENGTH.pack(len(payload)) + payload),  # framed noise
    corrupted_frame(),
    messages.map(encode_frame),
)


garbage_streams = st.lists(garbage, min_size=1, max_size=5).flatmap(lambda pieces: chunked(b"".join(pieces)))


def _feed_garbage(chunks: list[bytes], tolerate: tuple[type[Exception], ...]) -> None:
    reader = FrameReader()
    try:
        received = feed_all(reader, chunks)
    except FrameError:
        return
    except tolerate:
        return
    for message in received:
        assert isinstance(message, MESSAGE_TYPES)


@given(
    before=st.lists(messages, max_size=3),
    length=st.integers(MAX_FRAME + 1, 2**32 - 1),
    together=st.booleans(),
)
def test_oversized_length_prefix_is_refused_at_its_fourth_byte(
    before: list[ControlMessage], length: int, together: bool
) -> None:
    reader = FrameReader()
    prefix = LENGTH.pack(length)
    if together:  # valid frames and the bad prefix in one read: the whole read is refused
        with pytest.raises(FrameError):
            reader.feed(b"".join(encode_frame(message) for message in before) + prefix)
        return
    assert feed_all(reader, [encode_frame(message) for message in before]) == before
    for index in range(LENGTH.size - 1):
        assert reader.feed(prefix[index : index + 1]) == []
    with pytest.raises(FrameError):
        reader.feed(prefix[-1:])


def test_max_frame_boundary() -> None:
    """A payload of exactly MAX_FRAME bytes passes both ways; one byte more is refused both ways."""
    overhead = len(encode_frame(Ready(pid=0, version="x" * 70_000))) - LENGTH.size - 70_000
    exact = Ready(pid=0, version="x" * (MAX_FRAME - overhead))
    frame = encode_frame(exact)
    assert len(frame) == LENGTH.size + MAX_FRAME
    assert FrameReader().feed(frame) == [exact]
    with pytest.raises(FrameError):
        encode_frame(Ready(pid=0, version="x" * (MAX_FRAME - overhead + 1)))
    with pytest.raises(FrameError):
        FrameReader().feed(LENGTH.pack(MAX_FRAME + 1))


# -- regressions ---------------------------------------------------------------------------------------

# msgspec raises UnicodeDecodeError (not a DecodeError) for invalid UTF-8 in a msgpack string.
READY_WITH_INVALID_UTF8 = encode_frame(Ready(pid=1, version="x"))[:-1] + b"\x80"


@given(chunks=garbage_streams)
@example(chunks=[READY_WITH_INVALID_UTF8])
def test_garbage_yields_messages_or_frame_error_only(chunks: list[bytes]) -> None:
    _feed_garbage(chunks, tolerate=())
