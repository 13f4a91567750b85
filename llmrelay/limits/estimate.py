"""A request's tokens before it is sent: the estimate a token limit admits it on. The real usage read
from the response replaces it afterwards (`LeaseBook.finish`), so the estimate only has to be cheap
and in the right range, never exact.

Input: the characters of the text the model reads (OpenAI chat `messages[].content` strings and text
parts, Responses `input` and `instructions`, completions `prompt`, Anthropic `system` + `messages`,
Gemini `contents[].parts[].text` + `systemInstruction`, and every API's `tools` definitions as JSON)
divided by the provider's characters per token, rounded up, plus a few tokens per message. Output: the
ceiling the client asked for (`max_tokens`, `max_output_tokens`, `max_completion_tokens`, Gemini's
`generationConfig.maxOutputTokens`), times OpenAI's `n`, else nothing.

The body is decoded once by msgspec into Structs holding only these fields (the rest is skipped in
C). A body that is not JSON, has odd types or is not held falls back to its length / chars per token;
this never raises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec

MESSAGE_OVERHEAD = 4  # tokens a chat template adds around each message (role, separators)
DEFAULT_CHARS_PER_TOKEN = 4.0
MIN_CHARS_PER_TOKEN = 0.1  # below this a setting is a mistake, and a tiny divisor overflows
MAX_CHOICES = 16  # `n` beyond this is not believed for the output reserve


class _Piece(msgspec.Struct):
    """A message, a content part or a Gemini Content: whichever of these fields it has."""

    text: str | None = None
    content: str | list[str | _Piece] | None = None
    parts: list[_Piece] | None = None


class _GenerationConfig(msgspec.Struct):
    maxOutputTokens: int | None = None
    max_output_tokens: int | None = None


class RequestBody(msgspec.Struct):
    """The fields of a request body the estimate reads (and its model: any JSON value, so that an odd
    one never fails the decode; `model_of` keeps a string)."""

    model: Any = None
    messages: list[_Piece] | None = None  # OpenAI chat, Anthropic
    system: str | list[_Piece] | None = None  # Anthropic
    input: str | list[str | _Piece] | None = None  # OpenAI Responses, embeddings
    instructions: str | None = None  # OpenAI Responses
    prompt: str | list[str] | None = None  # OpenAI completions
    contents: list[_Piece] | None = None  # Gemini
    systemInstruction: _Piece | None = None
    system_instruction: _Piece | None = None
    tools: msgspec.Raw = msgspec.Raw(b"")
    max_tokens: int | None = None
    max_output_tokens: int | None = None
    max_completion_tokens: int | None = None
    generationConfig: _GenerationConfig | None = None
    generation_config: _GenerationConfig | None = None
    n: int | None = None


_decoder = msgspec.json.Decoder(RequestBody)


def _chars(roots: Sequence[str | _Piece]) -> int:
    """Characters of every text under `roots` (iterative: a deep body cannot exhaust the stack)."""
    total = 0
    stack = list(roots)
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
            continue
        if item.text is not None:
            total += len(item.text)
        content = item.content
        if isinstance(content, str):
            total += len(content)
        elif content is not None:
            stack.extend(content)
        if item.parts is not None:
            stack.extend(item.parts)
    return total


def estimate(provider: str, body: bytes | None, body_length: int | None, chars_per_token: float) -> tuple[int, int]:
    """(input tokens, output tokens reserved) for a request to `provider`.

    `body`: the request body when held (for replay), else None; `body_length`: its length when
    known (Content-Length). `provider` is accepted for per-provider refinements; the body shapes of
    every provider are recognised whatever it says (a "forward" endpoint may carry any of them).
    (Runs for every request under a token limit: each field is looked at once, and a chat message
    whose content is a string, the usual case, is counted without the general walk.)"""
    per_token = checked_chars_per_token(chars_per_token)
    if body is None:
        return (math.ceil(body_length / per_token) if body_length else 0), 0
    parsed = parse_body(body)
    if parsed is None:
        length = body_length if body_length is not None else len(body)
        return math.ceil(length / per_token), 0
    return estimate_parsed(parsed, per_token)


def checked_chars_per_token(chars_per_token: float) -> float:
    """A usable divisor: at least MIN_CHARS_PER_TOKEN, and the default for 0, negatives, NaN and inf."""
    if MIN_CHARS_PER_TOKEN <= chars_per_token < math.inf:
        return chars_per_token
    if chars_per_token > 0 and math.isfinite(chars_per_token):
        return MIN_CHARS_PER_TOKEN
    return DEFAULT_CHARS_PER_TOKEN


def parse_body(body: bytes) -> RequestBody | None:
    """The body decoded for the estimate (None: not JSON, or odd types in the fields it reads)."""
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None


def model_of(parsed: RequestBody, max_length: int) -> str | None:
    """The body's model when it is a non-empty string (cut to `max_length`)."""
    model = parsed.model
    return model[:max_length] if isinstance(model, str) and model else None


def estimate_parsed(parsed: RequestBody, per_token: float) -> tuple[int, int]:
    """`estimate` of a decoded body; `per_token` already checked (MIN_CHARS_PER_TOKEN or more, finite)."""
    chars = len(parsed.tools)
    messages = 0
    listed = parsed.messages
    if listed:
        messages = len(listed)
        for message in listed:
            content = message.content
            if content.__class__ is str and message.text is None and message.parts is None:
                chars += len(content)
            else:
                chars += _chars([message])
    listed = parsed.contents
    if listed:
        messages += len(listed)
        chars += _chars(listed)
    given = parsed.input
    if given is not None:
        if isinstance(given, str):
            chars += len(given)
        else:  # Responses items (or embeddings inputs): each a message
            messages += len(given)
            chars += _chars(given)
    for text in (parsed.system, parsed.prompt):
        if text is not None:
            chars += len(text) if isinstance(text, str) else _chars(text)
    if parsed.instructions is not None:
        chars += len(parsed.instructions)
    for single in (parsed.systemInstruction, parsed.system_instruction):
        if single is not None:
            chars += _chars([single])
    value = parsed.max_tokens
    if value is None:
        value = parsed.max_completion_tokens
        if value is None:
            value = parsed.max_output_tokens
            if value is None:
                config = parsed.generationConfig or parsed.generation_config
                if config is not None:
                    value = config.maxOutputTokens if config.maxOutputTokens is not None else config.max_output_tokens
    reserve = 0
    if value is not None:
        reserve = max(0, value) * (1 if parsed.n is None else min(MAX_CHOICES, max(1, parsed.n)))
    return math.ceil(chars / per_token) + MESSAGE_OVERHEAD * messages, reserve


__all__ = ["DEFAULT_CHARS_PER_TOKEN", "MESSAGE_OVERHEAD", "RequestBody", "checked_chars_per_token", "estimate", "estimate_parsed", "model_of", "parse_body"]
