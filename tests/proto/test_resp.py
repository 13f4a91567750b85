"""RESP2 encoder and reply parser, with byte strings: every reply type, every split, garbage."""

from __future__ import annotations

import pytest

from llmrelay.limits.resp import (
    MAX_DEPTH,
    MAX_LINE,
    NEED_DATA,
    ErrorReply,
    ProtocolError,
    Reply,
    RespParser,
    encode_command,
    encode_commands,
)


def parse_all(data: bytes) -> list[Reply]:
    parser = RespParser()
    parser.feed(data)
    replies = []
    for _ in range(len(data) + 1):
        reply = parser.next_reply()
        if reply is NEED_DATA:
            break
        replies.append(reply)
    assert parser.buffered == 0
    return replies


def parse_split(data: bytes, cuts: list[int]) -> list[Reply]:
    """The same bytes fed in pieces, taking replies after every piece."""
    parser = RespParser()
    replies: list[Reply] = []
    start = 0
    for cut in [*cuts, len(data)]:
        parser.feed(data[start:cut])
        start = cut
        for _ in range(len(data) + 1):
            reply = parser.next_reply()
            if reply is NEED_DATA:
                break
            replies.append(reply)
    return replies


# Each case: wire bytes and the replies they hold.
CASES: list[tuple[bytes, list[Reply]]] = [
    (b"+OK\r\n", ["OK"]),
    (b"+\r\n", [""]),
    (b"-ERR unknown command 'SCRIPT'\r\n", [ErrorReply("ERR unknown command 'SCRIPT'")]),
    (b":0\r\n:-17\r\n:9223372036854775807\r\n", [0, -17, 9223372036854775807]),
    (b"$5\r\nhello\r\n", [b"hello"]),
    (b"$0\r\n\r\n", [b""]),
    (b"$-1\r\n", [None]),
    (b"$4\r\na\r\nb\r\n", [b"a\r\nb"]),  # a bulk string may hold CRLF
    (b"$3\r\n\x00\xff\x80\r\n", [b"\x00\xff\x80"]),
    (b"*0\r\n", [[]]),
    (b"*-1\r\n", [None]),
    (b"*3\r\n:1\r\n$1\r\nx\r\n$-1\r\n", [[1, b"x", None]]),
    (b"*2\r\n*2\r\n:1\r\n:2\r\n*0\r\n", [[[1, 2], []]]),
    (b"*2\r\n*1\r\n*1\r\n+deep\r\n-NOSCRIPT No matching script\r\n", [[[["deep"]], ErrorReply("NOSCRIPT No matching script")]]),
    (b"*1\r\n*-1\r\n", [[None]]),
    (b"+OK\r\n*2\r\n:1\r\n:2\r\n$2\r\nhi\r\n-ERR x\r\n", ["OK", [1, 2], b"hi", ErrorReply("ERR x")]),
]


@pytest.mark.parametrize(("wire", "expected"), CASES)
def test_every_reply_type(wire: bytes, expected: list[Reply]) -> None:
    assert parse_all(wire) == expected


@pytest.mark.parametrize(("wire", "expected"), CASES)
def test_split_at_every_byte_boundary(wire: bytes, expected: list[Reply]) -> None:
    for cut in range(len(wire) + 1):
        assert parse_split(wire, [cut]) == expected
    assert parse_split(wire, list(range(len(wire)))) == expected  # one byte at a time


def test_incomplete_reply_waits() -> None:
    parser = RespParser()
    parser.feed(b"*2\r\n$5\r\nhel")
    assert parser.next_reply() is NEED_DATA
    assert parser.next_reply() is NEED_DATA  # asking again changes nothing
    parser.feed(b"lo\r\n:7\r\n")
    assert parser.next_reply() == [b"hello", 7]
    assert parser.next_reply() is NEED_DATA


def test_error_reply_code() -> None:
    assert ErrorReply("NOSCRIPT No matching script. Please use EVAL.").code == "NOSCRIPT"
    assert ErrorReply("WRONGPASS").code == "WRONGPASS"


GARBAGE = [
    b"?what\r\n",  # unknown type
    b"\r\n",  # empty line
    b":12a\r\n",
    b": 12\r\n",
    b":+12\r\n",
    b":1_000\r\n",
    b":\r\n",
    b":-\r\n",
    b":123456789012345678901\r\n",
    b"$-2\r\n",
    b"$x\r\n",
    b"$3\r\nabcXY",  # bulk not followed by CRLF
    b"$99999999999\r\n",  # beyond the bulk bound
    b"*-5\r\n",
    b"*99999999999\r\n",
    b"+a\rb\r\n",  # bare CR inside a line
    b"+a\nb\r\n",  # bare LF inside a line
    b"%2\r\n",  # a RESP3 map: never asked for
    b"_\r\n",  # RESP3 null
]


@pytest.mark.parametrize("wire", GARBAGE)
def test_garbage_is_a_protocol_error(wire: bytes) -> None:
    parser = RespParser()
    parser.feed(wire)
    with pytest.raises(ProtocolError):
        parser.next_reply()
    with pytest.raises(ProtocolError):  # and the parser stays broken
        parser.next_reply()


def test_endless_line_is_refused_without_waiting_forever() -> None:
    parser = RespParser()
    parser.feed(b"+" + b"a" * (MAX_LINE - 1) + b"\r")
    assert parser.next_reply() is NEED_DATA
    parser.feed(b"a")
    with pytest.raises(ProtocolError, match="too long"):
        parser.next_reply()


def test_longest_line_is_read() -> None:
    parser = RespParser()
    parser.feed(b"+" + b"a" * (MAX_LINE - 1) + b"\r")
    assert parser.next_reply() is NEED_DATA
    parser.feed(b"\n")
    assert parser.next_reply() == "a" * (MAX_LINE - 1)


def test_nesting_is_bounded() -> None:
    parser = RespParser()
    parser.feed(b"*1\r\n" * (MAX_DEPTH + 1) + b":1\r\n")
    with pytest.raises(ProtocolError, match="nested"):
        parser.next_reply()
    parser = RespParser()
    parser.feed(b"*1\r\n" * MAX_DEPTH + b":1\r\n")
    reply = parser.next_reply()
    for _ in range(MAX_DEPTH):
        assert isinstance(reply, list) and len(reply) == 1
        reply = reply[0]
    assert reply == 1


def test_a_huge_array_header_allocates_nothing_up_front() -> None:
    parser = RespParser()
    parser.feed(b"*16000000\r\n:1\r\n")
    assert parser.next_reply() is NEED_DATA


def test_many_replies_over_many_feeds_keep_the_buffer_small() -> None:
    parser = RespParser()
    chunk = b"$10\r\n0123456789\r\n" * 1000
    count = 0
    for _ in range(20):
        parser.feed(chunk)
        for _ in range(2000):
            if parser.next_reply() is NEED_DATA:
                break
            count += 1
    assert count == 20_000
    assert parser.buffered == 0


def test_encode_command() -> None:
    assert encode_command("PING") == b"*1\r\n$4\r\nPING\r\n"
    assert encode_command("SET", b"k\r\n", 12, -3, "é") == (
        b"*5\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n$2\r\n-3\r\n$2\r\n\xc3\xa9\r\n"
    )
    assert encode_command("GET", b"") == b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"
    assert encode_command("GET", "\ud800") == b"*2\r\n$3\r\nGET\r\n$3\r\n\xed\xa0\x80\r\n"  # never a crash
    assert encode_commands([("PING",), ("ECHO", "x")]) == encode_command("PING") + encode_command("ECHO", "x")


def test_encode_refuses_what_redis_would_misread() -> None:
    with pytest.raises(ValueError):
        encode_command()
    with pytest.raises(TypeError):
        encode_command("SET", "k", True)
    with pytest.raises(TypeError):
        encode_command("SET", "k", 1.5)  # type: ignore[arg-type]


def test_a_command_parses_back_as_the_array_it_is() -> None:
    # A command is an array of bulk strings, so the reply parser reads it back.
    args: list[bytes] = [b"EVALSHA", b"0" * 40, b"1", b"llmrelay:limit:{r:v:k}", b"\x00\r\n\xff", b""]
    assert parse_all(encode_command(*args)) == [args]
