"""Token usage read from responses as they pass, without ever holding a chunk back (sans-IO).

`UsageReader.feed(chunk)` is called after each chunk left for the client; `result()` at the end gives
`{"input": N, "output": M}` (the kinds the provider reported), or None.

- A JSON body: only its last `TAIL_BYTES` are kept; at the end the last `"usage"` / `"usageMetadata"`
  object in them is decoded (OpenAI chat and Responses, Anthropic messages, Gemini put it last).
- An SSE stream: only `data:` lines that contain `"usage` are decoded: OpenAI's last chunk (with
  `stream_options.include_usage`) or `response.completed`, Anthropic's `message_start` (input) and
  `message_delta` (output, cumulative), Gemini's `usageMetadata` (cumulative; the last one counts).
"""

from __future__ import annotations

from typing import Any

import msgspec

TAIL_BYTES = 4096
MAX_LINE = 65536  # an SSE line longer than this is not looked into
_INPUT_KEYS = ("prompt_tokens", "input_tokens", "promptTokenCount")
_OUTPUT_KEYS = ("completion_tokens", "output_tokens", "candidatesTokenCount")
_EXTRA_OUTPUT_KEYS = ("thoughtsTokenCount",)  # Gemini's thinking tokens are billed as output
_USAGE_KEYS = (b'"usage"', b'"usageMetadata"')


class _Counts(msgspec.Struct):
    """The token counts of a usage object, whichever provider wrote it (other fields are skipped)."""

    prompt_tokens: int | None = None
    input_tokens: int | None = None
    promptTokenCount: int | None = None  # noqa: N815 (Gemini's names)
    completion_tokens: int | None = None
    output_tokens: int | None = None
    candidatesTokenCount: int | None = None  # noqa: N815
    thoughtsTokenCount: int | None = None  # noqa: N815


_decode_counts = msgspec.json.Decoder(_Counts).decode


class _Envelope(msgspec.Struct):
    """A whole JSON response, of which only the usage object is read (every other field is skipped
    by the decoder without being built)."""

    usage: _Counts | None = None
    usageMetadata: _Counts | None = None  # noqa: N815 (Gemini's name)


_decode_envelope = msgspec.json.Decoder(_Envelope).decode


def _counts(data: bytes) -> dict[str, int] | None:
    """A usage object's JSON as {"input": N, "output": M} (the kinds present), or None."""
    try:
        counts = _decode_counts(data)
    except msgspec.DecodeError:
        return None
    return _kinds(counts)


def whole_body_usage(body: bytes) -> dict[str, int] | None:
    """The usage of a JSON response body held whole (one decode in C; a body longer than what a
    reader keeps is searched in its tail, as `UsageReader` does)."""
    if len(body) > TAIL_BYTES:
        return UsageReader._from_tail(body[-TAIL_BYTES:]) or None
    if b'"usage' not in body:
        return None
    return _whole_body_counts(body) or UsageReader._from_tail(body) or None


def _whole_body_counts(body: bytes) -> dict[str, int] | None:
    """The usage of a whole JSON response body; None when it is not one (or names no usage)."""
    try:
        envelope = _decode_envelope(body)
    except msgspec.DecodeError:
        return None
    counts = envelope.usage if envelope.usage is not None else envelope.usageMetadata
    return None if counts is None else _kinds(counts)


def _kinds(counts: _Counts) -> dict[str, int]:
    usage: dict[str, int] = {}
    value = counts.prompt_tokens if counts.prompt_tokens is not None else counts.input_tokens
    if value is None:
        value = counts.promptTokenCount
    if value is not None:
        usage["input"] = value
    value = counts.completion_tokens if counts.completion_tokens is not None else counts.output_tokens
    if value is None and counts.candidatesTokenCount is not None:
        value = counts.candidatesTokenCount + (counts.thoughtsTokenCount or 0)
    if value is not None:
        usage["output"] = value
    return usage


def _decode(data: bytes) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None


def _object_at(data: bytes, start: int) -> dict[str, int] | None:
    """The token counts of the JSON object that starts at `data[start]` (a `{`): it ends at the first
    `}` where the braces balance (counted in C; a usage object holds no strings with braces)."""
    end = data.find(b"}", start)
    while end >= 0:
        if data.count(b"{", start, end) == data.count(b"}", start, end + 1):
            return _counts(data[start : end + 1])
        end = data.find(b"}", end + 1)
    return None


class UsageReader:
    __slots__ = ("sse", "_tail", "_whole", "_partial", "_usage")

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self._tail = b""
        self._whole = True  # the tail is the whole body (it never grew past TAIL_BYTES)
        self._partial = b""
        self._usage: dict[str, int] = {}

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self.sse:
            tail = self._tail + chunk if self._tail else chunk
            if len(tail) > TAIL_BYTES:
                tail = tail[-TAIL_BYTES:]
                self._whole = False
            self._tail = tail
            return
        data = self._partial + chunk if self._partial else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._partial = data if len(data) <= MAX_LINE else b""
            return
        complete, rest = data[:cut], data[cut + 1 :]
        self._partial = rest if len(rest) <= MAX_LINE else b""
        if b'"usage' not in complete:
            return
        for line in complete.split(b"\n"):
            if line.startswith(b"data:") and b'"usage' in line:
                event = _decode(line[5:].strip())
                if isinstance(event, dict):
                    self._take(_usage_of(event))

    def result(self) -> dict[str, int] | None:
        if not self.sse and self._tail:
            # (a whole body is decoded at once, in C; the tail of a longer one is searched)
            counts = _whole_body_counts(self._tail) if self._whole else None
            if counts is None:
                counts = self._from_tail(self._tail)
            self._tail = b""
            if counts:
                self._usage.update(counts)
        return dict(self._usage) if self._usage else None

    @staticmethod
    def _from_tail(tail: bytes) -> dict[str, int] | None:
        """The last usage object of a JSON body's tail (`"usage": {...}`), decoded; or None."""
        at = tail.rfind(b'"usage')
        if at < 0:
            return None
        key_end = tail.find(b'"', at + 1) + 1
        if tail[at:key_end] not in _USAGE_KEYS:
            return None
        rest = tail[key_end:].lstrip(b" \t\r\n")
        if not rest.startswith(b":"):
            return None
        rest = rest[1:].lstrip(b" \t\r\n")
        if not rest.startswith(b"{"):
            return None
        return _object_at(tail, len(tail) - len(rest))

    def _take(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for kind, keys in (("input", _INPUT_KEYS), ("output", _OUTPUT_KEYS)):
            for key in keys:
                value = usage.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    if kind == "output":
                        extra = sum(v for k in _EXTRA_OUTPUT_KEYS if isinstance(v := usage.get(k), int))
                        value += extra
                    self._usage[kind] = value
                    break


def _usage_of(event: dict[str, Any]) -> Any:
    """The usage object of one SSE event of any provider, or None."""
    for key in ("usage", "usageMetadata"):
        value = event.get(key)
        if isinstance(value, dict):
            return value
    for outer in ("message", "response"):  # Anthropic's message_start, OpenAI's response.completed
        inner = event.get(outer)
        if isinstance(inner, dict) and isinstance(inner.get("usage"), dict):
            return inner["usage"]
    return None
