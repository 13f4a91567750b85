"""HTTP/2 frames read back by hyperframe, an independent parser: what a peer would see of our bytes."""

from __future__ import annotations

from hyperframe.frame import Frame


def parse_frames(data: bytes) -> list[Frame]:
    """Every whole frame of `data`, in order (a truncated last frame fails the caller's test)."""
    found = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        assert len(data) >= 9 + length, "a truncated frame"
        frame.parse_body(memoryview(data[9 : 9 + length]))
        found.append(frame)
        data = data[9 + length :]
    return found
