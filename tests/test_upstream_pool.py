"""UpstreamPool under cancellation: slots are never leaked (the failure mode of httpcore #1093)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import trio

from llmrelay.config import load_config_text
from llmrelay.upstream.errors import UpstreamError
from llmrelay.upstream.pool import UpstreamPool, UpstreamRequest, UpstreamResponse
from mock_providers import MockProvider


def make_pool(mock: MockProvider, max_connections: int = 2) -> UpstreamPool:
    config = load_config_text(
        f'[endpoints.m]\ntarget_base = "{mock.base_url}/v1"\nprovider = "openai"\n'
        f"max_connections = {max_connections}\npool_timeout = 3\n",
        "test",
        environ={},
    )
    return UpstreamPool(config.endpoints[0].upstreams[0])


def request(mock: MockProvider, delay: str = "0", stream: bool = True) -> UpstreamRequest:
    body = b'{"model":"m","messages":[],"stream":%s}' % (b"true" if stream else b"false")
    return UpstreamRequest(
        method=b"POST",
        target=b"/v1/chat/completions",
        headers=[
            (b"host", f"127.0.0.1:{mock.port}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-mock-delay", delay.encode()),
            (b"x-mock-events", b"5"),
        ],
        body=body,
    )


async def body_chunks(response: UpstreamResponse) -> AsyncIterator[bytes]:
    while not response.complete:
        chunk = await response.read_chunk()
        if chunk:
            yield chunk


async def fetch(pool: UpstreamPool, req: UpstreamRequest) -> bytes:
    data = b""
    async with pool.stream(req) as response:
        assert response.status == 200
        async for chunk in body_chunks(response):
            data += chunk
    return data


async def test_cancellation_under_contention_leaves_the_pool_usable(mock: MockProvider) -> None:
    pool = make_pool(mock, max_connections=2)
    rng = random.Random(1093)
    cancelled = 0

    async def doomed() -> None:
        nonlocal cancelled
        with trio.move_on_after(rng.uniform(0.0, 0.4)) as scope:
            try:
                await fetch(pool, request(mock, delay="0.05"))
            except UpstreamError:
                pass
        cancelled += scope.cancelled_caught

    async with trio.open_nursery() as nursery:
        for _ in range(80):
            nursery.start_soon(doomed)
    assert cancelled > 20  # most were cut while waiting for a slot, connecting or reading

    with trio.fail_after(10):
        for _ in range(20):
            data = await fetch(pool, request(mock))
            assert data.endswith(b"data: [DONE]\n\n")
    stats = pool.statistics()
    assert stats["waiting"] == 0
    assert stats["connections"] <= 2
    await pool.aclose()


async def test_a_response_left_early_frees_its_slot(mock: MockProvider) -> None:
    pool = make_pool(mock, max_connections=1)
    for _ in range(5):
        async with pool.stream(request(mock, delay="0.2")) as response:
            async for _chunk in body_chunks(response):
                break  # leave mid-stream: the connection must be closed and the slot freed
    with trio.fail_after(5):
        assert (await fetch(pool, request(mock))).endswith(b"data: [DONE]\n\n")
    await pool.aclose()


async def test_a_tls_handshake_that_never_comes_times_out_and_closes_the_socket() -> None:
    """A target that accepts TCP but never answers the ClientHello: the connect timeout ends the
    attempt with UpstreamTimeout, and the half-made connection is closed, not left to the collector."""
    from llmrelay.config.resolved import Target
    from llmrelay.upstream.dial import Dialer
    from llmrelay.upstream.errors import UpstreamTimeout

    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    dialer = Dialer(Target("https", "127.0.0.1", port, ""), None, None, connect_timeout=0.3)
    with trio.fail_after(5):
        try:
            await dialer.connect()
        except UpstreamTimeout as exc:
            assert "timed out connecting" in str(exc)
        else:
            raise AssertionError("connected without a handshake")
        accepted, _ = await listener.accept()
        with accepted:
            data = await accepted.recv(65536)  # the ClientHello
            while data:
                data = await accepted.recv(65536)  # then the end of stream: the relay closed it
    listener.close()
