"""Usage that the relay asks for on a client's behalf, hidden from that client again (sans-IO).

OpenAI reports a stream's usage only when the request asks for it (`stream_options.include_usage`).
With `limits.inject_stream_usage = true` the relay adds that option to a streamed chat completions
request that did not ask (`add_include_usage`), so that the tokens can be counted and limited; and
since the client did not ask, `InjectedUsageFilter` gives it back the very bytes it would have had
without the option:

- every chunk carries `"usage":null` when the option is on: that member is removed textually from
  the `data:` JSON (whatever the spacing around `:` and `,`), leaving the rest of the bytes as they
  were. The usual place, last before the closing brace, is recognised without decoding; elsewhere a
  removal is kept only when the JSON without it decodes to the same object minus `usage` (a nested
  `usage` member or a look-alike inside a string is never touched; the last `MAX_CUTS_TRIED` places
  are tried, so a chunk full of nested look-alikes costs bounded work and goes out as it came);
- the final usage-only chunk (`"choices":[]` and a usage object) is dropped whole, and its usage is
  kept in `usage` (`{"input": N, "output": M}`) and handed to `on_usage`, for the accounting. A
  usage object on a chunk that also carries choices (some OpenAI-compatible servers) is counted the
  same way and left in place: that chunk is content the client needs.

The filter never delays a complete event: each `feed` returns every event the chunk completed, and
holds back only the bytes of the event still incomplete. An event that grows past `max_held` bytes
without ending is passed through unchanged as it comes, so a stream that is not SSE costs bounded
memory and no delay past that point. Lines may end with LF, CRLF or CR (a CR at the end of a chunk
whose LF comes in the next one is handled as one line ending). An event of several `data:` lines is
passed through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

MAX_HELD = 1 << 20  # bytes of one incomplete event held back at most
MAX_CUTS_TRIED = 8  # `"usage":` places tried (each one decoded) in one chunk, the last ones first

_decode = msgspec.json.decode
_encode = msgspec.json.encode
_TERMINATOR = re.compile(rb"\r\n|\r|\n")
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n|\Z)")
_USAGE = b'"usage"'
_WS = b" \t\r\n"
# `"usage":null` as the last member of the object: what OpenAI writes in every chunk.
_NULL_LAST = re.compile(rb'"usage"[ \t\r\n]*:[ \t\r\n]*null[ \t\r\n]*\}[ \t\r\n]*\Z')
_MEMBER = re.compile(rb'"usage"[ \t\r\n]*:[ \t\r\n]*')


def add_include_usage(body: bytes) -> bytes | None:
    """An OpenAI request body with `"stream": true` and no `stream_options.include_usage` true, as
    the same JSON with `stream_options.include_usage = true` (other stream options kept); None when
    there is nothing to change: not streamed, already asked for, not a JSON object, or
    `stream_options` that is neither an object nor null (the provider will answer that one)."""
    try:
        request = _decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    if not isinstance(request, dict) or request.get("stream") is not True:
        return None
    options = request.get("stream_options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        return None
    elif options.get("include_usage") is True:
        return None
    request["stream_options"] = {**options, "include_usage": True}
    try:
        return _encode(request)
    except (msgspec.EncodeError, OverflowError, RecursionError):  # (a number msgspec could decode but not write back)
        return None


def _usage_counts(usage: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind, names in (("input", ("prompt_tokens", "input_tokens")), ("output", ("completion_tokens", "output_tokens"))):
        for name in names:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                counts[kind] = value
                break
    return counts


def _without_member(payload: bytes, expected: dict[str, Any]) -> bytes | None:
    """`payload` (a JSON object) with its top-level `"usage": null` member cut out textually,
    checked to decode to `expected` (the object without it); None when no cut passes the check."""
    for match in reversed(list(_MEMBER.finditer(payload))[-MAX_CUTS_TRIED:]):
        key, end = match.start(), match.end() + 4
        if not payload.startswith(b"null", match.end()):
            continue
        before = payload[:key].rstrip(_WS)
        if before.endswith(b","):  # `..., "usage": null` : the comma before it goes with it
            cut = payload[: len(before) - 1] + payload[end:]
        elif before.endswith(b"{"):  # `{"usage": null, ...` : the comma after it goes with it
            after = payload[end:].lstrip(_WS)
            if after.startswith(b","):
                after = after[1:].lstrip(_WS)
            cut = payload[:key] + after
        else:
            continue
        try:
            if _decode(cut) == expected:
                return cut
        except (msgspec.DecodeError, RecursionError):
            continue
    return None


class InjectedUsageFilter:
    """An OpenAI SSE stream, as the client would have had it without `include_usage`."""

    __slots__ = ("on_usage", "max_held", "usage", "_held", "_held_size", "_line_empty", "_cr_owner", "_passing")

    def __init__(self, on_usage: Callable[[dict[str, int]], None] | None = None, max_held: int = MAX_HELD) -> None:
        self.on_usage = on_usage
        self.max_held = max_held
        self.usage: dict[str, int] | None = None  # the usage of the dropped final chunk, once seen
        self._held: list[bytes] = []  # the incomplete event's bytes so far (joined once it ends)
        self._held_size = 0
        self._line_empty = True  # the line being read has no byte yet
        # A chunk ended with a CR line ending: an LF first in the next chunk completes it, and goes
        # where that CR went: "held" (the current event), "sent" or "dropped" (a finished event).
        self._cr_owner = ""
        self._passing = False  # the current event outgrew max_held: its bytes go out as they come

    def feed(self, chunk: bytes) -> bytes:
        """What may be sent now: every event that `chunk` completed (changed as said above), and,
        for an event past `max_held`, its bytes so far."""
        if not chunk:
            return b""
        out: list[bytes] = []
        start = 0
        owner, self._cr_owner = self._cr_owner, ""
        if owner and chunk[0] == 0x0A:  # the LF of a CRLF split between chunks
            start = 1
            if owner == "sent":
                out.append(b"\n")
            elif owner == "held":
                if self._passing:
                    out.append(b"\n")
                else:
                    self._hold(b"\n")
        event_start = start
        kept = True
        for end in self._event_ends(chunk, start):
            event = chunk[event_start:end]
            event_start = end
            if self._passing:
                out.append(event)
                kept, self._passing = True, False
                continue
            if self._held:
                self._held.append(event)
                event = self._take_held()
            changed = self._event(event)
            kept = changed is not None
            if changed:
                out.append(changed)
        if chunk[-1] == 0x0D and len(chunk) > start:  # a CR line ending whose LF may come next
            if event_start == len(chunk):
                self._cr_owner = "sent" if kept else "dropped"
            else:
                self._cr_owner = "held"
        rest = chunk[event_start:]
        if rest:
            if self._passing:
                out.append(rest)
            else:
                self._hold(rest)
                if self._held_size > self.max_held:
                    out.append(self._take_held())
                    self._passing = True
        return b"".join(out)

    def _event_ends(self, chunk: bytes, start: int) -> list[int]:
        """Where the events that `chunk[start:]` completes end (just past their blank line); the
        line state is carried to the next chunk."""
        size = len(chunk)
        if start >= size:
            return []
        ends: list[int] = []
        empty = self._line_empty  # the line at `start` has no byte yet
        if 0x0D not in chunk:  # LF only (OpenAI's streams): blank lines found by `find`, in C
            pos = start
            while pos < size:
                if empty and chunk[pos] == 0x0A:
                    pos += 1
                else:
                    found = chunk.find(b"\n\n", pos)
                    if found < 0:
                        break
                    pos = found + 2
                ends.append(pos)
                empty = True
            self._line_empty = chunk[-1] == 0x0A
            return ends
        line_start = start
        for match in _TERMINATOR.finditer(chunk, start):
            if empty and match.start() == line_start:
                ends.append(match.end())
            empty = True
            line_start = match.end()
        self._line_empty = line_start == size
        return ends

    def finish(self) -> bytes:
        """The bytes still held (an event the stream never ended), unchanged."""
        return self._take_held()

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._held_size += len(data)

    def _take_held(self) -> bytes:
        held = b"".join(self._held)
        self._held, self._held_size = [], 0
        return held

    # -- one complete event -----------------------------------------------------------------------
    def _event(self, event: bytes) -> bytes | None:
        """The event as the client would have had it; None to drop it (the usage-only chunk)."""
        if _USAGE not in event:
            return event
        if event.startswith(b"data:") and event.find(b"\n") == len(event) - 2 and event.endswith(b"\n\n") and 0x0D not in event:
            content = event[:-2]  # (one data line, LF endings: OpenAI's shape, no line splitting)
            prefix = 6 if content.startswith(b"data: ") else 5
            changed = self._payload(content[prefix:])
            return None if changed is None else content[:prefix] + changed + b"\n\n"
        lines = _LINE.findall(event)
        data = [index for index, (content, _) in enumerate(lines) if content.startswith(b"data:")]
        if len(data) != 1:
            return event
        content, ending = lines[data[0]]
        prefix = 6 if content.startswith(b"data: ") else 5
        payload = content[prefix:]
        changed = self._payload(payload)
        if changed is None:
            return None
        if changed is payload:
            return event
        lines[data[0]] = (content[:prefix] + changed, ending)
        return b"".join(content + ending for content, ending in lines)

    def _payload(self, payload: bytes) -> bytes | None:
        """The data without its top-level `usage` member (the same object when it has none); None
        when it is the usage-only chunk."""
        at = payload.rfind(_USAGE)
        if at < 0:
            return payload
        member = _MEMBER.match(payload, at)
        if member is not None and _NULL_LAST.match(payload, at) and payload.lstrip(_WS).startswith(b"{"):
            # OpenAI's usual `...,"usage":null}`: a key after a comma, in the object the last brace
            # closes, is a member of the top-level object: cut without decoding
            before = payload[:at].rstrip(_WS)
            if before.endswith(b","):
                cut = before[:-1] + payload[member.end() + 4 :]
                if _USAGE not in cut:
                    return cut
                payload = cut  # (another "usage" remains: decode to see what it is)
        try:
            message = _decode(payload)
        except (msgspec.DecodeError, RecursionError):
            return payload
        if not isinstance(message, dict) or "usage" not in message:
            return payload
        usage = message.pop("usage")
        if isinstance(usage, dict):
            self.usage = _usage_counts(usage)
            if self.on_usage is not None:
                self.on_usage(self.usage)
            return None if message.get("choices") == [] else payload
        if usage is not None:
            return payload
        trimmed = _without_member(payload, message)
        return payload if trimmed is None else trimmed


__all__ = ["MAX_HELD", "InjectedUsageFilter", "add_include_usage"]
