"""Every processor on OpenAI, Anthropic and Gemini bodies (dicts), streamed and not; the config checks."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest

from llmrelay.config.schema import ProcessorSection
from llmrelay.relay.policy import bodies
from llmrelay.relay.policy.processors import compile_steps, response_edit
from llmrelay.relay.policy.request import ProcessorRequest, Refused
from llmrelay.relay.policy.rewrite import RewriteFailed, reply_text, rewrite_request

OPENAI = {"model": "gpt-4", "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]}
ANTHROPIC = {"model": "claude-x", "max_tokens": 4000, "system": "be nice", "messages": [{"role": "user", "content": "hi"}]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 4000}}
RESPONSES = {"model": "gpt-4", "input": "hi", "instructions": "be nice"}
PATHS = {"openai": "/chat/completions", "anthropic": "/v1/messages", "gemini": "/models/gemini-pro:generateContent"}
BODIES = {"openai": OPENAI, "anthropic": ANTHROPIC, "gemini": GEMINI}


def run(provider: str, body: Any, streamed: bool = False, path: str | None = None, **keys: Any) -> ProcessorRequest:
    path = path or PATHS[provider]
    body = copy.deepcopy(body)
    if streamed:
        if provider == "gemini":
            path = path.replace(":generateContent", ":streamGenerateContent")
        else:
            body["stream"] = True
    request = ProcessorRequest(provider, "ep", "POST", path, "", [(b"content-type", b"application/json")], body)
    for step in compile_steps(ProcessorSection(**keys), provider):
        step.apply(request)
    return request


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("streamed", [False, True])
def test_streaming_gate(provider: str, streamed: bool) -> None:
    body = BODIES[provider]
    if streamed:
        with pytest.raises(Refused) as refused:
            run(provider, body, streamed, allow_streaming=False)
        assert refused.value.status == 400
        run(provider, body, streamed, allow_non_streaming=False)
    else:
        with pytest.raises(Refused) as refused:
            run(provider, body, streamed, allow_non_streaming=False)
        assert refused.value.status == 400
        run(provider, body, streamed, allow_streaming=False)


@pytest.mark.parametrize("streamed", [False, True])
def test_model_map_default_and_allowed(streamed: bool) -> None:
    assert run("openai", OPENAI, streamed, model_map={"gpt-4": "gpt-4o"}).body["model"] == "gpt-4o"
    assert run("anthropic", ANTHROPIC, streamed, model_map={"claude-x": "claude-y"}).body["model"] == "claude-y"
    gemini = run("gemini", GEMINI, streamed, model_map={"gemini-pro": "gemini-2.0-flash"})
    assert gemini.path.startswith("/models/gemini-2.0-flash:")
    assert gemini.path.endswith("GenerateContent") or gemini.path.endswith("generateContent")
    no_model = {k: v for k, v in OPENAI.items() if k != "model"}
    assert run("openai", no_model, streamed, default_model="gpt-4o-mini").body["model"] == "gpt-4o-mini"
    # the allow-list checks the mapped model
    assert run("openai", OPENAI, streamed, model_map={"gpt-4": "gpt-4o"}, allowed_models=["gpt-4o*"]).body["model"] == "gpt-4o"
    for provider in ("openai", "anthropic", "gemini"):
        with pytest.raises(Refused) as refused:
            run(provider, BODIES[provider], streamed, allowed_models=["only-this-*"])
        assert refused.value.status == 403
    run("gemini", GEMINI, streamed, allowed_models=["gemini-*"])


def test_model_steps_need_no_body_on_gemini() -> None:
    steps = compile_steps(ProcessorSection(model_map={"a": "b"}, allow_streaming=False), "gemini")
    assert not any(step.needs_body for step in steps)
    steps = compile_steps(ProcessorSection(model_map={"a": "b"}), "openai")
    assert all(step.needs_body for step in steps)
    assert not any(s.needs_body for s in compile_steps(ProcessorSection(set_headers={"x-team": "a"}), "openai"))


def test_a_request_without_a_model_is_refused_by_an_allow_list() -> None:
    with pytest.raises(Refused):
        run("openai", {"messages": []}, allowed_models=["gpt-*"])


@pytest.mark.parametrize("streamed", [False, True])
def test_max_tokens_cap_only_lowers(streamed: bool) -> None:
    assert run("anthropic", ANTHROPIC, streamed, max_tokens_cap=1000).body["max_tokens"] == 1000
    assert run("anthropic", ANTHROPIC, streamed, max_tokens_cap=9000).body["max_tokens"] == 4000
    capped = run("openai", {**OPENAI, "max_completion_tokens": 500, "max_tokens": 50}, streamed, max_tokens_cap=100)
    assert capped.body["max_completion_tokens"] == 100 and capped.body["max_tokens"] == 50
    assert run("openai", OPENAI, streamed, max_tokens_cap=100).body["max_tokens"] == 100  # (none set: added)
    responses = run("openai", RESPONSES, streamed, path="/responses", max_tokens_cap=64)
    assert responses.body["max_output_tokens"] == 64
    gemini = run("gemini", GEMINI, streamed, max_tokens_cap=256)
    assert gemini.body["generationConfig"]["maxOutputTokens"] == 256
    bare = run("gemini", {"contents": []}, streamed, max_tokens_cap=256)
    assert bare.body["generationConfig"] == {"maxOutputTokens": 256}
    embeddings = run("openai", {"model": "e", "input": "x"}, streamed, path="/embeddings", max_tokens_cap=5)
    assert embeddings.body == {"model": "e", "input": "x", **({"stream": True} if streamed else {})}
    assert not embeddings.changed


@pytest.mark.parametrize("streamed", [False, True])
def test_system_prompt_openai(streamed: bool) -> None:
    prepend = run("openai", OPENAI, streamed, system_prompt="RULES").body["messages"]
    assert [m["content"] for m in prepend] == ["RULES", "be nice", "hi"]
    replace = run("openai", OPENAI, streamed, system_prompt="RULES", mode="replace").body["messages"]
    assert [m["content"] for m in replace] == ["RULES", "hi"]
    kept = run("openai", OPENAI, streamed, system_prompt="RULES", mode="if_absent")
    assert [m["content"] for m in kept.body["messages"]] == ["be nice", "hi"] and not kept.changed
    bare = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    added = run("openai", bare, streamed, system_prompt="RULES", mode="if_absent").body["messages"]
    assert added[0] == {"role": "system", "content": "RULES"}


@pytest.mark.parametrize("streamed", [False, True])
def test_system_prompt_responses_api(streamed: bool) -> None:
    prepend = run("openai", RESPONSES, streamed, path="/v1/responses", system_prompt="RULES")
    assert prepend.body["instructions"] == "RULES\n\nbe nice"
    replace = run("openai", RESPONSES, streamed, path="/v1/responses", system_prompt="RULES", mode="replace")
    assert replace.body["instructions"] == "RULES"
    kept = run("openai", RESPONSES, streamed, path="/v1/responses", system_prompt="RULES", mode="if_absent")
    assert kept.body["instructions"] == "be nice"


@pytest.mark.parametrize("streamed", [False, True])
def test_system_prompt_anthropic(streamed: bool) -> None:
    assert run("anthropic", ANTHROPIC, streamed, system_prompt="RULES").body["system"] == "RULES\n\nbe nice"
    assert run("anthropic", ANTHROPIC, streamed, system_prompt="RULES", mode="replace").body["system"] == "RULES"
    assert run("anthropic", ANTHROPIC, streamed, system_prompt="RULES", mode="if_absent").body["system"] == "be nice"
    blocks = {**ANTHROPIC, "system": [{"type": "text", "text": "be nice", "cache_control": {"type": "ephemeral"}}]}
    prepended = run("anthropic", blocks, streamed, system_prompt="RULES").body["system"]
    assert prepended == [{"type": "text", "text": "RULES"}, blocks["system"][0]]
    bare = {k: v for k, v in ANTHROPIC.items() if k != "system"}
    assert run("anthropic", bare, streamed, system_prompt="RULES", mode="if_absent").body["system"] == "RULES"


@pytest.mark.parametrize("streamed", [False, True])
def test_system_prompt_gemini(streamed: bool) -> None:
    bare = run("gemini", GEMINI, streamed, system_prompt="RULES")
    assert bare.body["systemInstruction"] == {"parts": [{"text": "RULES"}]}
    with_one = {**GEMINI, "systemInstruction": {"parts": [{"text": "be nice"}]}}
    prepended = run("gemini", with_one, streamed, system_prompt="RULES").body["systemInstruction"]
    assert prepended == {"parts": [{"text": "RULES"}, {"text": "be nice"}]}
    replaced = run("gemini", with_one, streamed, system_prompt="RULES", mode="replace").body["systemInstruction"]
    assert replaced == {"parts": [{"text": "RULES"}]}
    kept = run("gemini", with_one, streamed, system_prompt="RULES", mode="if_absent")
    assert kept.body["systemInstruction"] == {"parts": [{"text": "be nice"}]} and not kept.changed


def test_header_edits() -> None:
    request = ProcessorRequest("openai", "ep", "POST", "/x", "", [(b"x-drop", b"1"), (b"x-team", b"old")], None)
    for step in compile_steps(ProcessorSection(set_headers={"X-Team": "blue"}, remove_headers=["x-drop"]), "openai"):
        step.apply(request)
    assert request.raw_headers == [(b"x-team", b"blue")]
    with pytest.raises(ValueError):
        request.set_header("authorization", "Bearer x")


def test_response_edits_fold_in_order() -> None:
    removed, added = response_edit(
        [
            ProcessorSection(set_response_headers={"x-a": "1", "x-b": "2"}),
            ProcessorSection(remove_response_headers=["x-a", "server"]),
        ]
    )
    assert removed == {b"x-a", b"x-b", b"server"}
    assert added == [(b"x-b", b"2")]


@pytest.mark.parametrize(
    "keys",
    [
        {"set_headers": {"authorization": "Bearer x"}},
        {"set_headers": {"Transfer-Encoding": "chunked"}},
        {"remove_headers": ["host"]},
        {"remove_headers": ["x-api-key"]},
        {"set_headers": {"x-ok": "bad\r\nvalue"}},
        {"set_response_headers": {"content-length": "1"}},
        {"remove_response_headers": ["connection"]},
        {"plugin": "no-such-plugin"},
        {"options": {"a": 1}, "max_tokens_cap": 5},
        {"allow_streaming": False, "allow_non_streaming": False},
        {},
    ],
)
def test_refused_processor_tables(keys: dict[str, Any]) -> None:
    with pytest.raises((ValueError, msgspec.ValidationError)):
        msgspec.convert(keys, ProcessorSection)


def test_last_user_message_of_each_shape() -> None:
    chat = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "last"}, {"type": "image_url", "image_url": {"url": "u"}}]}]}
    assert bodies.last_user_text("openai", "/chat/completions", chat) == "last"
    bodies.replace_last_user_text("openai", "/chat/completions", chat, "NEW")
    assert chat["messages"][2]["content"] == [{"type": "text", "text": "NEW"}, {"type": "image_url", "image_url": {"url": "u"}}]
    assert chat["messages"][0]["content"] == "first"
    claude = copy.deepcopy(ANTHROPIC)
    assert bodies.last_user_text("anthropic", "/v1/messages", claude) == "hi"
    bodies.replace_last_user_text("anthropic", "/v1/messages", claude, "NEW")
    assert claude["messages"][0]["content"] == "NEW"
    gemini = copy.deepcopy(GEMINI)
    assert bodies.last_user_text("gemini", PATHS["gemini"], gemini) == "hi"
    bodies.replace_last_user_text("gemini", PATHS["gemini"], gemini, "NEW")
    assert gemini["contents"][0]["parts"] == [{"text": "NEW"}]
    responses = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "q"}]}]}
    assert bodies.last_user_text("openai", "/responses", responses) == "q"
    plain = {"input": "q"}
    bodies.replace_last_user_text("openai", "/responses", plain, "NEW")
    assert plain == {"input": "NEW"}
    assert bodies.last_user_text("openai", "/chat/completions", {"messages": [{"role": "system", "content": "s"}]}) is None


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_rewrite_request_and_reply(provider: str) -> None:
    path, body = rewrite_request(provider, "small-model", "Rewrite clearly.", "wat is teh capital")
    payload = msgspec.json.decode(body)
    replies = {
        "openai": {"choices": [{"message": {"role": "assistant", "content": "What is the capital?"}}]},
        "anthropic": {"content": [{"type": "text", "text": "What is the capital?"}]},
        "gemini": {"candidates": [{"content": {"parts": [{"text": "What is the capital?"}]}}]},
    }
    if provider == "openai":
        assert path == "/v1/chat/completions"
        assert payload["messages"] == [
            {"role": "system", "content": "Rewrite clearly."},
            {"role": "user", "content": "wat is teh capital"},
        ]
        assert payload["stream"] is False and payload["model"] == "small-model"
    elif provider == "anthropic":
        assert path == "/v1/messages"
        assert payload["system"] == "Rewrite clearly." and payload["messages"][0]["content"] == "wat is teh capital"
    else:
        assert path == "/v1beta/models/small-model:generateContent"
        assert payload["systemInstruction"] == {"parts": [{"text": "Rewrite clearly."}]}
    assert reply_text(provider, msgspec.json.encode(replies[provider])) == "What is the capital?"
    with pytest.raises(RewriteFailed):
        reply_text(provider, b'{"error": {"message": "no"}}')
