"""HTTP/2 framing as byte strings: frames cut from reads split anywhere, the preface, the size limit,
the frames we build (read back by hyperframe, an independent parser), and each payload check."""

from __future__ import annotations

import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame

from h2frames import parse_frames as parse
from llmrelay.proto.h2 import frames as fr
from llmrelay.proto.h2.frames import ErrorCodes, FrameError, FrameReader


def test_frames_split_at_every_byte_come_out_the_same() -> None:
    wire = fr.PREFACE + SettingsFrame(0, settings={4: 1000}).serialize() + DataFrame(1, data=b"x" * 40, flags=["END_STREAM"]).serialize()
    for cut in range(len(wire) + 1):
        reader = FrameReader(16384)
        got = reader.frames(wire[:cut]) + reader.frames(wire[cut:])
        assert [(kind, flags, stream) for kind, flags, stream, _ in got] == [(fr.SETTINGS, 0, 0), (fr.DATA, fr.END_STREAM, 1)]
        assert got[1][3] == b"x" * 40


def test_a_wrong_preface_is_refused_at_its_first_wrong_byte() -> None:
    reader = FrameReader(16384)
    assert reader.frames(b"PRI * HTTP/2") == []
    with pytest.raises(FrameError) as caught:
        reader.frames(b".1\r\n")
    assert caught.value.error_code == ErrorCodes.PROTOCOL_ERROR


def test_a_frame_over_the_size_limit_is_refused_before_its_payload_arrives() -> None:
    reader = FrameReader(16384)
    reader.frames(fr.PREFACE)
    with pytest.raises(FrameError) as caught:
        reader.frames(b"\x00\x40\x01\x00\x00\x00\x00\x00\x01")  # 16385 bytes of DATA announced
    assert caught.value.error_code == ErrorCodes.FRAME_SIZE_ERROR


def test_the_reserved_bit_of_a_stream_id_is_ignored() -> None:
    reader = FrameReader(16384)
    reader.frames(fr.PREFACE)
    assert reader.frames(b"\x00\x00\x00\x00\x00\x80\x00\x00\x03") == [(fr.DATA, 0, 3, b"")]


def test_built_frames_read_back() -> None:
    settings, update, reset, goaway = parse(
        fr.settings_frame({fr.MAX_CONCURRENT_STREAMS: 7, fr.ENABLE_CONNECT_PROTOCOL: 1})
        + fr.window_update_frame(0, 1000)
        + fr.rst_stream_frame(5, ErrorCodes.REFUSED_STREAM)
        + fr.goaway_frame(9, ErrorCodes.ENHANCE_YOUR_CALM)
    )
    assert isinstance(settings, SettingsFrame) and settings.settings == {3: 7, 8: 1}
    assert isinstance(update, WindowUpdateFrame) and update.window_increment == 1000 and update.stream_id == 0
    assert isinstance(reset, RstStreamFrame) and reset.stream_id == 5 and reset.error_code == 7
    assert isinstance(goaway, GoAwayFrame) and goaway.last_stream_id == 9 and goaway.error_code == 11


def test_a_long_header_block_is_split_into_continuation_frames() -> None:
    block = bytes(range(256)) * 100  # 25,600 bytes
    frames = parse(fr.header_frames(3, block, True, 16384))
    assert [type(f) for f in frames] == [HeadersFrame, ContinuationFrame]
    assert frames[0].flags == {"END_STREAM"} and frames[1].flags == {"END_HEADERS"}
    assert frames[0].data + frames[1].data == block
    (single,) = parse(fr.header_frames(3, b"\x88", False, 16384))
    assert isinstance(single, HeadersFrame) and single.flags == {"END_HEADERS"}


def test_padding_and_priority_are_stripped() -> None:
    padded = HeadersFrame(1, data=b"\x82\x84", pad_length=3, flags=["PADDED", "END_HEADERS"]).serialize()[9:]
    assert fr.header_fragment(fr.PADDED | fr.END_HEADERS, 1, padded) == (b"\x82\x84", False)
    prioritised = HeadersFrame(1, data=b"\x82", depends_on=1, stream_weight=16, flags=["PRIORITY"]).serialize()[9:]
    assert fr.header_fragment(fr.PRIORITY_FLAG, 1, prioritised) == (b"\x82", True)  # depends on itself
    data = DataFrame(1, data=b"body", pad_length=10, flags=["PADDED"]).serialize()[9:]
    assert fr.data_content(fr.PADDED, 1, data) == b"body"


@pytest.mark.parametrize(
    ("check", "code"),
    [
        (lambda: fr.header_fragment(0, 0, b""), ErrorCodes.PROTOCOL_ERROR),  # HEADERS on stream 0
        (lambda: fr.header_fragment(0, 2, b""), ErrorCodes.PROTOCOL_ERROR),  # an even (server) stream id
        (lambda: fr.header_fragment(fr.PADDED, 1, b"\x05ab"), ErrorCodes.PROTOCOL_ERROR),  # padding past the end
        (lambda: fr.header_fragment(fr.PRIORITY_FLAG, 1, b"\x00\x00"), ErrorCodes.FRAME_SIZE_ERROR),
        (lambda: fr.data_content(0, 0, b"x"), ErrorCodes.PROTOCOL_ERROR),
        (lambda: fr.data_content(fr.PADDED, 1, b"\x01"), ErrorCodes.PROTOCOL_ERROR),
        (lambda: fr.window_increment(b"\x00\x00\x01"), ErrorCodes.FRAME_SIZE_ERROR),
        (lambda: fr.reset_code(0, b"\x00\x00\x00\x08"), ErrorCodes.PROTOCOL_ERROR),
        (lambda: fr.reset_code(1, b"\x00\x08"), ErrorCodes.FRAME_SIZE_ERROR),
        (lambda: fr.settings_received(0, 1, b""), ErrorCodes.PROTOCOL_ERROR),
        (lambda: fr.settings_received(fr.ACK, 0, b"\x00" * 6), ErrorCodes.FRAME_SIZE_ERROR),
        (lambda: fr.settings_received(0, 0, b"\x00" * 5), ErrorCodes.FRAME_SIZE_ERROR),
        (lambda: fr.settings_received(0, 0, b"\x00\x04\x80\x00\x00\x00"), ErrorCodes.FLOW_CONTROL_ERROR),
        (lambda: fr.settings_received(0, 0, b"\x00\x05\x00\x00\x10\x00"), ErrorCodes.PROTOCOL_ERROR),  # frame size 4096
        (lambda: fr.settings_received(0, 0, b"\x00\x02\x00\x00\x00\x02"), ErrorCodes.PROTOCOL_ERROR),  # ENABLE_PUSH 2
        (lambda: fr.ping_answer(0, 1, b"12345678"), ErrorCodes.PROTOCOL_ERROR),
        (lambda: fr.ping_answer(0, 0, b"1234"), ErrorCodes.FRAME_SIZE_ERROR),
        (lambda: fr.check_priority(0, b"\x00" * 5), ErrorCodes.PROTOCOL_ERROR),
        (lambda: fr.check_priority(1, b"\x00" * 4), ErrorCodes.FRAME_SIZE_ERROR),
        (lambda: fr.goaway_code(1, b"\x00" * 8), ErrorCodes.PROTOCOL_ERROR),
        (lambda: fr.goaway_code(0, b"\x00" * 7), ErrorCodes.FRAME_SIZE_ERROR),
    ],
)
def test_each_payload_check(check: object, code: ErrorCodes) -> None:
    with pytest.raises(FrameError) as caught:
        check()  # type: ignore[operator]
    assert caught.value.error_code == code


def test_settings_and_ping_answers() -> None:
    assert fr.settings_received(fr.ACK, 0, b"") is None
    assert fr.settings_received(0, 0, b"\x00\x03\x00\x00\x00\x0a\x00\x99\x00\x00\x00\x01") == [(3, 10), (0x99, 1)]
    answer = fr.ping_answer(0, 0, b"abcdefgh")
    assert answer is not None
    (pong,) = parse(answer)
    assert pong.flags == {"ACK"} and pong.opaque_data == b"abcdefgh"  # type: ignore[attr-defined]
    assert fr.ping_answer(fr.ACK, 0, b"abcdefgh") is None
