"""Differential fuzz of whole HTTP/1.1 messages: ours, h11 and httptools (llhttp) on the same bytes.

h11 and llhttp are independent, widely deployed parsers with different leniencies. Whatever the relay
accepts must be read by both exactly as the relay reads it: the same start line, the same fields, the
same body content and the same end of the message (where the next one starts). Put the other way:
any input the three read differently is one the relay refuses (or, for a head, is still waiting on).
The adapters that turn each parser's output into a comparable `Message` are in `oracles.py`.

Requests are the head-guard fuzz's structured heads (`test_fuzz_head_guard`) with small Content-Length
values, sometimes an Upgrade, its smuggling mutations (CL+TE, repeated or odd Transfer-Encoding,
duplicate Content-Length, obs-fold, bare CR/LF, NUL, any byte inserted, absolute-form and other
targets...), then a body shaped by the framing fields actually present (sized to the Content-Length,
or chunked with good and bad size lines and extensions) and what a pipelining client might send next.
Responses are built the same way (status line, framing fields, the same mutations and bodies, now and
then after a 100 or 103), read as answers to GET or POST: llhttp is not told the request method, so
HEAD is left to `test_fuzz_wire`.

Two differences are not framing opinions and are set aside explicitly, each by reading again what the
relay reads. llhttp refuses any method outside its fixed table (`BREW`, `get`, RTSP's `DESCRIBE`...),
which the relay passes on: httptools then reads the same bytes with `POST` in the method's place. h11
refuses empty lines before a request line, which RFC 9112 section 2.2 says a server SHOULD ignore (the
relay and llhttp skip them): h11 then reads the bytes after them.

The last test keeps the disagreements this fuzz found, each now refused by the relay.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from oracles import (
    Message,
    Refused,
    Result,
    h11_request,
    h11_response,
    httptools_request,
    httptools_response,
    ours_request,
    ours_response,
)
from test_fuzz_head_guard import (
    INSERTABLE,
    INSERTABLE_OR_ANY_BYTE,
    LEGAL_CHUNKED,
    OBS_TEXT,
    STRUCTURAL_MUTATIONS,
    VCHAR,
    HeadParts,
    mutate_bytes,
    valid_heads,
)
from test_fuzz_wire import chunked_bodies

# Methods llhttp knows (most examples), and ones it refuses or treats specially.
KNOWN_METHODS = (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS", b"TRACE", b"PROPFIND", b"QUERY")
ODD_METHODS = (b"BREW", b"get", b"Post", b"DESCRIBE", b"PRI", b"M-SEARCH", b"SOURCE")
UPGRADES = (b"websocket", b"h2c", b"WebSocket/13", b"foo, websocket")
CONNECTION_VALUES = (b"upgrade", b"Upgrade", b"close", b"keep-alive", b"keep-alive, upgrade", b"close, upgrade")

# Chunk size lines: good ones, and the shapes parsers disagree on.
GOOD_SIZE_SUFFIXES = (b"", b"", b";a=b", b";x", b';q="v"', b";a=b;c", b';a="x\\"y"')
BAD_SIZE_LINES = (
    b"0x3", b"-3", b"+3", b" 3", b"3 ", b"3\t", b"\t3", b"3 ;a", b'3; q="v"', b"3;a b", b"3;{}", b"3;a = b",
    b"3;=b", b"3;a=", b"3;;", b"3;a==b", b'3;a="', b'3;a="x"y', b"3;\x80", b"3;a=\xff", b"1" * 17, b"0" * 17 + b"3",
    b"f" * 16, b"g", b"", b"3\x00", b"3\r", b"3\n",
)
TAILS = (b"", b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"x", b"\r\n", b"0\r\n\r\n", b"\n")

_CONTENT_LENGTH = re.compile(rb"(?im)^content-length[ \t]*:[ \t]*([0-9]{1,3})(?![0-9])")


@st.composite
def chunk_bodies(draw: st.DrawFn) -> bytes:
    """A chunked body whose size lines come from GOOD_SIZE_SUFFIXES, with a bad line now and then."""
    pieces = []
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(min_size=1, max_size=12))
        pieces.append(b"%x" % len(data) + draw(st.sampled_from(GOOD_SIZE_SUFFIXES)) + b"\r\n" + data + b"\r\n")
    if draw(st.booleans()):
        bad = draw(st.sampled_from(BAD_SIZE_LINES))
        pieces.insert(draw(st.integers(0, len(pieces))), bad + b"\r\nabc\r\n")
    last = draw(st.sampled_from((b"0", b"0", b"00", b"0;a=b", b"0 ", b"0;a b")))
    trailers = draw(st.sampled_from((b"", b"", b"X-T: 1\r\n", b"X-T : 1\r\n", b" fold\r\n")))
    return b"".join(pieces) + last + b"\r\n" + trailers + b"\r\n"


any_chunked = st.one_of(chunk_bodies(), chunked_bodies())


@st.composite
def body_for(draw: st.DrawFn, head: bytes) -> bytes:
    """Bytes after a head, shaped by the framing fields the head really has (however mangled)."""
    lengths = _CONTENT_LENGTH.findall(head)
    options = ["random"]
    if lengths:
        options += ["length", "length"]
    if b"chunked" in head.lower():
        options += ["chunked", "chunked"]
    kind = draw(st.sampled_from(options))
    if kind == "length":
        size = max(0, int(draw(st.sampled_from(lengths))) + draw(st.sampled_from((0, 0, 0, -1, 1))))
        return draw(st.binary(min_size=size, max_size=size))
    if kind == "chunked":
        return draw(any_chunked)
    return draw(st.binary(max_size=20))


@st.composite
def requests(draw: st.DrawFn, mutate: bool = True) -> bytes:
    """A request head (valid, then possibly mutated), a body for its framing, and what comes next."""
    high = mutate and draw(st.booleans())  # any byte inserted; and a quarter of the targets with obs-text
    parts: HeadParts = draw(valid_heads(VCHAR + OBS_TEXT if mutate and draw(st.integers(0, 3)) == 0 else VCHAR))
    if parts.target == b"*":  # OPTIONS *
        pass
    elif draw(st.integers(0, 4)) or not mutate:
        parts.method = draw(st.sampled_from(KNOWN_METHODS))
    elif draw(st.booleans()):
        parts.method = draw(st.sampled_from(ODD_METHODS))
    small = draw(st.integers(0, 40))
    parts.fields = [
        (name, b" %d" % small) if value is not None and name.lower() == b"content-length" else (name, value)
        for name, value in parts.fields
    ]
    if mutate and draw(st.integers(0, 5)) == 0:
        parts.fields.append((b"Connection", b" " + draw(st.sampled_from(CONNECTION_VALUES))))
        parts.fields.append((b"Upgrade", b" " + draw(st.sampled_from(UPGRADES))))
    if mutate and draw(st.booleans()):
        for name in draw(st.lists(st.sampled_from(sorted(STRUCTURAL_MUTATIONS)), min_size=1, max_size=2)):
            STRUCTURAL_MUTATIONS[name][0](draw, parts)
    head = parts.render()
    if mutate and draw(st.booleans()):
        head = mutate_bytes(draw, head, INSERTABLE_OR_ANY_BYTE if high else INSERTABLE)
    return head + draw(body_for(head)) + draw(st.sampled_from(TAILS))


# (usual, odd): an odd one is drawn one time in sixteen.
RESPONSE_VERSIONS = ((b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"), (b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1.2"))
STATUSES = ((b"200", b"200", b"201", b"204", b"304", b"404", b"500", b"100", b"103"), (b"101", b"099", b"2000", b"20"))
REASONS = ((b"OK", b"OK", b"", b"Not Found", b"Not  Found", b"\xe9t\xe9"), (b"a\x00b", b"a\tb", b"a\x7fb"))
INFORMATIONAL = (b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
RESPONSE_FIELDS = (
    (b"Content-Type", (b" text/event-stream", b" application/json; charset=utf-8")),
    (b"Connection", (b" close", b" keep-alive", b" Close", b"close", b" foo, close")),
    (b"Set-Cookie", (b" a=b; Path=/", b" \xff", b"")),
    (b"X-Request-Id", (b" abc ", b"\tabc\t", b" a\x01b")),
)
# The head-guard mutations that make sense for any message's fields.
RESPONSE_MUTATIONS = (
    "field_without_colon", "illegal_transfer_encoding", "length_and_chunked", "malformed_content_length",
    "obs_fold", "repeated_content_length", "space_before_colon",
)


def _mostly(draw: st.DrawFn, usual: tuple[bytes, ...], odd: tuple[bytes, ...]) -> bytes:
    return draw(st.sampled_from(odd if draw(st.integers(0, 15)) == 0 else usual))


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """A response head (mostly clean: one framing field or none), mutated now and then, and a body."""
    fields: list[tuple[bytes, bytes | None]] = []
    for name, values in draw(st.lists(st.sampled_from(RESPONSE_FIELDS), max_size=3)):
        fields.append((name, draw(st.sampled_from(values))))
    framing = draw(st.sampled_from(("none", "length", "length", "chunked", "chunked")))
    if framing == "length":
        fields.append((b"Content-Length", b" %d" % draw(st.integers(0, 30))))
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b" " + draw(st.sampled_from(LEGAL_CHUNKED))))
    version, status, reason = (_mostly(draw, *options) for options in (RESPONSE_VERSIONS, STATUSES, REASONS))
    parts = HeadParts(version, status, reason, [fields[i] for i in draw(st.permutations(range(len(fields))))])
    if draw(st.integers(0, 2)) == 0:
        for mutation in draw(st.lists(st.sampled_from(RESPONSE_MUTATIONS), min_size=1, max_size=2)):
            STRUCTURAL_MUTATIONS[mutation][0](draw, parts)
    head = parts.render()  # "version status reason", where HeadParts has "method target version"
    if draw(st.integers(0, 2)) == 0:
        head = mutate_bytes(draw, head, INSERTABLE_OR_ANY_BYTE)
    if draw(st.integers(0, 5)) == 0:
        head = draw(st.sampled_from(INFORMATIONAL)) + head
    return head + draw(body_for(head))


# -- the checks ------------------------------------------------------------------------------------------


def _httptools_request_known_method(data: bytes, ours: Message) -> Result:
    """httptools' reading; for a method llhttp does not know, its reading with POST in its place."""
    result = httptools_request(data)
    if not (isinstance(result, Refused) and result.unknown_method):
        return result
    method = ours.start[0]
    event("httptools: unknown method, read again as POST")
    at = len(data) - len(data.lstrip(b"\r\n"))  # (after the empty lines both skip)
    result = httptools_request(data[:at] + b"POST" + data[at + len(method) :])
    if not isinstance(result, Message):
        return result
    shift = len(method) - len(b"POST")
    return replace(result, start=(method, *result.start[1:]), end=None if result.end is None else result.end + shift)


def _h11_request_after_blank_lines(data: bytes) -> Result:
    """h11's reading of the request after any CR and LF bytes that come first (it refuses those)."""
    skipped = len(data) - len(data.lstrip(b"\r\n"))
    result = h11_request(data[skipped:])
    if skipped and isinstance(result, Message) and result.end is not None:
        event("h11: read again after the empty lines")
        return replace(result, end=result.end + skipped)
    return result


def _describe(data: bytes, ours: Result, h11_result: Result, httptools_result: Result) -> str:
    return f"\n input:     {data!r}\n ours:      {ours!r}\n h11:       {h11_result!r}\n httptools: {httptools_result!r}"


def _agrees(ours: Message, theirs: Result, head: bytes, read: Callable[[bytes], Result]) -> bool:
    if isinstance(theirs, Message):
        return theirs.key() == ours.key()
    if ours.end is None and isinstance(theirs, Refused):
        # We accepted the head and wait for more of the body; an oracle may refuse that body early (we
        # refuse it once its line is complete). It must still read the head alone as we do.
        alone = read(head)
        return isinstance(alone, Message) and (alone.start, alone.fields, alone.end) == (ours.start, ours.fields, None)
    return False


def check_request(data: bytes) -> Result:
    """Whatever we accept, h11 and httptools read the same way; returns our result."""
    ours = ours_request(data)
    unfinished = isinstance(ours, Message) and ours.end is None
    event(f"ours: {type(ours).__name__.strip('_')}{' (body unfinished)' if unfinished else ''}")
    if not isinstance(ours, Message):
        return ours  # refused, or the head is not all there: nothing is relayed yet
    h11_result = _h11_request_after_blank_lines(data)
    httptools_result = _httptools_request_known_method(data, ours)
    head = data[: data.find(b"\r\n\r\n") + 4]
    agree = _agrees(ours, h11_result, head, _h11_request_after_blank_lines) and _agrees(
        ours, httptools_result, head, lambda head: _httptools_request_known_method(head, ours)
    )
    assert agree, "we accept bytes the oracles read differently:" + _describe(data, ours, h11_result, httptools_result)
    # A connection we keep open is one llhttp keeps open too: the next bytes are a new request for both.
    if isinstance(httptools_result, Message) and ours.keep_alive:
        assert httptools_result.keep_alive, "we keep alive, llhttp does not:" + _describe(
            data, ours, h11_result, httptools_result
        )
    return ours


def check_response(data: bytes, method: bytes) -> Result:
    """Whatever response we accept, h11 and httptools read the same way; returns our result."""
    ours = ours_response(data, method)
    event(f"ours: {type(ours).__name__.strip('_')}")
    if not isinstance(ours, Message):
        return ours
    h11_result = h11_response(data, method)
    httptools_result = httptools_response(data)
    agree = (
        isinstance(h11_result, Message)
        and isinstance(httptools_result, Message)
        and ours.key() == h11_result.key() == httptools_result.key()
    )
    assert agree, "we accept a response the oracles read differently:" + _describe(
        data, ours, h11_result, httptools_result
    )
    return ours


# -- properties ------------------------------------------------------------------------------------------


@given(data=requests())
def test_requests_we_accept_are_read_the_same_by_h11_and_httptools(data: bytes) -> None:
    check_request(data)


@given(data=requests(mutate=False))
def test_valid_requests_are_accepted_and_read_the_same_by_all_three(data: bytes) -> None:
    """Not vacuous: a clean request head (known method, clean framing) is accepted, and agreed on."""
    head = data[: data.find(b"\r\n\r\n") + 4]
    assert isinstance(ours_request(head), Message), f"a clean head is refused: {head!r} {ours_request(head)!r}"
    check_request(data)


@given(data=responses(), method=st.sampled_from((b"GET", b"POST")))
def test_responses_we_accept_are_read_the_same_by_h11_and_httptools(data: bytes, method: bytes) -> None:
    check_response(data, method)


# -- what this fuzz found: accepted once, read differently by the oracles, refused now -------------------

FOUND = {
    # Chunk extensions were anything after `;`: h11 skips them, llhttp refuses what is not
    # `;name[=token|quoted-string]`. Now that grammar (RFC 9112 section 7.1.1, without BWS).
    "chunk extension with a space": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;a b\r\nabc\r\n0\r\n\r\n",
    "chunk extension with BWS": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'3; q="v"\r\nabc\r\n0\r\n\r\n',
    "chunk extension not a token": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;{}\r\nabc\r\n0\r\n\r\n",
    # llhttp refuses a request whose Transfer-Encoding value is followed by HTAB (RFC 9110's OWS allows
    # it, h11 and the guard took it)...
    "request Transfer-Encoding: chunked<HTAB>": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \tchunked\t\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    # ...and reads such a response until the connection closes, where h11 and we read it chunked.
    "response Transfer-Encoding: chunked<HTAB>": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    "response chunk extension with a space": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;a b\r\nabc\r\n0\r\n\r\n",
    # llhttp takes PRI for the HTTP/2 preface and refuses the rest; h11 and we read a request.
    "PRI method": b"PRI / HTTP/1.1\r\nHost: a\r\n\r\n",
    # httptools gives every byte after an upgrade request's head to the new protocol (even for
    # HTTP/1.0, whose Upgrade RFC 9110 says to ignore); h11 and we read the body first.
    "HTTP/1.0 upgrade with a body": b"GET / HTTP/1.0\r\nContent-Length: 1\r\nConnection: upgrade\r\n"
    b"Upgrade: websocket\r\n\r\nx",
    "h2c upgrade with a body": b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 3\r\n\r\nabc",
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_disagreements_found_by_this_fuzz_are_refused(name: str) -> None:
    data = FOUND[name]
    if data.startswith(b"HTTP/"):
        ours, h11_result = ours_response(data, b"GET"), h11_response(data, b"GET")
        httptools_result = httptools_response(data)
    else:
        ours, h11_result, httptools_result = ours_request(data), h11_request(data), httptools_request(data)
    readings = [result.key() if isinstance(result, Message) else result for result in (h11_result, httptools_result)]
    assert readings[0] != readings[1], "the oracles agree now: " + _describe(data, ours, h11_result, httptools_result)
    assert isinstance(ours, Refused), _describe(data, ours, h11_result, httptools_result)
