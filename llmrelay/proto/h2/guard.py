"""Abuse budgets of one HTTP/2 connection, checked on the raw frames before the connection processes them.

A faithful HTTP/2 server answers what a client sends: every PING gets its ACK, every SETTINGS frame
is applied and acknowledged, a stream opened and reset costs a request's setup, and a header block
may grow over many CONTINUATION frames. A client can make a server spend CPU and memory for nothing
that way (rapid reset, CVE-2023-44487; the CONTINUATION flood of 2024; PING and SETTINGS floods). The
`FrameGuard` reads the 9-byte header of every frame as the bytes arrive (a payload is skipped, never
copied) and charges each kind of frame to its own token bucket; a frame over its budget ends the
connection with GOAWAY(ENHANCE_YOUR_CALM) before any frame of that read is processed. Sans-IO: bytes
and a clock in, a verdict out.

The budgets are bursts that refill over time: an ordinary client (httpx, a browser, grpc's BDP pings)
never comes near them; a flood crosses them within a fraction of a second.
"""

from __future__ import annotations

import msgspec

PREFACE_LENGTH = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", before the first frame
FRAME_HEADER_LENGTH = 9

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = 0x1
END_HEADERS = 0x4
ACK = 0x1


class Budget(msgspec.Struct, frozen=True):
    """A token bucket's shape: `burst` frames at once, refilled at `per_second`."""

    burst: int
    per_second: float


# RST_STREAM from the client. Rapid reset opens streams and resets them at once, thousands a second;
# a client cancelling what its user gave up on resets a few.
RESET_BUDGET = Budget(200, 100.0)
# PING without ACK. Keep-alive and bandwidth probes are a few a second at most.
PING_BUDGET = Budget(50, 10.0)
# SETTINGS without ACK: one at the start, rarely any later.
SETTINGS_BUDGET = Budget(20, 5.0)
# WINDOW_UPDATE. A client may open its windows once for every DATA frame it reads, so every DATA frame
# we send adds `WINDOW_UPDATES_PER_DATA_FRAME` to the bucket, on top of the refill.
WINDOW_UPDATE_BUDGET = Budget(500, 100.0)
WINDOW_UPDATES_PER_DATA_FRAME = 2
# DATA frames that carry nothing and do not end the stream: they cost a frame each and move nothing.
EMPTY_DATA_BUDGET = Budget(100, 20.0)
# PRIORITY and frame types the server ignores (unknown extensions): nothing a relay acts upon.
OTHER_BUDGET = Budget(200, 50.0)
# One header block (HEADERS and its CONTINUATION frames) may take this many CONTINUATION frames; its
# size is bounded by the block limit given to the guard (the decoded header list limit).
MAX_CONTINUATIONS = 16


class _Bucket:
    __slots__ = ("burst", "rate", "tokens", "stamp", "ceiling")

    def __init__(self, budget: Budget, now: float, ceiling: int = 0) -> None:
        self.burst = float(budget.burst)
        self.rate = budget.per_second
        self.tokens = float(budget.burst)
        self.stamp = now
        self.ceiling = float(max(ceiling, budget.burst))  # credit may lift the tokens up to this

    def take(self, now: float) -> bool:
        tokens = self.tokens
        if tokens < self.burst:
            tokens = min(self.burst, tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def credit(self, count: int) -> None:
        self.tokens = min(self.ceiling, self.tokens + count)


class FrameGuard:
    """Scans the frames of one connection's inbound bytes and keeps its budgets.

    `check(data, now)` looks at every frame header that `data` completes and returns None while the
    client stays within its budgets, else why it did not (then the connection must end: the frames of
    `data` are not to be processed).
    """

    __slots__ = (
        "_skip", "_partial", "_block_stream", "_block_bytes", "_block_frames", "block_limit",
        "_resets", "_pings", "_settings", "_window_updates", "_empty_data", "_other",
    )

    def __init__(self, block_limit: int, now: float, preface: bool = True) -> None:
        self._skip = PREFACE_LENGTH if preface else 0  # bytes still to pass over (payload, preface)
        self._partial = b""  # the start of a frame header split between reads
        self._block_stream = 0  # the stream whose header block is open (no END_HEADERS yet), 0: none
        self._block_bytes = 0
        self._block_frames = 0
        self.block_limit = block_limit
        self._resets = _Bucket(RESET_BUDGET, now)
        self._pings = _Bucket(PING_BUDGET, now)
        self._settings = _Bucket(SETTINGS_BUDGET, now)
        self._window_updates = _Bucket(WINDOW_UPDATE_BUDGET, now, ceiling=WINDOW_UPDATE_BUDGET.burst * 16)
        self._empty_data = _Bucket(EMPTY_DATA_BUDGET, now)
        self._other = _Bucket(OTHER_BUDGET, now)

    def data_frames_sent(self, count: int) -> None:
        """We sent `count` DATA frames: the client may open its windows for each."""
        self._window_updates.credit(count * WINDOW_UPDATES_PER_DATA_FRAME)

    def check(self, data: bytes, now: float) -> str | None:
        size = len(data)
        position = self._skip
        if position >= size:
            self._skip = position - size
            return None
        partial = self._partial
        if partial:
            wanted = FRAME_HEADER_LENGTH - len(partial)
            if size < wanted:
                self._partial = partial + data
                self._skip = 0
                return None
            header = partial + data[:wanted]
            self._partial = b""
            problem = self._frame(header, 0, now)
            if problem is not None:
                return problem
            position = wanted + self._skip
        while position < size:
            if size - position < FRAME_HEADER_LENGTH:
                self._partial = data[position:]
                self._skip = 0
                return None
            problem = self._frame(data, position, now)
            if problem is not None:
                return problem
            position += FRAME_HEADER_LENGTH + self._skip
        self._skip = position - size
        return None

    def _frame(self, data: bytes, at: int, now: float) -> str | None:
        """Charge the frame whose header starts at `data[at]`; sets `_skip` to its payload length."""
        length = int.from_bytes(data[at : at + 3], "big")
        kind = data[at + 3]
        flags = data[at + 4]
        self._skip = length
        if self._block_stream:
            if kind != CONTINUATION:
                return None  # the connection refuses anything else inside a header block (PROTOCOL_ERROR)
            return self._continuation(length, flags)
        if kind == DATA:
            if length == 0 and not flags & END_STREAM and not self._empty_data.take(now):
                return "too many empty DATA frames"
        elif kind == HEADERS:
            if not flags & END_HEADERS:
                self._block_stream = int.from_bytes(data[at + 5 : at + 9], "big") & 0x7FFFFFFF or -1
                self._block_frames = 0
                self._block_bytes = length
                if length > self.block_limit:
                    return "header block too large"
        elif kind == WINDOW_UPDATE:
            if not self._window_updates.take(now):
                return "too many WINDOW_UPDATE frames"
        elif kind == RST_STREAM:
            if not self._resets.take(now):
                return "too many streams reset by the client (rapid reset)"
        elif kind == PING:
            if not flags & ACK and not self._pings.take(now):
                return "too many PING frames"
        elif kind == SETTINGS:
            if not flags & ACK and not self._settings.take(now):
                return "too many SETTINGS frames"
        elif kind == CONTINUATION:
            return None  # outside a header block: the connection refuses it (PROTOCOL_ERROR)
        elif kind not in (PUSH_PROMISE, GOAWAY) and not self._other.take(now):
            return "too many PRIORITY or unknown frames"
        return None

    def _continuation(self, length: int, flags: int) -> str | None:
        self._block_frames += 1
        self._block_bytes += length
        if self._block_frames > MAX_CONTINUATIONS:
            return "too many CONTINUATION frames in one header block"
        if self._block_bytes > self.block_limit:
            return "header block too large"
        if flags & END_HEADERS:
            self._block_stream = 0
        return None
