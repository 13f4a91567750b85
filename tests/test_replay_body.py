"""`ReplayableBody`: what an attempt took from the client is kept (up to the limit) and replayed to the
next attempt, which then goes on reading from the client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llmrelay.proto.errors import RequestRejected
from llmrelay.relay.accesslog import AccessRecord
from llmrelay.relay.replay import ReplayableBody


class Head:
    def __init__(self, length: int | None) -> None:
        self.body_length = length


class FakeExchange:
    """The part of an exchange the body reads: chunks, then b"" at the end."""

    def __init__(self, chunks: list[bytes], length: int | None) -> None:
        self.head = Head(length)
        self._chunks = list(chunks)

    async def receive_body(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


async def take(body: AsyncIterator[bytes] | bytes, n: int | None = None) -> bytes:
    if isinstance(body, bytes):
        return body
    out = b""
    async for chunk in body:
        out += chunk
        n = None if n is None else n - 1
        if n == 0:
            break
    return out


def make(chunks: list[bytes], limit: int, chunked: bool = False) -> ReplayableBody:
    exchange = FakeExchange(chunks, None if chunked else sum(map(len, chunks)))
    return ReplayableBody(exchange, AccessRecord("POST", "/", "r", "c", 0.0), limit)  # type: ignore[arg-type]


async def test_an_attempt_cut_midway_is_replayed_then_continued() -> None:
    body = make([b"aa", b"bb", b"cc"], limit=100)
    assert await take(body.for_attempt(1000), 2) == b"aabb"
    await body.finish_attempt()
    assert body.replayable
    assert await take(body.for_attempt(1000)) == b"aabbcc"
    await body.finish_attempt()
    assert body.for_attempt(1000) == b"aabbcc"  # read to its end: whole bytes from now on


async def test_a_declared_length_over_the_limit_is_never_replayable() -> None:
    body = make([b"x" * 10], limit=5)
    assert not body.replayable
    assert await take(body.for_attempt(1000)) == b"x" * 10


async def test_a_chunked_body_streamed_past_the_limit_stops_being_replayable() -> None:
    body = make([b"123", b"456", b"789"], limit=5, chunked=True)
    assert await take(body.for_attempt(1000), 1) == b"123"
    assert body.replayable
    await body.finish_attempt()
    assert await take(body.for_attempt(1000)) == b"123456789"
    assert not body.replayable


async def test_the_upstreams_size_limit_still_applies() -> None:
    body = make([b"x" * 10, b"y" * 10], limit=100, chunked=True)
    with pytest.raises(RequestRejected):
        await take(body.for_attempt(15))
