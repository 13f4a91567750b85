"""Real HTTP/2 clients against a real relay: httpx (`http2=True`) over TLS (ALPN) and with prior
knowledge (h2c), curl `--http2` / `--http2-prior-knowledge`, and the official OpenAI SDK on an HTTP/2
httpx client, streamed and not. The relay key is swapped and SSE events leave as they arrive, exactly
as over HTTP/1.1."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from relaytest import access_records, free_port, wait_until
from test_tls_listeners import CHAT, Certs, listeners_config

RELAY_KEY = "relay-key-h2"
PROVIDER_KEY = "sk-provider-h2"


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


@pytest.fixture
def relay(start_relay, mock, certs: Certs):  # type: ignore[no-untyped-def]
    plain, tls_port = free_port(), free_port()
    tls = {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file)}
    config = f'auth_keys = ["{RELAY_KEY}"]\n' + listeners_config(mock.base_url, plain, tls_port, tls)
    config += f'api_key = "{PROVIDER_KEY}"\n'
    relay = start_relay(config, port=plain, port_flag=False)
    relay.tls_url = f"https://127.0.0.1:{tls_port}"
    return relay


def test_httpx_http2_over_tls_and_h2c(relay, mock, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    headers = {"authorization": f"Bearer {RELAY_KEY}"}
    with httpx.Client(http2=True, verify=certs.client_context(), timeout=10) as client:
        answer = client.post(f"{relay.tls_url}/openai/v1/chat/completions", json=CHAT, headers=headers)
        assert answer.http_version == "HTTP/2"
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "Hello from mock openai"
    seen = mock.last()
    assert seen.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert RELAY_KEY not in str(seen.headers)
    assert seen.headers["x-forwarded-proto"] == "https"
    with httpx.Client(http1=False, http2=True, timeout=10) as client:  # prior knowledge on the plain port
        answer = client.post(relay.url("/openai/v1/chat/completions"), json=CHAT, headers=headers)
        assert answer.http_version == "HTTP/2"
        assert answer.status_code == 200
        refused = client.post(relay.url("/openai/v1/chat/completions"), json=CHAT)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key" or "relay key" in refused.text


def test_curl_http2_over_tls_and_prior_knowledge(relay, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    common = ["-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "-H", f"authorization: Bearer {RELAY_KEY}",
              "-H", "content-type: application/json", "-d", '{"model":"m","messages":[]}']
    tls = subprocess.run(
        ["curl", "--http2", "--cacert", str(certs.ca_file), *common, f"{relay.tls_url}/openai/v1/chat/completions"],
        capture_output=True, text=True, timeout=20,
    )
    assert tls.stdout == "2 200", tls.stderr
    plain = subprocess.run(
        ["curl", "--http2-prior-knowledge", *common, relay.url("/openai/v1/chat/completions")],
        capture_output=True, text=True, timeout=20,
    )
    assert plain.stdout == "2 200", plain.stderr


def test_openai_sdk_over_http2_streamed_and_not(relay, mock, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    async def run() -> tuple[str, list[str], list[float]]:
        async with httpx.AsyncClient(http2=True, verify=certs.client_context(), timeout=20) as http_client:
            client = openai.AsyncOpenAI(
                base_url=f"{relay.tls_url}/openai/v1", api_key=RELAY_KEY, http_client=http_client, max_retries=0
            )
            completion = await client.chat.completions.create(model="gpt-h2", messages=[{"role": "user", "content": "hi"}])
            stream = await client.chat.completions.create(
                model="gpt-h2",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                extra_headers={"x-mock-delay": "0.2", "x-mock-events": "5"},
            )
            pieces: list[str] = []
            arrivals: list[float] = []
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    arrivals.append(time.monotonic())
            return completion.choices[0].message.content or "", pieces, arrivals

    content, pieces, arrivals = asyncio.run(run())
    assert content == "Hello from mock openai"
    assert "".join(pieces) == "w0 w1 w2 w3 w4"
    # Each event left as it arrived: they reached the client spread over the mock's delays.
    assert arrivals[-1] - arrivals[0] >= 0.6
    assert mock.last().headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert wait_until(lambda: sum(1 for r in access_records(relay) if r.get("status") == "200") >= 2, 5)


def test_many_concurrent_streams_on_one_tls_connection(relay, mock, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(http2=True, verify=certs.client_context(), timeout=30, limits=limits) as client:
            headers = {"authorization": f"Bearer {RELAY_KEY}"}

            async def one(index: int) -> int:
                answer = await client.post(
                    f"{relay.tls_url}/openai/v1/chat/completions", json={**CHAT, "n": index}, headers=headers
                )
                assert answer.http_version == "HTTP/2"
                return answer.status_code

            return list(await asyncio.gather(*(one(i) for i in range(60))))

    assert asyncio.run(run()) == [200] * 60
