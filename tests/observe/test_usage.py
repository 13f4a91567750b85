"""Token usage read from response bytes as they pass: JSON bodies (only their tail) and SSE streams of
OpenAI, Anthropic and Gemini, split at every possible place."""

from __future__ import annotations

import json

import pytest

from llmrelay.observe.usage import TAIL_BYTES, UsageReader, whole_body_usage


def _read(body: bytes, sse: bool, step: int | None = None) -> dict[str, int] | None:
    reader = UsageReader(sse)
    if step is None:
        reader.feed(body)
    else:
        for at in range(0, len(body), step):
            reader.feed(body[at : at + step])
    return reader.result()


OPENAI_JSON = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "usage {braces} \"quoted\""}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21, "prompt_tokens_details": {"cached_tokens": 0}},
}).encode()
ANTHROPIC_JSON = json.dumps({
    "id": "msg_1", "type": "message", "content": [{"type": "text", "text": "hi"}],
    "usage": {"input_tokens": 25, "output_tokens": 7, "cache_read_input_tokens": 0},
}).encode()
GEMINI_JSON = json.dumps({
    "candidates": [{"content": {"parts": [{"text": "x" * 10000}]}}],
    "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 30, "thoughtsTokenCount": 5, "totalTokenCount": 39},
}).encode()


@pytest.mark.parametrize(
    "body, expected",
    [
        (OPENAI_JSON, {"input": 9, "output": 12}),
        (ANTHROPIC_JSON, {"input": 25, "output": 7}),
        (GEMINI_JSON, {"input": 4, "output": 35}),
        (b'{"object": "list", "data": []}', None),
        (b"not json at all", None),
        (b'{"usage": null}', None),
    ],
)
def test_json_bodies(body: bytes, expected: dict[str, int] | None) -> None:
    assert _read(body, sse=False) == expected
    for step in (1, 7, 100, 4096):
        assert _read(body, sse=False, step=step) == expected
    assert whole_body_usage(body) == expected  # (a body that came in one piece: no reader needed)
    padded = body[:1] + b" " * (TAIL_BYTES * 2) + body[1:]  # longer than the tail a reader keeps
    assert whole_body_usage(padded) == _read(padded, sse=False)


def test_only_the_tail_of_a_json_body_is_kept() -> None:
    reader = UsageReader(False)
    for _ in range(1000):
        reader.feed(b"x" * 1000)
        assert len(reader._tail) <= TAIL_BYTES
    reader.feed(b'"usage": {"prompt_tokens": 1, "completion_tokens": 2}}')
    assert reader.result() == {"input": 1, "output": 2}


def _sse(*events: object, crlf: bool = False) -> bytes:
    end = b"\r\n\r\n" if crlf else b"\n\n"
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + end for e in events)


OPENAI_SSE = _sse(
    {"choices": [{"delta": {"content": "usage"}}], "usage": None},
    {"choices": [{"delta": {"content": "!"}}], "usage": None},
    {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3}},
    b"[DONE]",
)
ANTHROPIC_SSE = (
    b"event: message_start\n"
    + _sse({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 40, "output_tokens": 1}}})
    + b"event: content_block_delta\n"
    + _sse({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}})
    + b"event: message_delta\n"
    + _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 17}})
    + b"event: message_stop\n"
    + _sse({"type": "message_stop"})
)
GEMINI_SSE = _sse(
    {"candidates": [{"content": {"parts": [{"text": "a"}]}}], "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 1}},
    {"candidates": [{"content": {"parts": [{"text": "b"}]}}], "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 9}},
    crlf=True,
)
RESPONSES_SSE = b"event: response.completed\n" + _sse(
    {"type": "response.completed", "response": {"id": "r", "usage": {"input_tokens": 8, "output_tokens": 2}}}
)


@pytest.mark.parametrize(
    "body, expected",
    [
        (OPENAI_SSE, {"input": 11, "output": 3}),
        (ANTHROPIC_SSE, {"input": 40, "output": 17}),
        (GEMINI_SSE, {"input": 6, "output": 9}),
        (RESPONSES_SSE, {"input": 8, "output": 2}),
        (_sse({"choices": [{"delta": {"content": "x"}}]}, b"[DONE]"), None),
    ],
)
def test_sse_streams_split_anywhere(body: bytes, expected: dict[str, int] | None) -> None:
    assert _read(body, sse=True) == expected
    for step in range(1, 40):
        assert _read(body, sse=True, step=step) == expected, step
