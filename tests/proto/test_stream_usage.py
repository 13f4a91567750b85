"""`observe.stream_usage`: asking for a stream's usage on the client's behalf, and giving the client the
stream it would have had without it, byte for byte, whatever the chunk boundaries and line endings."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from llmrelay.observe.stream_usage import InjectedUsageFilter, add_include_usage

CREATED = 1727000000
USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 3,
    "total_tokens": 12,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
}


def _chunk(delta: dict[str, Any], finish: str | None, include_usage: bool, obfuscation: str | None) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        chunk["usage"] = None
    if obfuscation is not None:  # (newer streams carry it after usage: the member is then not last)
        chunk["obfuscation"] = obfuscation
    return chunk


def openai_stream(
    include_usage: bool, *, spaced: bool = False, newline: str = "\n", obfuscation: bool = False
) -> bytes:
    """A chat completions stream as OpenAI writes it, with or without `stream_options.include_usage`."""
    separators = (", ", ": ") if spaced else (",", ":")
    deltas: list[tuple[dict[str, Any], str | None]] = [
        ({"role": "assistant", "content": "", "refusal": None}, None),
        ({"content": "Hello"}, None),
        ({"content": " \"usage\":null, world"}, None),  # a look-alike inside a string stays
        ({"content": "!"}, None),
        ({}, "stop"),
    ]
    chunks = [_chunk(delta, finish, include_usage, "aZ3" if obfuscation else None) for delta, finish in deltas]
    if include_usage:
        final = _chunk({}, None, True, "x" if obfuscation else None)
        final["choices"] = []
        final["usage"] = USAGE
        chunks.append(final)
    events = [json.dumps(chunk, separators=separators) for chunk in chunks] + ["[DONE]"]
    return "".join(f"data: {event}{newline}{newline}" for event in events).encode()


VARIANTS = [
    pytest.param({}, id="openai"),
    pytest.param({"spaced": True}, id="spaced"),
    pytest.param({"newline": "\r\n"}, id="crlf"),
    pytest.param({"newline": "\r"}, id="cr"),
    pytest.param({"obfuscation": True}, id="usage-not-last"),
    pytest.param({"spaced": True, "newline": "\r\n", "obfuscation": True}, id="spaced-crlf-not-last"),
]


def run(chunks: list[bytes], **options: Any) -> tuple[bytes, InjectedUsageFilter]:
    stream_filter = InjectedUsageFilter(**options)
    out = b"".join(stream_filter.feed(chunk) for chunk in chunks) + stream_filter.finish()
    return out, stream_filter


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_client_sees_the_stream_without_include_usage(variant: dict[str, Any]) -> None:
    asked, plain = openai_stream(True, **variant), openai_stream(False, **variant)
    assert asked != plain
    seen: list[dict[str, int]] = []
    out, stream_filter = run([asked], on_usage=seen.append)
    assert out == plain
    assert stream_filter.usage == {"input": 9, "output": 3} and seen == [{"input": 9, "output": 3}]
    assert out.endswith(b"data: [DONE]" + variant.get("newline", "\n").encode() * 2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_chunk_boundary(variant: dict[str, Any]) -> None:
    asked, plain = openai_stream(True, **variant), openai_stream(False, **variant)
    for cut in range(len(asked) + 1):
        out, stream_filter = run([asked[:cut], asked[cut:]])
        assert out == plain, cut
        assert stream_filter.usage == {"input": 9, "output": 3}, cut
    for step in (1, 2, 3, 7, 64):  # every piece small: boundaries everywhere at once
        out, _ = run([asked[i : i + step] for i in range(0, len(asked), step)])
        assert out == plain, step


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_stream_that_asked_itself_passes_untouched(variant: dict[str, Any]) -> None:
    """The filter keeps every byte of a stream without `"usage"` in it (what the client asked)."""
    plain = openai_stream(False, **variant)
    assert run([plain])[0] == plain
    assert run([plain[i : i + 5] for i in range(0, len(plain), 5)])[0] == plain


def test_a_complete_event_is_never_held_back() -> None:
    """Each feed gives out every event it completed; only the next event's first bytes stay."""
    asked_events = openai_stream(True).split(b"\n\n")[:-1]
    plain_events = openai_stream(False).split(b"\n\n")[:-1]
    expected = [event + b"\n\n" for event in plain_events[:-1]] + [b"", plain_events[-1] + b"\n\n"]  # the usage chunk: dropped
    assert len(asked_events) == len(expected) == 7
    stream_filter = InjectedUsageFilter()
    head = b""  # the part of the current event already fed
    for index, event in enumerate(asked_events):
        following = asked_events[index + 1][:10] if index + 1 < len(asked_events) else b""
        assert stream_filter.feed(event[len(head) :] + b"\n\n" + following) == expected[index], index
        head = following
    assert stream_filter.finish() == b""


def test_an_event_split_after_its_blank_line_cr() -> None:
    """A CR that ends an event at the end of a chunk completes it; the LF of that CRLF, in the next
    chunk, goes with it (sent after a kept event, dropped after the dropped usage chunk)."""
    asked, plain = openai_stream(True, newline="\r\n"), openai_stream(False, newline="\r\n")
    events = asked.split(b"\r\n\r\n")[:-1]
    stream_filter = InjectedUsageFilter()
    out = [stream_filter.feed(events[0] + b"\r\n\r")]
    assert out[0].endswith(b"}\r\n\r")  # out at once, though its LF is still to come
    for event in events[1:]:
        out.append(stream_filter.feed(b"\n" + event + b"\r\n\r"))
    out.append(stream_filter.feed(b"\n"))
    assert b"".join(out) + stream_filter.finish() == plain


def test_members_that_are_not_the_top_level_usage_are_kept() -> None:
    kept = [
        b'data: {"choices":[{"index":0,"usage":null}],"id":"a"}\n\n',  # nested member
        b'data: {"a\\"usage":null,"id":"a"}\n\n',  # a key that ends with "usage"
        b'data: {"id":"a","tool":"{\\"usage\\":null}"}\n\n',  # inside a string
        b'data: {"id":"a","usage":7}\n\n',  # not a usage OpenAI writes
        b'data: "usage"\n\n',  # not an object
        b'data: {"id":"a","usage":null\n\n',  # not JSON
        b'data: {"id":"a",\ndata: "usage":null}\n\n',  # two data lines
        b': comment "usage":null}\n\n',
        # past MAX_CUTS_TRIED look-alikes after it, the work stops: the chunk goes out as it came
        b'data: {"usage":null,"x":[' + b",".join([b'{"usage":null}'] * 20) + b"]}\n\n",
    ]
    for event in kept:
        assert run([event])[0] == event, event


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (b'data: {"usage":null}\n\n', b"data: {}\n\n"),
        (b'data:{"id":"a","usage":null}\n\n', b'data:{"id":"a"}\n\n'),
        (b'data: {"usage": null, "id": "a"}\n\n', b'data: {"id": "a"}\n\n'),
        (b'data: {"id": "a" , "usage" :null }\n\n', b'data: {"id": "a"  }\n\n'),
        (b'data: {"id":"a","usage":null,"x":{"usage":null}}\n\n', b'data: {"id":"a","x":{"usage":null}}\n\n'),
        (b'id: 4\nevent: chunk\ndata: {"id":"a","usage":null}\n\n', b'id: 4\nevent: chunk\ndata: {"id":"a"}\n\n'),
        # Azure's first chunk (prompt filter results) has no choices and no usage: kept, trimmed
        (b'data: {"choices":[],"prompt_filter_results":[],"usage":null}\n\n', b'data: {"choices":[],"prompt_filter_results":[]}\n\n'),
    ],
)
def test_usage_null_is_removed_whatever_its_place_and_spacing(event: bytes, expected: bytes) -> None:
    assert run([event])[0] == expected
    assert msgspec.json.decode(expected.split(b"data:")[-1]) is not None


def test_usage_on_a_chunk_with_choices_is_counted_and_kept() -> None:
    event = b'data: {"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":4,"completion_tokens":6}}\n\n'
    out, stream_filter = run([event])
    assert out == event and stream_filter.usage == {"input": 4, "output": 6}


def test_an_event_past_the_bound_passes_through_as_it_comes() -> None:
    stream_filter = InjectedUsageFilter(max_held=64)
    big = b'data: {"id":"' + b"x" * 200 + b'","usage":null}'
    assert stream_filter.feed(big[:40]) == b""  # held: under the bound, it may still end
    out = stream_filter.feed(big[40:100])
    assert out == big[:100]  # past it: everything so far, unchanged
    assert stream_filter.feed(big[100:]) == big[100:]  # and what follows of it, at once
    assert stream_filter.feed(b"\n\n") == b"\n\n"
    # the next event is filtered again
    assert stream_filter.feed(b'data: {"id":"b","usage":null}\n\n') == b'data: {"id":"b"}\n\n'
    assert stream_filter.finish() == b""


def test_finish_gives_back_an_unended_event_unchanged() -> None:
    stream_filter = InjectedUsageFilter()
    assert stream_filter.feed(b'data: {"id":"a"}\n\ndata: {"id":"b","usage":null}') == b'data: {"id":"a"}\n\n'
    assert stream_filter.finish() == b'data: {"id":"b","usage":null}'
    assert stream_filter.feed(b"") == b"" and stream_filter.finish() == b""


# -- add_include_usage ----------------------------------------------------------------------------
def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    ("request_body", "options"),
    [
        ({"model": "m", "stream": True, "messages": []}, {"include_usage": True}),
        ({"model": "m", "stream": True, "stream_options": None}, {"include_usage": True}),
        ({"model": "m", "stream": True, "stream_options": {}}, {"include_usage": True}),
        ({"model": "m", "stream": True, "stream_options": {"include_usage": False}}, {"include_usage": True}),
        ({"stream": True, "stream_options": {"include_obfuscation": False}}, {"include_obfuscation": False, "include_usage": True}),
    ],
)
def test_include_usage_is_added_to_a_stream_that_did_not_ask(request_body: dict[str, Any], options: dict[str, Any]) -> None:
    changed = add_include_usage(_body(request_body))
    assert changed is not None
    decoded = json.loads(changed)
    assert decoded == {**request_body, "stream_options": options}
    assert list(decoded) == list({**request_body, "stream_options": options})  # fields keep their order


@pytest.mark.parametrize(
    "body",
    [
        _body({"model": "m", "stream": True, "stream_options": {"include_usage": True}}),
        _body({"model": "m", "stream": False}),
        _body({"model": "m"}),
        _body({"model": "m", "stream": "true"}),
        _body({"model": "m", "stream": 1}),
        _body({"model": "m", "stream": True, "stream_options": "usage"}),
        _body([{"stream": True}]),
        b"",
        b"{",
        b"not json",
        b'{"stream": true, "n": 1e400}',
        b"[" * 100_000,
    ],
)
def test_include_usage_is_left_alone(body: bytes) -> None:
    assert add_include_usage(body) is None


def test_include_usage_keeps_every_value() -> None:
    body = b'{"model":"gpt-4o","stream":true,"seed":123456789012345678901234567890,"messages":[{"role":"user","content":"caf\xc3\xa9 \\u2603"}]}'
    changed = add_include_usage(body)
    assert changed is not None
    assert json.loads(changed) == {**json.loads(body), "stream_options": {"include_usage": True}}
