"""The abuse budgets, read off raw frame headers (sans-IO): each flood crosses its budget, ordinary
traffic never does, and frames split anywhere between reads are counted the same."""

from __future__ import annotations

from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame, PriorityFrame

from llmrelay.proto.h2.guard import (
    EMPTY_DATA_BUDGET,
    MAX_CONTINUATIONS,
    PING_BUDGET,
    PREFACE_LENGTH,
    RESET_BUDGET,
    SETTINGS_BUDGET,
    WINDOW_UPDATE_BUDGET,
    OTHER_BUDGET,
    FrameGuard,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def ping(n: int = 0) -> bytes:
    return PingFrame(0, opaque_data=n.to_bytes(8, "big")).serialize()


def flood(frame: bytes, count: int) -> bytes:
    return frame * count


def check_all(guard: FrameGuard, data: bytes, now: float = 0.0) -> str | None:
    return guard.check(data, now)


def test_the_preface_is_passed_over() -> None:
    guard = FrameGuard(65536, 0.0)
    assert len(PREFACE) == PREFACE_LENGTH
    assert guard.check(PREFACE + SettingsFrame(0).serialize(), 0.0) is None


def test_ping_flood_crosses_its_budget_within_one_read() -> None:
    guard = FrameGuard(65536, 0.0)
    assert guard.check(PREFACE + flood(ping(), PING_BUDGET.burst), 0.0) is None
    assert guard.check(ping(), 0.0) == "too many PING frames"


def test_pings_at_an_ordinary_pace_never_cross() -> None:
    guard = FrameGuard(65536, 0.0, preface=False)
    for second in range(600):
        assert guard.check(ping() * 2, float(second)) is None
    # a PING ACK is no request of work
    assert guard.check(PingFrame(0, flags=["ACK"]).serialize() * 1000, 600.0) is None


def test_settings_flood() -> None:
    guard = FrameGuard(65536, 0.0, preface=False)
    assert guard.check(SettingsFrame(0).serialize() * (SETTINGS_BUDGET.burst + 1), 0.0) == "too many SETTINGS frames"
    acks = FrameGuard(65536, 0.0, preface=False)
    assert acks.check(SettingsFrame(0, flags=["ACK"]).serialize() * 1000, 0.0) is None


def test_rapid_reset() -> None:
    guard = FrameGuard(65536, 0.0, preface=False)
    frames = b"".join(
        HeadersFrame(stream_id, data=b"\x82", flags=["END_HEADERS", "END_STREAM"]).serialize()
        + RstStreamFrame(stream_id, error_code=8).serialize()
        for stream_id in range(1, 2 * (RESET_BUDGET.burst + 1), 2)
    )
    assert guard.check(frames, 0.0) == "too many streams reset by the client (rapid reset)"


def test_window_update_flood_and_the_credit_of_sent_data() -> None:
    update = WindowUpdateFrame(0, window_increment=1).serialize()
    guard = FrameGuard(65536, 0.0, preface=False)
    assert guard.check(update * (WINDOW_UPDATE_BUDGET.burst + 1), 0.0) == "too many WINDOW_UPDATE frames"
    credited = FrameGuard(65536, 0.0, preface=False)
    credited.data_frames_sent(1000)  # two updates per DATA frame sent are expected
    assert credited.check(update * (WINDOW_UPDATE_BUDGET.burst + 1000), 0.0) is None


def test_empty_data_flood_but_not_an_empty_end() -> None:
    guard = FrameGuard(65536, 0.0, preface=False)
    empty = DataFrame(1, data=b"").serialize()
    assert guard.check(empty * (EMPTY_DATA_BUDGET.burst + 1), 0.0) == "too many empty DATA frames"
    ends = FrameGuard(65536, 0.0, preface=False)
    assert ends.check(DataFrame(1, data=b"", flags=["END_STREAM"]).serialize() * 1000, 0.0) is None
    full = FrameGuard(65536, 0.0, preface=False)
    assert full.check(DataFrame(1, data=b"x" * 100).serialize() * 1000, 0.0) is None


def test_priority_flood() -> None:
    guard = FrameGuard(65536, 0.0, preface=False)
    frame = PriorityFrame(3, depends_on=1, stream_weight=1).serialize()
    assert guard.check(frame * (OTHER_BUDGET.burst + 1), 0.0) == "too many PRIORITY or unknown frames"


def test_continuation_flood_by_count_and_by_size() -> None:
    start = HeadersFrame(1, data=b"\x82").serialize()
    guard = FrameGuard(65536, 0.0, preface=False)
    assert guard.check(start + ContinuationFrame(1, data=b"").serialize() * MAX_CONTINUATIONS, 0.0) is None
    assert guard.check(ContinuationFrame(1, data=b"").serialize(), 0.0) == "too many CONTINUATION frames in one header block"
    sized = FrameGuard(20000, 0.0, preface=False)
    assert sized.check(start + ContinuationFrame(1, data=b"a" * 16000).serialize(), 0.0) is None
    assert sized.check(ContinuationFrame(1, data=b"a" * 5000).serialize(), 0.0) == "header block too large"


def test_a_header_block_that_ends_resets_the_count() -> None:
    guard = FrameGuard(65536, 0.0, preface=False)
    for stream_id in range(1, 200, 2):
        block = HeadersFrame(stream_id, data=b"\x82").serialize() + ContinuationFrame(stream_id, data=b"\x84", flags=["END_HEADERS"]).serialize()
        assert guard.check(block, 0.0) is None


def test_frames_split_at_every_byte_count_the_same() -> None:
    data = PREFACE + flood(ping(), PING_BUDGET.burst + 1) + DataFrame(1, data=b"y" * 300).serialize()
    guard = FrameGuard(65536, 0.0)
    verdicts = [guard.check(data[i : i + 1], 0.0) for i in range(len(data))]
    problems = [index for index, verdict in enumerate(verdicts) if verdict is not None]
    # the budget is crossed by the frame whose 9-byte header completes at this byte
    expected = PREFACE_LENGTH + 17 * PING_BUDGET.burst + 8
    assert problems[0] == expected
    assert verdicts[expected] == "too many PING frames"
