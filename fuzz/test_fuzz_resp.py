"""Fuzzing of the RESP2 reply parser (`llmrelay.limits.resp`), which reads whatever a Redis server,
a proxy in front of it, or something that only pretends to be Redis sends back.

Properties:
- any reply tree, encoded and fed in any split, parses back to itself, in order, and the parser
  keeps nothing afterwards;
- arbitrary bytes, and valid replies with a byte changed, inserted or dropped, end in replies, a
  wait for more, or `ProtocolError`: never another exception, never a loop that does not end;
- a parser that raised `ProtocolError` raises it again (nothing after garbage is trusted).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llmrelay.limits.resp import NEED_DATA, ErrorReply, ProtocolError, Reply, RespParser, encode_command

LINE_TEXT = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=20)

leaves = st.one_of(
    LINE_TEXT,
    LINE_TEXT.map(lambda text: ErrorReply("ERR " + text)),
    st.integers(-(2**63), 2**63 - 1),
    st.binary(max_size=40),
    st.none(),
)
# Any str, lone surrogates too (a counter key is whatever a request carried).
ANY_TEXT = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=10)
replies: st.SearchStrategy[Reply] = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5), max_leaves=30)


def encode_reply(reply: Reply, null_array: bool = False) -> bytes:
    if reply is None:
        return b"*-1\r\n" if null_array else b"$-1\r\n"
    if isinstance(reply, str):
        return b"+" + reply.encode() + b"\r\n"
    if isinstance(reply, ErrorReply):
        return b"-" + reply.message.encode() + b"\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    return b"*%d\r\n" % len(reply) + b"".join(encode_reply(item) for item in reply)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def drain(parser: RespParser, bound: int) -> list[Reply]:
    out: list[Reply] = []
    for _ in range(bound):
        reply = parser.next_reply()
        if reply is NEED_DATA:
            return out
        out.append(reply)
    raise AssertionError("the parser produced more replies than there are bytes")


@given(st.lists(replies, min_size=1, max_size=6), st.lists(st.integers(0, 10_000), max_size=8), st.booleans())
def test_replies_round_trip_in_any_split(tree: list[Reply], cuts: list[int], null_array: bool) -> None:
    wire = b"".join(encode_reply(reply, null_array) for reply in tree)
    parser = RespParser()
    got: list[Reply] = []
    for piece in split(wire, cuts):
        parser.feed(piece)
        got += drain(parser, len(wire) + 1)
    assert got == tree
    assert parser.buffered == 0


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    wire = b"".join(encode_reply(reply) for reply in draw(st.lists(replies, min_size=1, max_size=3)))
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(wire)))
        byte = bytes([draw(st.sampled_from(list(b"\r\n*$:+-_%0123456789\x00\xff")))])
        action = draw(st.sampled_from(["insert", "replace", "drop"]))
        if action == "insert":
            wire = wire[:position] + byte + wire[position:]
        elif position < len(wire):
            wire = wire[:position] + (byte if action == "replace" else b"") + wire[position + 1 :]
    return wire


@given(mangled(), st.lists(st.integers(0, 10_000), max_size=6))
def test_garbage_never_crashes_nor_hangs(wire: bytes, cuts: list[int]) -> None:
    parser = RespParser()
    try:
        for piece in split(wire, cuts):
            parser.feed(piece)
            drain(parser, len(wire) + 1)
    except ProtocolError:
        try:
            parser.next_reply()
        except ProtocolError:
            return
        raise AssertionError("a broken parser answered again")


@given(st.lists(st.one_of(st.binary(max_size=30), ANY_TEXT, st.integers(-(10**12), 10**12)), min_size=1, max_size=8))
def test_commands_are_arrays_of_bulk_strings(args: list[bytes | str | int]) -> None:
    parser = RespParser()
    parser.feed(encode_command(*args))
    expected = [a if isinstance(a, bytes) else str(a).encode("utf-8", "surrogatepass") for a in args]
    assert parser.next_reply() == expected
    assert parser.next_reply() is NEED_DATA
