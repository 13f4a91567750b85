"""HTTP/2 request heads checked and translated (sans-IO): what is malformed, what the relay sees."""

from __future__ import annotations

import pytest

from llmrelay.proto.errors import InvalidResponseHead
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.proto.h2.request import MalformedRequest, decoded_list_limit, request_head, response_fields, trailer_fields

LIMITS = HeadLimits(max_request_line=8192, max_header_bytes=4096, max_header_count=20)
CLIENT = ("10.0.0.1", 5000)
BASE = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/v1/chat?x=1"), (b":authority", b"relay.test:8443")]


def head(fields: list[tuple[bytes, bytes]], end_stream: bool = False):  # type: ignore[no-untyped-def]
    return request_head(fields, end_stream, "https", CLIENT, LIMITS)


def refused(fields: list[tuple[bytes, bytes]], end_stream: bool = False) -> MalformedRequest:
    with pytest.raises(MalformedRequest) as caught:
        head(fields, end_stream)
    return caught.value


def test_an_ordinary_request_looks_like_http1_to_the_relay() -> None:
    result = head([*BASE, (b"content-type", b"application/json"), (b"content-length", b"12")])
    assert result.method == b"POST"
    assert result.target == b"/v1/chat?x=1"
    assert result.http_version == b"2"
    assert result.scheme == "https"
    assert result.client == CLIENT
    assert result.keep_alive
    assert result.headers == [(b"content-type", b"application/json"), (b"content-length", b"12"), (b"host", b"relay.test:8443")]
    assert result.body_length == 12 and result.has_body
    assert not result.websocket


def test_body_framing_from_end_stream_and_content_length() -> None:
    ended = head(BASE, end_stream=True)
    assert ended.body_length == 0 and not ended.has_body
    open_body = head(BASE)
    assert open_body.body_length is None and open_body.has_body
    empty = head([*BASE, (b"content-length", b"0")])
    assert empty.body_length == 0 and not empty.has_body
    assert refused([*BASE, (b"content-length", b"5")], end_stream=True).status == 400
    assert refused([*BASE, (b"content-length", b"5"), (b"content-length", b"6")]).status == 400
    assert refused([*BASE, (b"content-length", b"-1")]).status == 400


def test_an_existing_host_is_kept_and_must_match_authority() -> None:
    result = head([*BASE, (b"host", b"RELAY.test:8443")])
    assert [value for name, value in result.headers if name == b"host"] == [b"RELAY.test:8443"]
    assert refused([*BASE, (b"host", b"other.test")]).status == 400
    no_authority = [field for field in BASE if field[0] != b":authority"]
    assert head([*no_authority, (b"host", b"h.test")]).header(b"host") == b"h.test"
    assert refused(no_authority).status == 400
    assert refused([*no_authority, (b"host", b"a@b")]).status == 400


@pytest.mark.parametrize(
    "fields",
    [
        [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")],  # no :scheme
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],  # no :path
        [(b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")],  # no :method
        [*BASE, (b":method", b"GET")],  # repeated
        [*BASE, (b":status", b"200")],  # a response pseudo-header
        [*BASE, (b":foo", b"x")],  # unknown
        [BASE[0], (b"accept", b"*/*"), *BASE[1:]],  # pseudo after regular
        [*BASE, (b"Accept", b"*/*")],  # upper case name
        [*BASE, (b"bad name", b"x")],
        [*BASE, (b"connection", b"keep-alive")],
        [*BASE, (b"keep-alive", b"5")],
        [*BASE, (b"proxy-connection", b"x")],
        [*BASE, (b"transfer-encoding", b"chunked")],
        [*BASE, (b"upgrade", b"websocket")],
        [*BASE, (b"te", b"gzip")],
        [*BASE, (b"x-a", b"one\r\ntwo")],
        [*BASE, (b"x-a", b"nul\x00")],
        [*BASE, (b"x-a", b" padded")],
        [*BASE, (b"x-a", b"padded\t")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"a")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"no-slash"), (b":authority", b"a")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a b"), (b":authority", b"a")],
        [(b":method", b"G T"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a/b")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":protocol", b"websocket"), (b":authority", b"a")],
    ],
)
def test_malformed_requests_are_refused_with_400(fields: list[tuple[bytes, bytes]]) -> None:
    assert refused(fields).status == 400


def test_te_trailers_is_allowed() -> None:
    assert head([*BASE, (b"te", b"trailers")]).header(b"te") == b"trailers"


def test_sizes_beyond_the_head_limits_get_431_or_414() -> None:
    many = [*BASE] + [(b"x-h%d" % i, b"v") for i in range(21)]
    assert refused(many).status == 431
    big = [*BASE, (b"x-big", b"v" * 4096)]
    assert refused(big).status == 431
    long_path = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/" + b"a" * 8192), (b":authority", b"a")]
    assert refused(long_path).status == 414


def test_a_refusal_carries_method_and_target_for_the_access_log_but_no_value() -> None:
    error = refused([*BASE, (b"authorization", b"Bearer sk-secret\r\n")])
    assert error.method == b"POST"
    assert b"sk-secret" not in error.message.encode() and "sk-secret" not in str(error)


def test_cookie_crumbs_are_joined() -> None:
    result = head([*BASE, (b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")])
    assert [value for name, value in result.headers if name == b"cookie"] == [b"a=1; b=2"]


def test_extended_connect_is_a_websocket_request_on_its_path() -> None:
    fields = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/ws/chat"), (b":authority", b"r.test")]
    result = head([*fields, (b"sec-websocket-version", b"13")])
    assert result.method == b"CONNECT" and result.websocket and result.target == b"/ws/chat"
    assert result.has_body and result.body_length is None
    assert refused([*fields[:1], (b":protocol", b"h3-datagram"), *fields[2:]]).status == 400


def test_plain_connect_targets_its_authority() -> None:
    result = head([(b":method", b"CONNECT"), (b":authority", b"api.example.com:443")])
    assert result.method == b"CONNECT" and result.target == b"api.example.com:443" and not result.websocket
    assert refused([(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")]).status == 400
    assert refused([(b":method", b"CONNECT")]).status == 400


def test_the_decoder_limit_holds_every_list_within_the_head_limits() -> None:
    # max_header_count fields of max_header_bytes in all, plus the pseudo-headers, counted the RFC way
    limit = decoded_list_limit(LIMITS)
    worst = LIMITS.max_header_bytes + LIMITS.max_request_line + 32 * (LIMITS.max_header_count + 4)
    assert limit >= worst


def test_response_fields_drop_connection_specific_names_and_lower_case() -> None:
    fields = response_fields(200, [(b"Content-Type", b"text/plain"), (b"connection", b"close"), (b"transfer-encoding", b"chunked"), (b"x-a", b"1")])
    assert fields == [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-a", b"1")]
    with pytest.raises(InvalidResponseHead):
        response_fields(101, [])
    assert trailer_fields([(b"X-Usage", b"3"), (b":status", b"200"), (b"te", b"x")]) == [(b"x-usage", b"3")]
