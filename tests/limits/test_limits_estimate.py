"""The token estimate of a request body for every provider's shape, and bodies it cannot read."""

from __future__ import annotations

import json
import math

import pytest

from llmrelay.limits.estimate import MESSAGE_OVERHEAD, estimate


def body(value: object) -> bytes:
    return json.dumps(value).encode()


def test_openai_chat_strings_and_text_parts() -> None:
    request = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "x" * 40},
            {"role": "user", "content": [{"type": "text", "text": "y" * 20}, {"type": "image_url", "image_url": {"url": "data:..." + "z" * 999}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}]},
        ],
        "max_completion_tokens": 300,
    }
    assert estimate("openai", body(request), None, 4.0) == (math.ceil(60 / 4) + 3 * MESSAGE_OVERHEAD, 300)


def test_openai_responses_input_and_instructions() -> None:
    text_only = {"model": "gpt-4.1", "input": "q" * 100, "instructions": "i" * 20, "max_output_tokens": 50}
    assert estimate("openai", body(text_only), None, 4.0) == (30, 50)
    items = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "a" * 8}]}, {"role": "user", "content": "b" * 8}]}
    assert estimate("openai", body(items), None, 4.0) == (4 + 2 * MESSAGE_OVERHEAD, 0)


def test_openai_completions_prompt_and_n_choices() -> None:
    assert estimate("openai", body({"prompt": "p" * 12, "max_tokens": 10, "n": 3}), None, 4.0) == (3, 30)
    assert estimate("openai", body({"prompt": ["a" * 4, "b" * 4], "max_tokens": 10, "n": 10_000}), None, 4.0) == (2, 160)


def test_anthropic_system_and_messages() -> None:
    request = {
        "model": "claude-sonnet-4",
        "system": [{"type": "text", "text": "s" * 35}],
        "messages": [
            {"role": "user", "content": "u" * 35},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "r" * 30}]}]},
        ],
        "max_tokens": 1024,
    }
    assert estimate("anthropic", body(request), None, 3.5) == (math.ceil(100 / 3.5) + 2 * MESSAGE_OVERHEAD, 1024)
    assert estimate("anthropic", body({"system": "s" * 7, "messages": []}), None, 3.5) == (2, 0)


def test_gemini_contents_system_instruction_and_generation_config() -> None:
    request = {
        "contents": [{"role": "user", "parts": [{"text": "g" * 30}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}],
        "systemInstruction": {"parts": [{"text": "s" * 10}]},
        "generationConfig": {"maxOutputTokens": 256, "temperature": 0.2},
    }
    assert estimate("gemini", body(request), None, 4.0) == (10 + MESSAGE_OVERHEAD, 256)
    snake = {"contents": [{"parts": [{"text": "g" * 8}]}], "system_instruction": {"parts": [{"text": "s" * 8}]}, "generation_config": {"max_output_tokens": 9}}
    assert estimate("gemini", body(snake), None, 4.0) == (4 + MESSAGE_OVERHEAD, 9)


def test_tools_definitions_count_as_text() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with_tools = estimate("openai", body({"messages": [], "tools": tools}), None, 4.0)
    assert with_tools == (math.ceil(len(json.dumps(tools)) / 4), 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json at all",
        b"[1, 2, 3]",
        b'{"messages": "a string"}',
        b'{"messages": [{"content": 5}]}',
        b'{"max_tokens": "many"}',
        b'{"max_tokens": true}',
        b'{"input": [1, 2]}',  # embeddings of token ids
        b'{"messages": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
        b'{"input": [' + b'{"content": [' * 3000 + b"]}" * 3000 + b"]}",
        b"\xff\xfe",
        b"",
    ],
)
def test_odd_bodies_fall_back_to_their_length(raw: bytes) -> None:
    assert estimate("openai", raw, None, 4.0) == (math.ceil(len(raw) / 4), 0)
    assert estimate("openai", raw, 4000, 4.0) == (1000, 0)


def test_a_body_not_held_is_estimated_from_its_length() -> None:
    assert estimate("openai", None, 4001, 4.0) == (1001, 0)
    assert estimate("openai", None, None, 4.0) == (0, 0)
    assert estimate("openai", None, 0, 4.0) == (0, 0)


@pytest.mark.parametrize("per_token", [0.0, -1.0, float("nan"), float("inf")])
def test_a_bad_chars_per_token_uses_the_default(per_token: float) -> None:
    assert estimate("openai", None, 400, per_token) == (100, 0)


def test_a_tiny_chars_per_token_is_raised_to_the_minimum() -> None:
    assert estimate("openai", None, 400, 2.2e-309) == (4000, 0)


def test_negative_max_tokens_reserves_nothing() -> None:
    assert estimate("openai", body({"max_tokens": -5}), None, 4.0) == (0, 0)
