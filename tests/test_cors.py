"""CORS on a real relay: preflights answered locally (never forwarded, no relay key needed), and the
CORS headers on actual responses (upstream answers, the relay's own errors, streamed SSE)."""

from __future__ import annotations

import http.server
import queue
import re
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from mock_providers import MockProvider
from relaytest import endpoint_config

APP = "https://app.example.com"
RELAY_KEY = "rk-browser-app"


def cors_config(mock: MockProvider) -> str:
    return (
        f'auth_keys = ["{RELAY_KEY}"]\n'
        + endpoint_config(
            "oai",
            mock,
            "openai",
            "/v1",
            api_key="sk-provider",
            cors={"allow_origins": [APP], "expose_headers": ["x-request-id"], "max_age": 120},
        )
        + endpoint_config("plain", mock, "openai", "/v1", api_key="sk-provider")
    )


@pytest.fixture
def relay(mock: MockProvider, start_relay):  # type: ignore[no-untyped-def]
    return start_relay(cors_config(mock))


def preflight(relay, origin: str, method: str = "POST", headers: str = "authorization, content-type") -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.options(
        relay.url("/oai/v1/chat/completions"),
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
        timeout=10,
    )


def test_preflight_answered_locally_without_a_relay_key(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    answer = preflight(relay, APP)
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == APP
    assert answer.headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
    assert answer.headers["access-control-allow-headers"] == "authorization, content-type"
    assert answer.headers["access-control-max-age"] == "120"
    assert answer.headers["vary"] == "origin"
    assert answer.content == b""
    assert mock.count() == 0


@pytest.mark.parametrize(
    ("origin", "method", "headers"),
    [("https://evil.example.com", "POST", "content-type"), (APP, "DELETE", "content-type"), (APP, "POST", "x-secret")],
)
def test_disallowed_preflight_is_403_without_cors_headers(relay, mock: MockProvider, origin: str, method: str, headers: str) -> None:  # type: ignore[no-untyped-def]
    answer = preflight(relay, origin, method, headers)
    assert answer.status_code == 403
    assert not [name for name in answer.headers if name.startswith("access-control-")]
    assert answer.json()["error"]["message"].startswith("CORS preflight refused")
    assert mock.count() == 0


def test_actual_responses_get_cors_headers(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {RELAY_KEY}", "Origin": APP}
    ok = httpx.post(relay.url("/oai/v1/chat/completions"), json=body, headers=auth, timeout=10)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == APP
    assert ok.headers["access-control-expose-headers"] == "x-request-id"
    assert ok.headers["vary"] == "origin"
    # the relay's own 401 (no relay key), a streamed answer, an upstream's 429
    unauthorized = httpx.post(relay.url("/oai/v1/chat/completions"), json=body, headers={"Origin": APP}, timeout=10)
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == APP
    with httpx.stream(
        "POST", relay.url("/oai/v1/chat/completions"), json={**body, "stream": True}, headers=auth, timeout=10
    ) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert streamed.headers["access-control-allow-origin"] == APP
        assert b"[DONE]" in b"".join(streamed.iter_raw())
    limited = httpx.post(  # (last: the provider key cools down after it)
        relay.url("/oai/v1/chat/completions"), json=body, headers={**auth, "x-mock-status": "429"}, timeout=10
    )
    assert limited.status_code == 429
    assert limited.headers["access-control-allow-origin"] == APP


def test_other_origins_and_routes_get_no_cors(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {RELAY_KEY}"}
    evil = httpx.post(
        relay.url("/oai/v1/chat/completions"), json=body, headers={**auth, "Origin": "https://evil.example.com"}, timeout=10
    )
    assert evil.status_code == 200
    assert "access-control-allow-origin" not in evil.headers
    no_route = httpx.post(relay.url("/nowhere/v1/chat/completions"), json=body, headers={"Origin": APP}, timeout=10)
    assert no_route.status_code == 404
    assert "access-control-allow-origin" not in no_route.headers
    no_cors = httpx.post(relay.url("/plain/v1/chat/completions"), json=body, headers={**auth, "Origin": APP}, timeout=10)
    assert no_cors.status_code == 200
    assert "access-control-allow-origin" not in no_cors.headers


def test_options_on_a_route_without_cors_is_forwarded(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    answer = httpx.options(
        relay.url("/plain/v1/chat/completions"),
        headers={"Origin": APP, "Access-Control-Request-Method": "POST", "Authorization": f"Bearer {RELAY_KEY}"},
        timeout=10,
    )
    assert mock.count(method="OPTIONS") == 1
    assert answer.status_code == 404  # (the mock's answer to OPTIONS on that path)


def test_upstream_cors_headers_never_reach_the_client(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    mock.answer(200, path="/v1/models", headers={"Access-Control-Allow-Origin": "*"})
    auth = {"Authorization": f"Bearer {RELAY_KEY}"}
    evil = httpx.get(relay.url("/oai/v1/models"), headers={**auth, "Origin": "https://evil.example.com"}, timeout=10)
    assert evil.status_code == 200
    assert "access-control-allow-origin" not in evil.headers
    app = httpx.get(relay.url("/oai/v1/models"), headers={**auth, "Origin": APP}, timeout=10)
    assert app.headers.get_list("access-control-allow-origin") == [APP]


# -- a browser's point of view: headless Chromium on a page of another origin ------------------------

PAGE = """<!doctype html>
<html><body><pre id="out">pending</pre><script>
const out = document.getElementById("out");
(async () => {
  try {
    const response = await fetch("RELAY/oai/v1/chat/completions", {
      method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer KEY", "X-Custom": "1",
                "X-Mock-Events": "5", "X-Mock-Delay": "0.2"},
      body: JSON.stringify({model: "m", stream: true, messages: [{role: "user", content: "hi"}]}),
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = "", reads = 0;
    while (true) {
      const {done, value} = await reader.read();
      if (done) break;
      reads += 1;
      text += decoder.decode(value, {stream: true});
    }
    const events = (text.match(/^data: /gm) || []).length;
    out.textContent = "OK status=" + response.status + " events=" + events + " done=" + text.includes("[DONE]")
      + " reads=" + reads + " request-id=" + (response.headers.get("x-request-id") ? "visible" : "hidden");
  } catch (error) {
    out.textContent = "BLOCKED " + error.name;
  }
  await fetch("/result", {method: "POST", body: out.textContent});  // (same origin: tells the test)
})();
</script></body></html>
"""


class _PageServer:
    """A tiny HTTP server on its own port (its own origin) serving the page, and taking its outcome."""

    def __init__(self) -> None:
        self.page = b""
        self.results: queue.Queue[str] = queue.Queue()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                outer.results.put(self.rfile.read(length).decode())
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:
                body = outer.page
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def browse(page: _PageServer, profile: Path) -> str:
    """What the page reported once its script ran, in a headless Chromium (stopped afterwards)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium is not None, "headless Chromium is required (Debian package chromium)"
    browser = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",  # (keeps a headless browser open without a dump)
            page.origin + "/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return page.results.get(timeout=60)
    except queue.Empty:
        raise AssertionError("the page reported nothing within 60 s") from None
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait(10)


def test_chromium_streams_from_an_allowed_origin_and_is_blocked_elsewhere(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    allowed_page = _PageServer()
    other_page = _PageServer()
    try:
        config = f'auth_keys = ["{RELAY_KEY}"]\n' + endpoint_config(
            "oai",
            mock,
            "openai",
            "/v1",
            api_key="sk-provider",
            cors={
                "allow_origins": [allowed_page.origin],
                "allow_headers": ["authorization", "content-type", "x-custom", "x-mock-*"],
                "expose_headers": ["x-request-id"],
            },
        )
        relay = start_relay(config)
        page = PAGE.replace("RELAY", relay.base_url).replace("KEY", RELAY_KEY)
        allowed_page.page = other_page.page = page.encode()
        outcome = browse(allowed_page, tmp_path / "profile-allowed")
        found = re.fullmatch(r"OK status=200 events=(\d+) done=true reads=(\d+) request-id=visible", outcome)
        assert found is not None, outcome
        assert int(found.group(1)) >= 6  # (5 content deltas, the last chunk, [DONE])
        assert int(found.group(2)) >= 3  # the body arrived in pieces as the events were sent: streamed
        assert mock.count(method="POST") == 1 and mock.count(method="OPTIONS") == 0  # (the preflight was answered locally)
        assert mock.last().headers["x-custom"] == "1"
        blocked = browse(other_page, tmp_path / "profile-other")
        assert blocked == "BLOCKED TypeError", blocked
        assert mock.count() == 1  # (its preflight was refused: the request itself was never sent)
    finally:
        allowed_page.close()
        other_page.close()
