"""Differential fuzzing of the HTTP/1.1 framing the relay does itself, with h11 as the reference.

The relay parses request bodies (Content-Length and chunked) and upstream responses with its own
sans-IO code (`llmrelay.proto.h1.framing`, `llmrelay.proto.h1.client`). Parser disagreement is how
requests are smuggled, so these properties check, against h11 on the same bytes:

- a chunked body: whenever our decoder accepts, h11 accepts too and both see the same content and the
  same end (the bytes after it belong to the next message); our decoder may only be the stricter one;
- the result never depends on how the bytes were split into reads;
- a response head: status, fields and body framing as h11's client reads them, whenever we accept;
  and never one with both Content-Length and Transfer-Encoding or a Content-Length list (h11 reads
  those, the relay refuses them as 502: it would otherwise pass a wrong Content-Length on).
"""

from __future__ import annotations

import h11
from hypothesis import given
from hypothesis import strategies as st

from llmrelay.proto.h1.framing import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, BodyDecoder, FramingError
from llmrelay.proto.h1.client import parse_response_head

HEX = b"0123456789abcdefABCDEF"


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    """Mostly valid chunked bodies, with mutations where framing bugs hide."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        data = draw(st.binary(min_size=1, max_size=40))
        size = b"%x" % len(data)
        if draw(st.booleans()):
            size = size.upper()
        if draw(st.integers(0, 9)) == 0:
            size = b"0" * draw(st.integers(1, 20)) + size  # leading zeros
        extension = draw(st.sampled_from([b"", b";a=b", b";x", b'; q="v"', b";\x01", b" ;a"]))
        parts.append(size + extension + b"\r\n" + data + b"\r\n")
    trailers = draw(st.sampled_from([b"", b"X-T: 1\r\n", b"X-T: 1\r\nY: 2\r\n", b" bad\r\n", b"nocolon\r\n"]))
    body = b"".join(parts) + b"0\r\n" + trailers + b"\r\n"
    if draw(st.integers(0, 3)) == 0:  # one byte changed, inserted or dropped
        position = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["insert", "replace", "drop"]))
        byte = bytes([draw(st.sampled_from(list(b"\r\n \t;:0aZ\x00\x7f\xff")))])
        if action == "insert":
            body = body[:position] + byte + body[position:]
        elif position < len(body):
            body = body[:position] + (byte if action == "replace" else b"") + body[position + 1 :]
    return body


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def ours(pieces: list[bytes], decoder: BodyDecoder) -> tuple[bytes, bytes] | None:
    """(content, leftover), or None when our decoder refuses or wants more."""
    content = b""
    try:
        for piece in pieces:
            content += decoder.feed(piece)
    except FramingError:
        return None
    if not decoder.done:
        return None
    return content, decoder.leftover


def h11_request_body(body: bytes) -> tuple[bytes, bytes] | None:
    """(content, trailing bytes) of a chunked POST as h11 reads it, or None when h11 refuses."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    content = b""
    try:
        event = connection.next_event()
        assert isinstance(event, h11.Request)
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Data):
                content += event.data
            elif isinstance(event, h11.EndOfMessage):
                return content, connection.trailing_data[0]
            else:
                return None  # NEED_DATA: h11 wants more
    except h11.RemoteProtocolError:
        return None


@given(body=chunked_bodies(), tail=st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n", b"x"]))
def test_chunked_decoder_never_accepts_what_h11_reads_differently(body: bytes, tail: bytes) -> None:
    result = ours([body + tail], BodyDecoder(CHUNKED))
    if result is None:
        return  # refusing is always allowed: we may be the stricter parser
    reference = h11_request_body(body + tail)
    assert reference is not None, f"we accept a chunked body h11 refuses: {body!r}"
    assert result == reference


@given(body=chunked_bodies(), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_chunked_decoder_does_not_depend_on_read_boundaries(body: bytes, cuts: list[int]) -> None:
    whole = ours([body], BodyDecoder(CHUNKED))
    pieces = ours(split(body, cuts), BodyDecoder(CHUNKED))
    if whole is not None:
        assert pieces == whole
    else:
        assert pieces is None


@given(length=st.integers(0, 50), data=st.binary(max_size=80), cuts=st.lists(st.integers(0, 100), max_size=5))
def test_content_length_body_ends_exactly(length: int, data: bytes, cuts: list[int]) -> None:
    decoder = BodyDecoder(LENGTH, length)
    content = b"".join(decoder.feed(piece) for piece in split(data, cuts))
    assert content == data[:length]
    assert decoder.done == (len(data) >= length)
    if decoder.done:
        assert decoder.leftover == data[length:]


FIELD_NAMES = [b"Content-Length", b"Transfer-Encoding", b"Connection", b"Content-Type", b"X-A", b"Set-Cookie"]
FIELD_VALUES = [b"0", b"12", b"12, 12", b"12, 13", b"chunked", b"gzip, chunked", b"chunked, gzip", b"close",
                b"keep-alive", b"text/event-stream", b" padded\t", b"a\x01b", b"", b"\xff"]


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"http/1.1"]))
    status = draw(st.sampled_from([b"200", b"204", b"304", b"404", b"100", b"99", b"2000", b"5xx"]))
    reason = draw(st.sampled_from([b" OK", b"", b" ", b" Not Found", b" a\x00b"]))
    fields = draw(st.lists(st.tuples(st.sampled_from(FIELD_NAMES), st.sampled_from(FIELD_VALUES)), max_size=5))
    lines = [version + b" " + status + reason] + [name + b": " + value for name, value in fields]
    if draw(st.integers(0, 5)) == 0:
        lines.append(draw(st.sampled_from([b" folded", b"bad name: x", b"nocolon", b":empty"])))
    return b"\r\n".join(lines)


@given(head=response_heads(), method=st.sampled_from([b"GET", b"POST", b"HEAD"]))
def test_response_head_matches_h11(head: bytes, method: bytes) -> None:
    try:
        parsed = parse_response_head(head, method)
    except FramingError:
        return
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(head + b"\r\n\r\n")
    try:
        event = client.next_event()
    except h11.RemoteProtocolError as exc:
        raise AssertionError(f"we accept a response head h11 refuses ({exc}): {head!r}") from None
    assert isinstance(event, (h11.Response, h11.InformationalResponse)), event
    assert parsed.status == event.status_code
    # Never both framings, never a Content-Length list: what is accepted can be passed on as it is.
    lengths = [value for name, value in parsed.headers if name == b"content-length"]
    assert len(lengths) <= 1 and b"," not in b"".join(lengths), head
    assert not (lengths and any(name == b"transfer-encoding" for name, _ in parsed.headers)), head
    # h11 folds repeated identical Content-Length fields into one; every other field must match.
    assert [f for f in parsed.headers if f[0] != b"content-length"] == [
        f for f in event.headers if f[0] != b"content-length"
    ]
    if isinstance(event, h11.InformationalResponse):
        return
    # Body framing: h11 decides by the same rules (RFC 9112 section 6.3).
    if parsed.framing == NO_BODY:
        assert method == b"HEAD" or parsed.status in (204, 304)
    elif parsed.framing == LENGTH:
        lengths = {v.strip() for n, v in event.headers if n == b"content-length"}
        assert lengths == {b"%d" % parsed.length}
    elif parsed.framing == CHUNKED:
        assert any(n == b"transfer-encoding" for n, _ in event.headers)
    else:
        assert parsed.framing == UNTIL_CLOSE and not parsed.keep_alive
    if parsed.keep_alive:
        assert client.their_http_version == b"1.1"
