"""Fuzzes `observe.stream_usage`: the filter that hides usage the relay asked for, and the request
rewrite that asks for it.

- `InjectedUsageFilter` never raises, whatever bytes arrive in whatever pieces; bytes without a
  `"usage"` in them come out exactly as they went in, every event as soon as the piece that
  completes it was fed (only the bytes of the unended event wait); a generated OpenAI-style stream with `include_usage` (any chunk contents, any
  spacing, LF, CRLF or CR line endings, the usage member anywhere among the chunk's members), split
  anywhere, comes out as the same stream without it, and its usage is reported once, exactly;
- `add_include_usage` never raises; on any JSON request it adds exactly
  `stream_options.include_usage = true` to a stream that did not ask, keeping every other value.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from llmrelay.observe.stream_usage import InjectedUsageFilter, add_include_usage


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    pieces, previous = [], 0
    for point in points + [len(data)]:
        pieces.append(data[previous:point])
        previous = point
    return pieces


def _run(pieces: list[bytes], max_held: int = 1 << 20) -> tuple[bytes, InjectedUsageFilter, list[dict[str, int]]]:
    seen: list[dict[str, int]] = []
    stream_filter = InjectedUsageFilter(on_usage=seen.append, max_held=max_held)
    out = b"".join(stream_filter.feed(piece) for piece in pieces) + stream_filter.finish()
    return out, stream_filter, seen


cuts = st.lists(st.integers(min_value=0, max_value=4000), max_size=12)


@given(st.binary(max_size=2000), cuts, st.sampled_from([8, 64, 1 << 20]))
def test_arbitrary_bytes_never_raise(data: bytes, cut_points: list[int], max_held: int) -> None:
    out, _, _ = _run(_split(data, cut_points), max_held)
    if b'"usage"' not in data:
        assert out == data


sse_text = st.lists(st.sampled_from(list('ab :{}[],"\\\n\r') + ["data:", "data: ", "usage", '"usage"', "null"]), max_size=60).map("".join)


def _event_ends(data: bytes) -> list[int]:
    """Where each event of a whole stream ends (just past its blank line): the oracle."""
    ends, line_start = [], 0
    for match in re.finditer(rb"\r\n|\r|\n", data):
        if match.start() == line_start:
            ends.append(match.end())
        line_start = match.end()
    return ends


@given(st.lists(sse_text, max_size=20), cuts)
def test_sse_like_text_without_usage_passes_untouched_and_at_once(parts: list[str], cut_points: list[int]) -> None:
    data = "".join(parts).replace('"usage"', '"usagE"').encode()
    ends = _event_ends(data)
    stream_filter = InjectedUsageFilter()
    out, fed = b"", 0
    for piece in _split(data, cut_points):
        out += stream_filter.feed(piece)
        fed += len(piece)
        assert data.startswith(out) and len(out) <= fed
        # every event complete in what was fed is out (and one whose blank line ends with a CR
        # whose LF has not come yet, too: that may only make `out` longer)
        assert len(out) >= max((end for end in ends if end <= fed), default=0)
    assert out + stream_filter.finish() == data and stream_filter.usage is None


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
members = st.dictionaries(st.text(max_size=8).filter(lambda k: k != "usage"), json_values, min_size=1, max_size=5)


@st.composite
def openai_streams(draw: st.DrawFn) -> tuple[bytes, bytes, dict[str, int]]:
    """(the stream with include_usage, the same without, the usage of its final chunk)."""
    spaced = draw(st.booleans())
    separators = (", ", ": ") if spaced else (",", ":")
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    prompt, completion = draw(st.integers(0, 10**7)), draw(st.integers(0, 10**7))
    chunks: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for _ in range(draw(st.integers(1, 6))):
        fields = draw(members)
        fields["choices"] = [{"index": 0, "delta": {"content": draw(st.text(max_size=20))}, "finish_reason": None}]
        place = draw(st.integers(0, len(fields)))
        keys = list(fields)
        with_usage = {k: fields[k] for k in keys[:place]} | {"usage": None} | {k: fields[k] for k in keys[place:]}
        chunks.append((with_usage, fields))
    final = {"id": "chatcmpl-x", "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}
    asked = "".join(f"data: {json.dumps(w, separators=separators)}{newline}{newline}" for w, _ in chunks)
    plain = "".join(f"data: {json.dumps(p, separators=separators)}{newline}{newline}" for _, p in chunks)
    asked += f"data: {json.dumps(final, separators=separators)}{newline}{newline}"
    done = f"data: [DONE]{newline}{newline}"
    return (asked + done).encode(), (plain + done).encode(), {"input": prompt, "output": completion}


@given(openai_streams(), cuts)
def test_a_stream_with_injected_usage_comes_out_as_without(stream: tuple[bytes, bytes, dict[str, int]], cut_points: list[int]) -> None:
    asked, plain, usage = stream
    out, stream_filter, seen = _run(_split(asked, cut_points))
    assert out == plain
    assert stream_filter.usage == usage and seen == [usage]
    # what the client asked for itself passes untouched
    assert _run(_split(plain, cut_points))[0] == plain


@given(st.binary(max_size=300))
def test_add_include_usage_never_raises_on_bytes(body: bytes) -> None:
    changed = add_include_usage(body)
    if changed is not None:
        assert msgspec.json.decode(changed)["stream_options"]["include_usage"] is True


@given(
    st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    st.sampled_from([True, False, None, "true", 1]),
    st.one_of(st.just("absent"), st.none(), st.dictionaries(st.sampled_from(["include_usage", "x"]), json_scalars, max_size=2), json_scalars),
)
def test_add_include_usage_on_requests(fields: dict[str, Any], stream: Any, options: Any) -> None:
    request = dict(fields)
    request["stream"] = stream
    if options != "absent":
        request["stream_options"] = options
    else:
        request.pop("stream_options", None)
    changed = add_include_usage(json.dumps(request).encode())
    current = request.get("stream_options")
    asks_already = isinstance(current, dict) and current.get("include_usage") is True
    if stream is not True or asks_already or not (current is None or isinstance(current, dict)):
        assert changed is None
        return
    assert changed is not None
    expected = {**request, "stream_options": {**(current or {}), "include_usage": True}}
    assert msgspec.json.decode(changed) == expected
