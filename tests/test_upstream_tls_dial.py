"""TLS to an https upstream on our own transport, whatever the way there: direct, tunnelled with
CONNECT through an http:// proxy, through SOCKS5 (pproxy); TLS inside an https:// proxy's TLS stays on
trio's streams. Each way: the dialer's transport, requests on one reused connection (a TLS 1.3 server's
session tickets do not make an idle connection look used up), HTTP/2 negotiated through a tunnel, a
certificate that does not verify, and a handshake that never ends (the connect timeout bounds it and
the socket is closed)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio
import trustme

from h2_provider import H2Provider
from llmrelay.config import load_config_text
from llmrelay.io.tls_transport import TlsTransport
from llmrelay.io.transport import StreamTransport
from llmrelay.upstream.errors import UpstreamConnectError, UpstreamTimeout
from llmrelay.upstream.pool import UpstreamPool, UpstreamRequest
from mock_providers import MockProvider
from relaytest import toml_value
from test_upstream_proxies import start_proxy, tls_mock  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(60)

WAYS = ["direct", "http-connect", "socks5", "socks5h"]


def make_pool(target_base: str, **keys: object) -> UpstreamPool:
    extra = "".join(f"{key} = {toml_value(value)}\n" for key, value in keys.items())
    config = load_config_text(
        f'[endpoints.m]\ntarget_base = "{target_base}"\nprovider = "openai"\npool_timeout = 10\n{extra}',
        "test",
        environ={},
    )
    return UpstreamPool(config.endpoints[0].upstreams[0])


def proxy_keys(way: str, start_proxy) -> dict[str, object]:  # noqa: F811
    if way == "direct":
        return {}
    proxy = start_proxy("http" if way == "http-connect" else "socks5")
    return {"proxy_url": proxy.url(scheme=None if way == "http-connect" else way)}


def chat(stream: bool = False) -> UpstreamRequest:
    payload = json.dumps({"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    return UpstreamRequest(method=b"POST", target=b"/v1/chat/completions", headers=headers, body=payload)


async def fetch(pool: UpstreamPool, request: UpstreamRequest) -> tuple[int, bytes]:
    async with pool.stream(request) as response:
        body = b""
        while not response.complete:
            body += await response.read_chunk()
        return response.status, body


@pytest.mark.parametrize("way", WAYS)
async def test_an_https_target_on_our_transport(tls_mock: tuple[MockProvider, Path], start_proxy, way: str) -> None:  # noqa: F811
    mock, ca_path = tls_mock
    pool = make_pool(f"https://localhost:{mock.port}/v1", ca_file=str(ca_path), **proxy_keys(way, start_proxy))
    transport = await pool.dialer.connect()
    assert isinstance(transport, TlsTransport) and transport.selected_alpn_protocol() is None
    assert transport.ssl_object.version() == "TLSv1.3"
    transport.close()
    for stream in (False, True, False, True):
        status, body = await fetch(pool, chat(stream))
        assert status == 200
        assert body.endswith(b"data: [DONE]\n\n") if stream else json.loads(body)["object"] == "chat.completion"
        await trio.sleep(0.05)  # (any late TLS record has arrived before the next request looks)
    assert len(mock.requests) == 4
    assert len({request.peer for request in mock.requests}) == 1  # one connection, kept alive throughout
    await pool.aclose()


@pytest.mark.parametrize("way", ["http-connect", "socks5"])
async def test_http2_negotiated_through_a_tunnel(start_proxy, way: str) -> None:  # noqa: F811
    with H2Provider() as h2mock:
        pool = make_pool(f"{h2mock.base_url}/v1", ca_file=str(h2mock.ca_path), http2=True, **proxy_keys(way, start_proxy))
        transport, protocol = await pool.dialer.connect_negotiated()
        assert isinstance(transport, TlsTransport) and protocol == "h2"
        transport.close()
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(fetch, pool, chat(True))
        status, body = await fetch(pool, chat())
        assert status == 200 and json.loads(body)["object"] == "chat.completion"
        assert h2mock.streams == 5
        await pool.aclose()


async def test_tls_inside_an_https_proxy_stays_on_trio_streams(
    tmp_path: Path, tls_mock: tuple[MockProvider, Path], start_proxy  # noqa: F811
) -> None:
    mock, ca_path = tls_mock
    proxy_ca = trustme.CA()
    cert, key = tmp_path / "proxy-cert.pem", tmp_path / "proxy-key.pem"
    issued = proxy_ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    proxy_ca_path = tmp_path / "proxy-ca.pem"
    proxy_ca.cert_pem.write_to_path(str(proxy_ca_path))
    proxy = start_proxy("http", tls=(cert, key))
    pool = make_pool(
        f"https://127.0.0.1:{mock.port}/v1",
        ca_file=str(ca_path),
        proxy_url=f"https://127.0.0.1:{proxy.port}",
        proxy_ca_file=str(proxy_ca_path),
    )
    transport = await pool.dialer.connect()
    assert isinstance(transport, StreamTransport) and isinstance(transport.stream, trio.SSLStream)
    assert isinstance(transport.stream.transport_stream, trio.SSLStream)
    transport.close()
    status, _ = await fetch(pool, chat())
    assert status == 200 and len(mock.requests) == 1
    await pool.aclose()


@pytest.mark.parametrize("way", WAYS)
async def test_a_certificate_that_does_not_verify(tls_mock: tuple[MockProvider, Path], start_proxy, way: str) -> None:  # noqa: F811
    mock, _ca_path = tls_mock  # no ca_file: certifi's bundle, which does not know the test CA
    pool = make_pool(f"https://localhost:{mock.port}/v1", **proxy_keys(way, start_proxy))
    with pytest.raises(UpstreamConnectError) as caught:
        await pool.dialer.connect()
    message = str(caught.value)
    assert message.startswith("TLS handshake with the upstream failed: [SSL: CERTIFICATE_VERIFY_FAILED]"), message
    assert mock.requests == []
    await pool.aclose()


async def test_the_connect_timeout_bounds_the_handshake_and_the_socket_is_closed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts in the kernel, never answers
        port = listener.getsockname()[1]
        pool = make_pool(f"https://127.0.0.1:{port}/v1", connect_timeout=0.3)
        started = trio.current_time()
        with pytest.raises(UpstreamTimeout):
            await pool.dialer.connect()
        assert trio.current_time() - started < 2
        server, _ = listener.accept()
        with server:
            server.settimeout(5)
            hello = server.recv(65536)
            assert hello[:1] == b"\x16"  # a ClientHello went out
            while data := server.recv(65536):  # then the end: the relay closed its socket
                hello += data
        await pool.aclose()
