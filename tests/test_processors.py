"""Processors on a real relay, with the official SDKs and httpx, streamed and not: what the upstream
received (the mock records it), what the client got; untouched requests arrive byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from mock_providers import MockProvider
from relaytest import endpoint_config, toml_value


def processors(endpoint: str, *tables: dict[str, object]) -> str:
    text = ""
    for table in tables:
        text += f"\n[[endpoints.{endpoint}.processors]]\n"
        text += "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items())
    return text


@pytest.fixture
def relay(mock: MockProvider, start_relay):  # type: ignore[no-untyped-def]
    config = (
        endpoint_config("oai", mock, "openai", "/v1", api_key="sk-openai")
        + processors(
            "oai",
            {"model_map": {"gpt-4": "gpt-4o"}, "allowed_models": ["gpt-4o*"]},
            {"max_tokens_cap": 100},
            {"system_prompt": "Answer in French.", "mode": "prepend"},
            {"set_headers": {"x-team": "blue"}, "remove_headers": ["x-drop-me"]},
            {"set_response_headers": {"x-policy": "applied"}, "remove_response_headers": ["x-mock-request-index"]},
        )
        + endpoint_config("nostream", mock, "openai", "/v1", api_key="sk-openai")
        + processors("nostream", {"allow_streaming": False})
        + endpoint_config("onlystream", mock, "openai", "/v1", api_key="sk-openai")
        + processors("onlystream", {"allow_non_streaming": False})
        + endpoint_config("claude", mock, "anthropic", "", api_key="sk-ant")
        + processors(
            "claude",
            {"default_model": "claude-default", "allowed_models": ["claude-*"]},
            {"system_prompt": "Be brief.", "mode": "replace"},
            {"max_tokens_cap": 300},
        )
        + endpoint_config("gem", mock, "gemini", "/v1beta", api_key="g-key")
        + processors(
            "gem",
            {"model_map": {"gemini-old": "gemini-new"}, "allowed_models": ["gemini-new"]},
            {"system_prompt": "Reply in JSON.", "mode": "if_absent"},
            {"max_tokens_cap": 50},
        )
        + endpoint_config("headers", mock, "openai", "/v1", api_key="sk-openai")
        + processors("headers", {"set_headers": {"x-team": "green"}})
        + endpoint_config("bodycheck", mock, "openai", "/v1", api_key="sk-openai")
        + processors("bodycheck", {"allowed_models": ["*"]})
        + endpoint_config("plain", mock, "openai", "/v1", api_key="sk-openai")
    )
    return start_relay(config)


def oai(relay, path: str = "/oai/v1", **headers: str) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=relay.url(path), api_key="x", timeout=10, max_retries=0, default_headers=headers)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_processors_in_order(relay, mock: MockProvider, stream: bool) -> None:  # type: ignore[no-untyped-def]
    client = oai(relay, **{"x-drop-me": "1", "x-team": "red"})
    messages = [{"role": "user", "content": "hi"}]
    if stream:
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(model="gpt-4", messages=messages, stream=True) if c.choices]  # type: ignore[arg-type]
        assert "".join(pieces) == "Hello from mock openai"
    else:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4", messages=messages, max_tokens=5000)  # type: ignore[arg-type]
        assert raw.parse().choices[0].message.content == "Hello from mock openai"
        assert raw.headers["x-policy"] == "applied"
        assert "x-mock-request-index" not in raw.headers
    seen = mock.last()
    body = seen.json()
    assert body["model"] == "gpt-4o"
    assert body["max_tokens"] == 100
    assert body["messages"] == [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hi"}]
    assert body.get("stream", False) is stream
    assert seen.headers["x-team"] == "blue"
    assert "x-drop-me" not in seen.headers
    assert int(seen.headers["content-length"]) == len(seen.body)


def test_openai_model_outside_the_allow_list_is_403(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        oai(relay).chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-3.5-turbo" in str(refused.value)
    assert mock.count() == 0


def test_streaming_gates(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError):
        oai(relay, "/nostream/v1").chat.completions.create(model="m", messages=messages, stream=True)  # type: ignore[arg-type]
    assert oai(relay, "/nostream/v1").chat.completions.create(model="m", messages=messages).choices  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        oai(relay, "/onlystream/v1").chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
    chunks = list(oai(relay, "/onlystream/v1").chat.completions.create(model="m", messages=messages, stream=True))  # type: ignore[arg-type]
    assert chunks
    assert mock.count() == 2


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_processors(relay, mock: MockProvider, stream: bool) -> None:  # type: ignore[no-untyped-def]
    client = anthropic.Anthropic(base_url=relay.url("/claude"), api_key="x", timeout=10, max_retries=0)
    kwargs = {"model": "claude-3-x", "max_tokens": 1000, "system": "old system", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        with client.messages.stream(**kwargs) as events:  # type: ignore[arg-type]
            assert events.get_final_text() == "Hello from mock anthropic"
    else:
        assert client.messages.create(**kwargs).content[0].text == "Hello from mock anthropic"  # type: ignore[arg-type, union-attr]
    body = mock.last().json()
    assert body["system"] == "Be brief."
    assert body["max_tokens"] == 300
    assert body["model"] == "claude-3-x"
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(**{**kwargs, "model": "gpt-4"})  # type: ignore[arg-type]


def test_anthropic_default_model(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    answer = httpx.post(
        relay.url("/claude/v1/messages"),
        json={"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert answer.status_code == 200
    assert mock.last().json()["model"] == "claude-default"


@pytest.mark.parametrize("action", ["generateContent", "streamGenerateContent"])
def test_gemini_processors(relay, mock: MockProvider, action: str) -> None:  # type: ignore[no-untyped-def]
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 999}}
    query = "?alt=sse" if action == "streamGenerateContent" else ""
    answer = httpx.post(relay.url(f"/gem/v1beta/models/gemini-old:{action}{query}"), json=body, timeout=10)
    assert answer.status_code == 200
    assert '"gemini-new"' in answer.text
    if action == "streamGenerateContent":
        assert answer.headers["content-type"] == "text/event-stream"
        assert answer.text.count("data: ") > 1
    else:
        assert answer.json()["candidates"][0]["content"]["parts"][0]["text"] == "Hello from mock gemini"
    seen = mock.last()
    assert seen.route_path == f"/v1beta/models/gemini-new:{action}"
    assert seen.json()["systemInstruction"] == {"parts": [{"text": "Reply in JSON."}]}
    assert seen.json()["generationConfig"]["maxOutputTokens"] == 50
    refused = httpx.post(relay.url(f"/gem/v1beta/models/gemini-other:{action}{query}"), json=body, timeout=10)
    assert refused.status_code == 403
    assert refused.json()["error"]["status"] == "PERMISSION_DENIED"


def test_untouched_requests_arrive_byte_for_byte(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    raw = b'{ "model" :"m",\n  "messages": [{"role":"user","content":"h\\u00e9"}], "n": 1.0e0 }'
    for path in ("/plain/v1/chat/completions", "/headers/v1/chat/completions", "/bodycheck/v1/chat/completions"):
        answer = httpx.post(relay.url(path), content=raw, headers={"content-type": "application/json"}, timeout=10)
        assert answer.status_code == 200, path
        assert mock.last().body == raw, path
    assert mock.last().headers["content-length"] == str(len(raw))
    assert mock.received()[1].headers["x-team"] == "green"


def test_chunked_body_is_processed_with_a_content_length(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    payload = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).encode()

    def chunks():  # type: ignore[no-untyped-def]
        yield payload[:10]
        yield payload[10:]

    answer = httpx.post(relay.url("/oai/v1/chat/completions"), content=chunks(), timeout=10)
    assert answer.status_code == 200
    seen = mock.last()
    assert "transfer-encoding" not in seen.headers
    assert int(seen.headers["content-length"]) == len(seen.body)
    assert seen.json()["model"] == "gpt-4o"


def test_non_json_bodies(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    bad = httpx.post(
        relay.url("/oai/v1/chat/completions"), content=b"not json", headers={"content-type": "application/json"}, timeout=10
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "the request body is not a JSON object"
    form = httpx.post(relay.url("/oai/v1/audio/transcriptions"), files={"file": ("a.wav", b"RIFF")}, timeout=10)
    assert form.status_code == 403  # (an allow-list cannot read its model)
    assert mock.count() == 0


# -- the example plugin (examples/plugin), loaded through its entry point -----------------------------

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "examples" / "plugin"


@pytest.fixture(scope="module")
def example_plugin() -> str:
    """Install examples/plugin into this interpreter's environment (editable) unless it is already:
    the relay finds it only through the `llmrelay.processors` entry point it registers."""
    if not entry_points(group="llmrelay.processors", name="tag_and_block"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(PLUGIN_DIR)],
            check=True,
            timeout=300,
        )
    found = entry_points(group="llmrelay.processors", name="tag_and_block")
    assert [entry.value for entry in found] == ["llmrelay_example_plugin:TagAndBlock"]
    return "tag_and_block"


def plugin_config(mock: MockProvider, options: dict[str, object], plugin: str = "tag_and_block") -> str:
    return endpoint_config("oai", mock, "openai", "/v1", api_key="sk-openai") + processors(
        "oai", {"plugin": plugin, "options": options}
    )


@pytest.mark.parametrize("stream", [False, True])
def test_example_plugin_from_its_entry_point(example_plugin: str, mock: MockProvider, start_relay, stream: bool) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(plugin_config(mock, {"tag": "team-a", "blocked_words": ["password"]}))
    client = oai(relay)
    messages = [{"role": "user", "content": "hello"}]
    if stream:
        assert list(client.chat.completions.create(model="m", messages=messages, stream=True))  # type: ignore[arg-type]
    else:
        assert client.chat.completions.create(model="m", messages=messages).choices  # type: ignore[arg-type]
    seen = mock.last()
    assert seen.headers["x-request-tag"] == "team-a"
    assert seen.json()["user"] == "team-a"
    count = mock.count()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "my PASSWORD is"}], stream=stream)  # type: ignore[arg-type]
    assert "blocked word" in str(refused.value)
    assert mock.count() == count


def test_plugin_problems_are_config_errors(example_plugin: str, mock: MockProvider, tmp_path: Path) -> None:
    cases = {
        "unknown": (plugin_config(mock, {}, plugin="no_such_plugin"), "unknown plugin 'no_such_plugin'"),
        "options": (plugin_config(mock, {"blocked_words": ["x"]}), "options.tag: a non-empty string is required"),
    }
    for name, (config, message) in cases.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(config)
        result = subprocess.run(
            [sys.executable, "-m", "llmrelay", "check-config", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert message in result.stdout + result.stderr


# -- rewrite_with: another endpoint of the relay rewrites the last user message -------------------------

PROMPT = "Rewrite the user's message as a clear question."


@pytest.fixture
def rewriter() -> Iterator[MockProvider]:
    with MockProvider() as provider:
        yield provider


@pytest.fixture
def rewrite_relay(mock: MockProvider, rewriter: MockProvider, start_relay):  # type: ignore[no-untyped-def]
    def rewrite(fail_open: bool) -> dict[str, object]:
        return {"rewrite_with": {"endpoint": "rewriter", "model": "small", "prompt": PROMPT, "timeout": 1.0, "fail_open": fail_open}}

    config = (
        endpoint_config("rewriter", rewriter, "openai", "/v1", api_key="sk-rewriter")
        + endpoint_config("open", mock, "openai", "/v1", api_key="sk-openai")
        + processors("open", rewrite(True))
        + endpoint_config("closed", mock, "anthropic", "", api_key="sk-ant")
        + processors("closed", rewrite(False))
    )
    return start_relay(config)


@pytest.mark.parametrize("stream", [False, True])
def test_rewrite_with_replaces_the_last_user_message(rewrite_relay, mock: MockProvider, rewriter: MockProvider, stream: bool) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "wat capital france"}]
    client = oai(rewrite_relay, "/open/v1")
    if stream:
        assert list(client.chat.completions.create(model="big", messages=messages, stream=True))  # type: ignore[arg-type]
    else:
        assert client.chat.completions.create(model="big", messages=messages).choices  # type: ignore[arg-type]
    asked = rewriter.last()
    assert asked.key == "sk-rewriter"
    assert asked.route_path == "/v1/chat/completions"
    assert asked.json() == {
        "model": "small",
        "messages": [{"role": "system", "content": PROMPT}, {"role": "user", "content": "wat capital france"}],
        "stream": False,
    }
    forwarded = mock.last().json()
    assert forwarded["messages"][0]["content"] == "first"
    assert forwarded["messages"][2]["content"] == "Hello from mock openai"  # (the rewriter's answer)
    assert forwarded.get("stream", False) is stream
    # an Anthropic endpoint rewritten through the OpenAI one
    claude = anthropic.Anthropic(base_url=rewrite_relay.url("/closed"), api_key="x", timeout=10, max_retries=0)
    assert claude.messages.create(model="c", max_tokens=10, messages=[{"role": "user", "content": "hi"}]).content
    assert mock.last().json()["messages"] == [{"role": "user", "content": "Hello from mock openai"}]


def test_rewrite_with_timeout_fail_open_and_closed(rewrite_relay, mock: MockProvider, rewriter: MockProvider) -> None:  # type: ignore[no-untyped-def]
    rewriter.hang()
    started = time.monotonic()
    answer = httpx.post(
        rewrite_relay.url("/open/v1/chat/completions"),
        json={"model": "big", "messages": [{"role": "user", "content": "original text"}]},
        timeout=10,
    )
    assert answer.status_code == 200
    assert 0.9 <= time.monotonic() - started < 5
    assert mock.last().json()["messages"][0]["content"] == "original text"
    count = mock.count()
    closed = httpx.post(
        rewrite_relay.url("/closed/v1/messages"),
        json={"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "original text"}]},
        timeout=10,
    )
    assert closed.status_code == 502
    assert closed.json()["error"]["type"] == "api_error"
    assert "could not be rewritten" in closed.json()["error"]["message"]
    assert mock.count() == count
    assert "rewrite_with failed" in rewrite_relay.logs()


def test_rewrite_with_error_answer_fails_closed(rewrite_relay, mock: MockProvider, rewriter: MockProvider) -> None:  # type: ignore[no-untyped-def]
    rewriter.answer(400)
    closed = httpx.post(
        rewrite_relay.url("/closed/v1/messages"),
        json={"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "original text"}]},
        timeout=10,
    )
    assert closed.status_code == 502
    assert "answered 400" in closed.json()["error"]["message"]
    assert mock.count() == 0
    opened = httpx.post(
        rewrite_relay.url("/open/v1/chat/completions"),
        json={"model": "big", "messages": [{"role": "user", "content": "original text"}]},
        timeout=10,
    )
    assert opened.status_code == 200
    assert mock.last().json()["messages"][0]["content"] == "original text"
