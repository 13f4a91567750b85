"""HTTP/2 to providers: `UpstreamPool` with `http2 = true` against a TLS mock speaking h2 (`h2_provider`).

Pool-level tests drive `UpstreamPool.stream()` directly: multiplexing (one connection, many streams),
the server's SETTINGS_MAX_CONCURRENT_STREAMS, GOAWAY (in-flight streams finish, unprocessed ones are
sent again elsewhere), cancellation of many streams mid-flight (the stream count returns to zero and
new requests flow: httpcore #1022), ALPN fallback to HTTP/1.1, trailers, resets, a malformed head,
timeouts, a drain interrupt and a 20 MiB body under flow control. The last test runs a real relay
process in front of the mock, driven by the official openai SDK.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest
import trio
import trustme

from h2_provider import H2Provider
from llmrelay.config import load_config_text
from llmrelay.io.tls_transport import TlsTransport
from llmrelay.upstream.errors import UpstreamError, UpstreamPoolFull, UpstreamProtocolError, UpstreamTimeout
from llmrelay.upstream.h2connection import H2Connection
from llmrelay.upstream.pool import UpstreamPool, UpstreamRequest, UpstreamResponse
from mock_providers import MockProvider
from relaytest import endpoint_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def h2mock() -> Iterator[H2Provider]:
    with H2Provider() as provider:
        yield provider


def make_pool(base_url: str, ca_path: Path, **keys: object) -> UpstreamPool:
    keys = {"pool_timeout": 10, **keys}
    extra = "".join(f"{key} = {value}\n" for key, value in keys.items())
    config = load_config_text(
        f'[endpoints.m]\ntarget_base = "{base_url}/v1"\nprovider = "openai"\nhttp2 = true\n'
        f'ca_file = "{ca_path}"\n{extra}',
        "test",
        environ={},
    )
    return UpstreamPool(config.endpoints[0].upstreams[0])


def chat(stream: bool = False, body: bytes | None = None, **options: str) -> UpstreamRequest:
    payload = body if body is not None else json.dumps(
        {"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    ).encode()
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    headers += [(f"x-mock-{name.replace('_', '-')}".encode(), value.encode()) for name, value in options.items()]
    return UpstreamRequest(method=b"POST", target=b"/v1/chat/completions", headers=headers, body=payload)


async def read_all(response: UpstreamResponse) -> bytes:
    data = b""
    while not response.complete:
        data += await response.read_chunk()
    return data


async def fetch(pool: UpstreamPool, request: UpstreamRequest) -> tuple[int, bytes]:
    async with pool.stream(request) as response:
        return response.status, await read_all(response)


def h2_connections(pool: UpstreamPool) -> list[H2Connection]:
    assert pool.h2 is not None
    return list(pool.h2._placed)


def assert_no_stream_held(pool: UpstreamPool) -> None:
    for connection in h2_connections(pool):
        assert connection.reserved == 0
        assert not connection.streams
        if not connection.closed:
            assert connection.h2.open_outbound_streams == 0


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# -- multiplexing ------------------------------------------------------------------------------------------


async def test_json_and_sse_share_one_h2_connection(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path)
    results: list[tuple[int, bytes]] = []

    async def one(index: int) -> None:
        results.append(await fetch(pool, chat(stream=index % 2 == 1, events="5", event_delay="0.02")))

    async with trio.open_nursery() as nursery:
        for index in range(20):
            nursery.start_soon(one, index)
    assert len(results) == 20 and all(status == 200 for status, _ in results)
    streamed = [body for _, body in results if body.startswith(b"data: ")]
    whole = [json.loads(body) for _, body in results if body.startswith(b"{")]
    assert len(streamed) == 10 and all(body.endswith(b"data: [DONE]\n\n") for body in streamed)
    assert len(whole) == 10 and all(item["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4" for item in whole)
    assert h2mock.connections == 1 and h2mock.streams == 20
    assert h2mock.max_active > 1  # the streams were in flight together on the one connection
    assert all(request.protocol == "HTTP/2" and request.headers[":authority"] == "127.0.0.1" for request in h2mock.requests)
    assert "host" not in h2mock.requests[0].headers and "content-length" in h2mock.requests[0].headers
    assert pool.statistics()["h2_connections"] == 1
    assert_no_stream_held(pool)
    await pool.aclose()


async def test_server_stream_limit_opens_a_second_connection() -> None:
    with H2Provider(max_concurrent_streams=5) as mock:
        pool = make_pool(mock.base_url, mock.ca_path, max_connections=10)
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await fetch(pool, chat(delay="0.3")))[0])

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
        assert statuses == [200] * 20
        assert mock.max_active <= 5  # never above the server's SETTINGS_MAX_CONCURRENT_STREAMS
        assert 2 <= mock.connections <= 4
        assert_no_stream_held(pool)
        await pool.aclose()


async def test_server_stream_limit_with_the_connection_cap_makes_requests_wait() -> None:
    with H2Provider(max_concurrent_streams=5) as mock:
        pool = make_pool(mock.base_url, mock.ca_path, max_connections=1)
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await fetch(pool, chat(delay="0.1")))[0])

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
        assert statuses == [200] * 20
        assert mock.connections == 1 and mock.max_active == 5
        await pool.aclose()


async def test_pool_timeout_when_every_stream_is_taken() -> None:
    with H2Provider(max_concurrent_streams=1) as mock:
        pool = make_pool(mock.base_url, mock.ca_path, max_connections=1, pool_timeout=0.3)
        async with pool.stream(chat(stream=True, stall="1")):
            with pytest.raises(UpstreamPoolFull):
                await fetch(pool, chat())
        assert (await fetch(pool, chat()))[0] == 200
        await pool.aclose()


async def test_requests_waiting_for_a_connection_that_cannot_open_fail_together(h2mock: H2Provider) -> None:
    """A target that takes TCP but never answers the TLS handshake: the requests waiting for the one
    connection being opened fail with its error, not one after another after their own attempts."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    held: list[trio.SocketStream] = []

    async def accept_and_hold() -> None:
        while True:
            held.append(await listeners[0].accept())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_and_hold)
        port = listeners[0].socket.getsockname()[1]
        pool = make_pool(f"https://127.0.0.1:{port}", h2mock.ca_path, connect_timeout=0.5)
        errors: list[UpstreamError] = []

        async def one() -> None:
            try:
                await fetch(pool, chat())
            except UpstreamError as exc:
                errors.append(exc)

        started = trio.current_time()
        async with trio.open_nursery() as requests:
            for _ in range(10):
                requests.start_soon(one)
        assert len(errors) == 10 and all(isinstance(error, UpstreamTimeout) for error in errors)
        assert trio.current_time() - started < 2.5  # (one after another would take 5 s)
        assert pool.statistics()["connections"] == 0
        await pool.aclose()
        nursery.cancel_scope.cancel()


# -- GOAWAY --------------------------------------------------------------------------------------------------


async def test_goaway_lets_in_flight_streams_finish_and_moves_new_requests(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path)
    bodies: list[bytes] = []

    async def slow() -> None:
        bodies.append((await fetch(pool, chat(stream=True, events="10", event_delay="0.05")))[1])

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(slow)
        await wait_for(lambda: h2mock.active == 10)
        await trio.to_thread.run_sync(h2mock.goaway)
        await trio.sleep(0.05)
        status, _ = await fetch(pool, chat())  # while the old connection is still finishing
        assert status == 200
        assert h2mock.requests[-1].connection == 1
    assert len(bodies) == 10 and all(body.endswith(b"data: [DONE]\n\n") for body in bodies)
    assert h2mock.connections == 2
    assert len(h2_connections(pool)) == 1  # the old one closed once its streams were done
    assert_no_stream_held(pool)
    await pool.aclose()


async def test_goaway_after_a_request_is_answered_then_the_next_goes_elsewhere(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path)
    assert (await fetch(pool, chat(goaway="after")))[0] == 200
    assert (await fetch(pool, chat()))[0] == 200
    assert [request.connection for request in h2mock.requests] == [0, 1]
    await pool.aclose()


async def test_requests_above_the_last_stream_id_are_sent_again(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path)
    bodies: list[bytes] = []

    async def slow() -> None:
        bodies.append((await fetch(pool, chat(stream=True, events="5", event_delay="0.05")))[1])

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(slow)
        # (the three must be past the mock's refusal point: a request is counted active from its
        # headers, before its answer starts, and one still on its way would be the one refused)
        await wait_for(lambda: h2mock.active == 3 and h2mock.answering == 3)
        h2mock.refuse_next = 1
        status, body = await fetch(pool, chat())
        assert status == 200 and json.loads(body)["object"] == "chat.completion"
    assert h2mock.refused == 1
    assert h2mock.requests[-1].connection == 1  # the refused request, sent again on a new connection
    assert len(bodies) == 3 and all(body.endswith(b"data: [DONE]\n\n") for body in bodies)
    assert_no_stream_held(pool)
    await pool.aclose()


# -- cancellation (httpcore #1022) -------------------------------------------------------------------------


async def test_cancelling_100_streams_mid_flight_leaves_the_connection_usable(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path)
    assert (await fetch(pool, chat()))[0] == 200  # one connection, settled
    heads = 0

    async def doomed(index: int, scope: trio.CancelScope) -> None:
        nonlocal heads
        with scope:
            if index % 4 == 0:  # cancelled while waiting for the head
                await fetch(pool, chat(stream=True, delay="30"))
            else:  # cancelled mid-body
                async with pool.stream(chat(stream=True, stall="1")) as response:
                    heads += 1
                    await read_all(response)

    scopes = [trio.CancelScope() for _ in range(100)]
    async with trio.open_nursery() as nursery:
        for index, scope in enumerate(scopes):
            nursery.start_soon(doomed, index, scope)
        await wait_for(lambda: heads == 75 and h2mock.active == 100)
        connection = h2_connections(pool)[0]
        assert connection.reserved == 100 and connection.h2.open_outbound_streams == 100
        for scope in scopes:
            scope.cancel()
    assert_no_stream_held(pool)
    await wait_for(lambda: h2mock.active == 0)
    assert h2mock.client_resets == 100  # every stream was reset, not left open upstream

    statuses: list[int] = []

    async def one(index: int) -> None:
        statuses.append((await fetch(pool, chat(stream=index % 2 == 0)))[0])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for index in range(100):
                nursery.start_soon(one, index)
    assert statuses == [200] * 100
    assert h2mock.connections == 1
    assert_no_stream_held(pool)
    await pool.aclose()


async def test_random_cancellation_never_leaks_a_stream_place() -> None:
    with H2Provider(max_concurrent_streams=3) as mock:
        pool = make_pool(mock.base_url, mock.ca_path, max_connections=2)
        rng = __import__("random").Random(1022)

        async def doomed() -> None:
            with trio.move_on_after(rng.uniform(0.0, 0.3)):
                try:
                    await fetch(pool, chat(stream=True, events="5", event_delay="0.03"))
                except UpstreamError:
                    pass

        async with trio.open_nursery() as nursery:
            for _ in range(60):
                nursery.start_soon(doomed)
        assert_no_stream_held(pool)
        with trio.fail_after(10):
            for _ in range(10):
                assert (await fetch(pool, chat()))[0] == 200
        assert pool.statistics()["waiting"] == 0 and pool.statistics()["h2_streams"] == 0
        await pool.aclose()


# -- ALPN fallback -----------------------------------------------------------------------------------------


@pytest.fixture
def h1_tls_mock(tmp_path: Path) -> Iterator[tuple[MockProvider, Path]]:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    with MockProvider(tls_context=context) as provider:
        yield provider, ca_path


async def test_an_upstream_without_h2_in_alpn_is_reached_over_http11(h1_tls_mock: tuple[MockProvider, Path]) -> None:
    mock, ca_path = h1_tls_mock
    pool = make_pool(mock.base_url, ca_path)
    results: list[tuple[int, bytes]] = []

    async def one(index: int) -> None:
        results.append(await fetch(pool, chat(stream=index % 2 == 0, events="3")))

    async with trio.open_nursery() as nursery:
        for index in range(6):
            nursery.start_soon(one, index)
    assert [status for status, _ in results] == [200] * 6
    assert sum(body.endswith(b"data: [DONE]\n\n") for _, body in results) == 3
    assert pool.h2 is not None and pool.h2.h1_only and not h2_connections(pool)
    assert len(mock.requests) == 6
    async with pool.stream(chat()) as response:
        await read_all(response)
        assert response.trailers is None
    await pool.aclose()


async def test_connect_offers_only_http11_and_connect_negotiated_offers_h2(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path)
    plain = await pool.dialer.connect()  # (WebSocket upgrades and health checks rely on HTTP/1.1)
    assert isinstance(plain, TlsTransport) and plain.selected_alpn_protocol() is None
    plain.close()
    negotiated, protocol = await pool.dialer.connect_negotiated()
    assert protocol == "h2" and isinstance(negotiated, TlsTransport)
    negotiated.close()
    await pool.aclose()


async def test_a_plain_http_target_with_http2_uses_http11(mock: MockProvider) -> None:
    config = load_config_text(
        f'[endpoints.m]\ntarget_base = "{mock.base_url}/v1"\nprovider = "openai"\nhttp2 = true\n', "test", environ={}
    )
    pool = UpstreamPool(config.endpoints[0].upstreams[0])
    assert pool.h2 is None  # no h2c upstream
    status, body = await fetch(pool, chat())
    assert status == 200 and json.loads(body)["object"] == "chat.completion"
    await pool.aclose()


# -- responses ----------------------------------------------------------------------------------------------


async def test_trailers_arrive_once_the_body_is_complete(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path)
    for stream in (False, True):
        async with pool.stream(chat(stream=stream, trailers="1")) as response:
            assert response.trailers is None
            body = await read_all(response)
            assert response.trailers == [(b"x-mock-trailer", b"done")]
        assert body.endswith(b"data: [DONE]\n\n") if stream else json.loads(body)["object"] == "chat.completion"
    async with pool.stream(chat()) as response:
        await read_all(response)
        assert response.trailers is None
    await pool.aclose()


async def test_a_stream_reset_by_the_provider_is_a_protocol_error(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path)
    with pytest.raises(UpstreamProtocolError, match="reset"):
        await fetch(pool, chat(reset="internal"))
    assert (await fetch(pool, chat()))[0] == 200
    assert h2mock.connections == 1  # a stream error, not a connection error
    assert_no_stream_held(pool)
    await pool.aclose()


async def test_a_malformed_response_head_is_a_protocol_error(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path)
    with pytest.raises(UpstreamProtocolError):
        await fetch(pool, chat(malformed="1"))
    assert (await fetch(pool, chat()))[0] == 200
    await pool.aclose()


async def test_first_byte_and_idle_timeouts(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path, first_byte_timeout=0.3, idle_timeout=0.3)
    with pytest.raises(UpstreamTimeout, match="no response headers"):
        await fetch(pool, chat(delay="5"))
    with pytest.raises(UpstreamTimeout, match="mid-body"):
        await fetch(pool, chat(stream=True, stall="1"))
    await wait_for(lambda: h2mock.active == 0)
    assert (await fetch(pool, chat()))[0] == 200
    assert h2mock.connections == 1
    await pool.aclose()


async def test_interrupt_resets_the_stream(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path)
    call = pool.stream(chat(stream=True, stall="1"))
    async with call as response:
        await response.read_chunk()
        call.interrupt()
        with pytest.raises(UpstreamProtocolError, match="interrupted"):
            await read_all(response)
        await wait_for(lambda: h2mock.client_resets == 1)  # left before the block exits
    assert (await fetch(pool, chat()))[0] == 200
    await pool.aclose()


async def test_a_20_mib_body_respects_flow_control(h2mock: H2Provider) -> None:
    pool = make_pool(h2mock.base_url, h2mock.ca_path)
    blob = bytes(range(256)) * (20 * 4096)
    digest = hashlib.sha256(blob).hexdigest()

    def echo(body: bytes | AsyncIterator[bytes], length: int | None) -> UpstreamRequest:
        headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/octet-stream")]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        else:
            headers.append((b"transfer-encoding", b"chunked"))
        return UpstreamRequest(method=b"POST", target=b"/echo", headers=headers, body=body, chunked=length is None)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(blob), 1 << 20):
            yield blob[start : start + (1 << 20)]

    for request in (echo(blob, len(blob)), echo(pieces(), None)):
        status, body = await fetch(pool, request)
        assert status == 200
        assert json.loads(body) == {"length": len(blob), "sha256": digest}
    assert h2mock.connections == 1
    assert "transfer-encoding" not in h2mock.requests[-1].headers
    await pool.aclose()


# -- a real relay ---------------------------------------------------------------------------------------------


def test_relay_reaches_an_h2_provider_with_the_openai_sdk(h2mock: H2Provider, start_relay) -> None:  # type: ignore[no-untyped-def]
    config = endpoint_config("h2", h2mock, http2=True, ca_file=str(h2mock.ca_path))  # type: ignore[arg-type]
    relay = start_relay(config)
    client = openai.OpenAI(base_url=relay.url("/h2/v1"), api_key="sk-client", max_retries=0, timeout=10)
    messages = [{"role": "user", "content": "hi"}]
    completion = client.chat.completions.create(model="gpt-mock", messages=messages)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "Hello from mock h2"
    stream = client.chat.completions.create(
        model="gpt-mock", messages=messages, stream=True, extra_headers={"x-mock-events": "4"}  # type: ignore[arg-type]
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "w0 w1 w2 w3"
    assert h2mock.connections == 1 and h2mock.streams == 2
    assert all(request.protocol == "HTTP/2" for request in h2mock.requests)
    assert h2mock.requests[0].headers["authorization"] == "Bearer sk-client"


def test_trailers_pass_from_an_h2_provider_to_an_h2_client_through_the_relay(h2mock: H2Provider, start_relay) -> None:  # type: ignore[no-untyped-def]
    """gRPC-style trailers: the provider's trailing HEADERS reach an HTTP/2 client as trailers."""
    import h2.config
    import h2.connection
    import h2.events

    relay = start_relay(endpoint_config("h2", h2mock, http2=True, ca_file=str(h2mock.ca_path)))  # type: ignore[arg-type]
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        client.send_headers(
            1,
            [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/h2/v1/chat/completions"),
             (b":authority", b"relay"), (b"content-type", b"application/json"), (b"x-mock-trailers", b"1"),
             (b"te", b"trailers")],
        )
        client.send_data(1, body, end_stream=True)
        sock.sendall(client.data_to_send())
        trailers = None
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data, "the relay closed the connection before the stream ended"
            for event in client.receive_data(data):
                if isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(client.data_to_send())
    assert trailers == {b"x-mock-trailer": b"done"}
