"""Fuzzes `observe.usage.UsageReader`, which reads the provider's token usage from response bytes as
they pass: it only ever sees the chunks the network happened to deliver, so where a chunk ends must
never change what it counts.

Each property builds a realistic response with the usage numbers it drew, of every shape the relay
accounts for (an OpenAI JSON body, an OpenAI stream with `stream_options.include_usage`, an
Anthropic stream with `message_start` and `message_delta` usage, a Gemini SSE stream with cumulative
`usageMetadata`), with hostile message text in it (braces, quotes, the word "usage"), and checks that
fed in arbitrary pieces it yields exactly the totals it yields fed whole, and that those are the
numbers the provider reported.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from llmrelay.observe.usage import TAIL_BYTES, UsageReader

cuts = st.lists(st.integers(min_value=0, max_value=12_000), max_size=16)
counts = st.integers(min_value=0, max_value=2**31)
# Message text that looks like what the reader searches for: it must stay text.
text = st.lists(
    st.sampled_from(['"usage"', "usage", '"usageMetadata": {', "{", "}", '"', "\\", "data: ", "\n", "\r\n", "é", "x", " "]),
    max_size=30,
).map("".join)
line_ending = st.sampled_from(["\n", "\r\n"])


def _split(data: bytes, cut_points: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cut_points})
    pieces, previous = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[previous:point])
        previous = point
    return pieces


def _read(pieces: list[bytes], sse: bool) -> dict[str, int] | None:
    reader = UsageReader(sse)
    for piece in pieces:
        reader.feed(piece)
    return reader.result()


def _check(data: bytes, sse: bool, cut_points: list[int], expected: dict[str, int]) -> None:
    whole = _read([data], sse)
    assert whole == expected
    assert _read(_split(data, cut_points), sse) == whole
    if len(data) <= 3000:  # (one byte at a time: every boundary at once)
        assert _read([data[i : i + 1] for i in range(len(data))], sse) == whole


def _sse(events: list[tuple[str | None, Any]], end: str, space: bool) -> bytes:
    """Events as an SSE stream: `event:` lines where given, one `data:` line of compact JSON each."""
    out = []
    for name, data in events:
        head = f"event: {name}{end}" if name else ""
        payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        out.append(f"{head}data:{' ' if space else ''}{payload}{end}{end}")
    return "".join(out).encode()


@given(counts, counts, st.lists(text, max_size=4), st.booleans(), st.integers(0, 2 * TAIL_BYTES), cuts)
def test_openai_json_body(prompt: int, completion: int, messages: list[str], details: bool, padding: int, cut_points: list[int]) -> None:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if details:  # (nested objects inside the usage object)
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0}
    choices = [{"index": i, "message": {"role": "assistant", "content": m}, "finish_reason": "stop"} for i, m in enumerate(messages)]
    body = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-x", "padding": "p" * padding, "choices": choices, "usage": usage}
    data = json.dumps(body, indent=None if padding % 2 else 1).encode()  # (longer than TAIL_BYTES or not)
    _check(data, False, cut_points, {"input": prompt, "output": completion})


@given(counts, counts, st.lists(text, max_size=8), line_ending, st.booleans(), cuts)
def test_openai_stream_with_include_usage(
    prompt: int, completion: int, pieces: list[str], end: str, space: bool, cut_points: list[int]
) -> None:
    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": "c", "object": "chat.completion.chunk", "choices": [choice], "usage": None}

    events: list[tuple[str | None, Any]] = [(None, chunk({"role": "assistant", "content": ""}, None))]
    events += [(None, chunk({"content": piece}, None)) for piece in pieces]
    events.append((None, chunk({}, "stop")))
    final = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
    }}
    events += [(None, final), (None, "[DONE]")]
    _check(_sse(events, end, space), True, cut_points, {"input": prompt, "output": completion})


@given(counts, counts, st.lists(text, max_size=8), st.booleans(), line_ending, st.booleans(), cuts)
def test_anthropic_stream(
    prompt: int, output: int, pieces: list[str], cumulative_input: bool, end: str, space: bool, cut_points: list[int]
) -> None:
    start_usage = {"input_tokens": prompt, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "usage": start_usage}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": message}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]
    for piece in pieces:
        delta = {"type": "text_delta", "text": piece}
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    delta_usage: dict[str, int] = {"output_tokens": output}
    if cumulative_input:  # (newer streams repeat the input count in message_delta)
        delta_usage = {"input_tokens": prompt, **delta_usage}
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": delta_usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    _check(_sse(events, end, space), True, cut_points, {"input": prompt, "output": output})


@given(counts, st.lists(st.tuples(text, counts), min_size=1, max_size=6), st.none() | counts, line_ending, st.booleans(), cuts)
def test_gemini_sse_stream(
    prompt: int, parts: list[tuple[str, int]], thoughts: int | None, end: str, space: bool, cut_points: list[int]
) -> None:
    events: list[tuple[str | None, Any]] = []
    for index, (piece, candidates) in enumerate(parts):
        metadata: dict[str, int] = {"promptTokenCount": prompt, "candidatesTokenCount": candidates, "totalTokenCount": prompt + candidates}
        if thoughts is not None:
            metadata["thoughtsTokenCount"] = thoughts
        candidate: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
        if index == len(parts) - 1:
            candidate["finishReason"] = "STOP"
        events.append((None, {"candidates": [candidate], "usageMetadata": metadata, "modelVersion": "gemini-x"}))
    last = parts[-1][1]  # (cumulative: the last usageMetadata counts; thinking tokens are output)
    _check(_sse(events, end, space), True, cut_points, {"input": prompt, "output": last + (thoughts or 0)})
