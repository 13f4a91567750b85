"""The token estimate against an oracle that walks the decoded JSON as plain Python values.

`llmrelay.limits.estimate` decodes a body into Structs and takes shortcuts for the usual chat message;
the oracle below follows the documented rules on `json.loads` output, with none of that. For any body
the generator can make (every provider's shapes, mixed and nested, with odd types among them), both
must give the same (input, output) pair.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from llmrelay.limits.estimate import (
    DEFAULT_CHARS_PER_TOKEN,
    MAX_CHOICES,
    MESSAGE_OVERHEAD,
    MIN_CHARS_PER_TOKEN,
    estimate,
    model_of,
    parse_body,
)
from llmrelay.observe.requestinfo import MAX_MODEL_LENGTH, path_model, request_model

text = st.text(max_size=30)
piece = st.recursive(
    st.fixed_dictionaries({}, optional={"type": st.just("text"), "text": text, "role": st.sampled_from(["user", "model"])}),
    lambda inner: st.fixed_dictionaries(
        {},
        optional={
            "text": text,
            "content": st.one_of(st.none(), text, st.lists(st.one_of(text, inner), max_size=3)),
            "parts": st.lists(inner, max_size=3),
        },
    ),
    max_leaves=8,
)
tokens = st.one_of(st.none(), st.integers(min_value=-5, max_value=10_000))
generation = st.fixed_dictionaries({}, optional={"maxOutputTokens": tokens, "max_output_tokens": tokens})
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just("m"),
        "messages": st.lists(piece, max_size=4),
        "system": st.one_of(text, st.lists(piece, max_size=2)),
        "input": st.one_of(text, st.lists(st.one_of(text, piece), max_size=3)),
        "instructions": text,
        "prompt": st.one_of(text, st.lists(text, max_size=3)),
        "contents": st.lists(piece, max_size=3),
        "systemInstruction": piece,
        "system_instruction": piece,
        "tools": st.lists(st.fixed_dictionaries({"name": text}), max_size=2),
        "max_tokens": tokens,
        "max_output_tokens": tokens,
        "max_completion_tokens": tokens,
        "generationConfig": generation,
        "generation_config": generation,
        "n": st.one_of(st.none(), st.integers(min_value=-3, max_value=50)),
        "stream": st.booleans(),
    },
)


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    if isinstance(value, dict):
        total = len(value["text"]) if isinstance(value.get("text"), str) else 0
        content = value.get("content")
        if content is not None:
            total += _chars(content)
        return total + _chars(value.get("parts") or [])
    return 0


def oracle(body: bytes, per_token: float) -> tuple[int, int]:
    request = json.loads(body)
    messages = len(request.get("messages") or []) + len(request.get("contents") or [])
    if isinstance(request.get("input"), list):
        messages += len(request["input"])
    chars = sum(
        _chars(request.get(key))
        for key in ("messages", "contents", "input", "system", "prompt", "instructions", "systemInstruction", "system_instruction")
    )
    if "tools" in request:
        chars += len(json.dumps(request["tools"], separators=(",", ":"), ensure_ascii=False).encode())
    config = request.get("generationConfig")  # (the first spelling present, even when empty)
    if config is None:
        config = request.get("generation_config") or {}
    reserve = 0
    for value in (
        request.get("max_tokens"), request.get("max_completion_tokens"), request.get("max_output_tokens"),
        config.get("maxOutputTokens"), config.get("max_output_tokens"),
    ):  # fmt: skip
        if value is not None:
            reserve = max(0, value) * min(MAX_CHOICES, max(1, request.get("n") or 1))
            break
    return math.ceil(chars / per_token) + MESSAGE_OVERHEAD * messages, reserve


@given(bodies, st.sampled_from([4.0, 3.5, 1.0, MIN_CHARS_PER_TOKEN]))
def test_the_estimate_follows_the_rules_for_any_body(request: dict[str, Any], per_token: float) -> None:
    # (compact separators: `tools` is counted as the bytes the client sent)
    body = json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode()
    assert estimate("openai", body, len(body), per_token) == oracle(body, per_token)


@given(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=0, max_value=10_000))
def test_any_chars_per_token_gives_a_finite_estimate(per_token: float, length: int) -> None:
    expected = per_token if per_token > 0 and math.isfinite(per_token) else DEFAULT_CHARS_PER_TOKEN
    expected = max(MIN_CHARS_PER_TOKEN, expected)
    body = b"x" * length  # (not JSON: counted by its length)
    assert estimate("openai", body, None, per_token) == (math.ceil(length / expected), 0)
    assert estimate("openai", None, length, per_token) == (math.ceil(length / expected) if length else 0, 0)


models = st.one_of(st.none(), st.text(max_size=250), st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))
paths = st.sampled_from(["/v1/chat/completions", "/v1beta/models/gemini-2.0-flash:generateContent", "/v1/models/", "/x/models/a/b"])


@given(bodies, models, paths, st.booleans())
def test_one_decode_finds_the_model_request_model_finds(request: dict[str, Any], model: Any, path: str, named: bool) -> None:
    # The limits' fast path decodes a held body once for the estimate and the model; the model must
    # be the one `request_model` reads (the path's first, else a non-empty string `model`, cut).
    if named:
        request = {**request, "model": model}
    body = json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode()
    parsed = parse_body(body)
    if parsed is None:
        return  # (the fast path then asks request_model itself)
    found = path_model(path) if "models/" in path else None
    if found is None:
        found = model_of(parsed, MAX_MODEL_LENGTH)
    assert found == request_model(path, body)
