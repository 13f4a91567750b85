"""A request body that a failed attempt can send again: what was read from the client is kept in
memory, up to the endpoint's `retry_body_limit`, while it streams to the upstream.

The body is not read ahead: each attempt gets an iterator that first replays what earlier attempts
already took from the client, then goes on reading from the client (keeping those bytes too). Once
more than the limit has been read (or the client announced a larger `Content-Length`), nothing is
kept and the body can no longer be replayed: that request gets no further attempt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from llmrelay.proto.errors import RequestRejected
from llmrelay.relay.accesslog import AccessRecord
from llmrelay.server.exchange import Exchange


class ReplayableBody:
    __slots__ = ("_exchange", "_record", "_limit", "_kept", "_kept_bytes", "replayable", "_done", "_current", "_ahead")

    def __init__(self, exchange: Exchange, record: AccessRecord, limit: int) -> None:
        self._exchange = exchange
        self._record = record
        self._limit = limit
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        length = exchange.head.body_length
        self.replayable = length is None or length <= limit
        self._done = False
        self._current: AsyncIterator[bytes] | None = None
        self._ahead: list[bytes] = []  # read ahead past the limit: for the first attempt only

    def for_attempt(self, max_size: int) -> AsyncIterator[bytes] | bytes:
        """The body of the next attempt (whole bytes when the client's body was read to its end)."""
        if self._done:
            return b"".join(self._kept)
        self._current = self._stream(max_size)
        return self._current

    async def read_whole(self, max_size: int) -> bytes | None:
        """Read the rest of the body now, as long as it can be kept for replay: the whole body when
        it ended within the limit (the first attempt then sends it at once), else None (what was
        read is still sent by the first attempt; later attempts cannot replay it). For what must be
        known before an attempt starts: the model a limit rule looks at."""
        if not self.replayable or self._current is not None:
            return None
        exchange, record = self._exchange, self._record
        while not self._done:
            chunk = await exchange.receive_body()
            if not chunk:
                self._done = True
                break
            record.bytes_in += len(chunk)
            if record.bytes_in > max_size:
                raise RequestRejected(413, f"request body exceeds {max_size} bytes")
            self._kept.append(chunk)
            self._kept_bytes += len(chunk)
            if self._kept_bytes > self._limit:
                self._ahead = self._kept  # (the first attempt sends them; nothing more is kept)
                self._kept = []
                self.replayable = False
                return None
        return b"".join(self._kept)

    async def finish_attempt(self) -> None:
        """Close the iterator of an attempt that ended (it may stand in the middle of the body)."""
        current, self._current = self._current, None
        if current is not None:
            await current.aclose()  # type: ignore[attr-defined]

    async def _stream(self, max_size: int) -> AsyncIterator[bytes]:
        ahead, self._ahead = self._ahead, []
        for chunk in ahead or list(self._kept):
            yield chunk
        exchange, record = self._exchange, self._record
        while not self._done:
            chunk = await exchange.receive_body()
            if not chunk:
                self._done = True
                return
            record.bytes_in += len(chunk)
            if record.bytes_in > max_size:
                raise RequestRejected(413, f"request body exceeds {max_size} bytes")
            if self.replayable:
                self._kept_bytes += len(chunk)
                if self._kept_bytes <= self._limit:
                    self._kept.append(chunk)
                else:
                    self.replayable = False
                    self._kept.clear()
            yield chunk
