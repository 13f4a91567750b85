"""The relay's HPACK codec against `hpack`, the library h2 ships with: on any block `hpack`'s encoder
writes (Huffman or not, any table size, many blocks through one encoder/decoder pair) both decoders
give the same fields of the same types; on arbitrary bytes both fail with the same error or give the
same fields; and whatever our encoder writes, `hpack`'s decoder reads back as the fields given."""

from __future__ import annotations

import hpack
from hypothesis import given
from hypothesis import strategies as st
from hpack.exceptions import HPACKError
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable

from llmrelay.proto.h2.hpack_codec import Decoder, Encoder

_STATIC = HeaderTable.STATIC_TABLE
names = st.one_of(
    st.sampled_from([name for name, _ in _STATIC]),
    st.binary(max_size=12),
    st.sampled_from([b"x-request-id", b"content-type", b"openai-model"]),
)
values = st.one_of(st.sampled_from([value for _, value in _STATIC]), st.binary(max_size=40))
fields = st.tuples(names, values, st.booleans())  # (name, value, sensitive)
header_lists = st.lists(fields, max_size=12)
table_sizes = st.integers(min_value=0, max_value=4096)


def outcome(decoder: hpack.Decoder | Decoder, data: bytes, raw: bool = True) -> object:
    """What a decoder makes of `data`: the fields with their types, or the class of its error."""
    try:
        return [(type(field), tuple(field)) for field in decoder.decode(data, raw=raw)]
    except HPACKError as err:
        return type(err)


def pair(list_limit: int = 1 << 16, allowed: int = 4096) -> tuple[hpack.Decoder, Decoder]:
    theirs = hpack.Decoder(max_header_list_size=list_limit)
    ours = Decoder(max_header_list_size=list_limit)
    theirs.max_allowed_table_size = ours.max_allowed_table_size = allowed
    return theirs, ours


@given(st.lists(st.tuples(header_lists, st.booleans(), st.none() | table_sizes), min_size=1, max_size=6))
def test_blocks_from_hpack_decode_the_same(blocks: list[tuple[list[tuple[bytes, bytes, bool]], bool, int | None]]) -> None:
    encoder = hpack.Encoder()
    theirs, ours = pair()
    for headers, huffman, resize in blocks:
        if resize is not None:
            encoder.header_table_size = resize
        data = encoder.encode(headers, huffman=huffman)
        expected = outcome(theirs, data)
        assert outcome(ours, data) == expected
        assert not isinstance(expected, type)  # hpack always reads its own blocks
        assert ours.dynamic_entries == list(theirs.header_table.dynamic_entries)


@given(
    st.lists(header_lists, max_size=2),
    st.lists(st.binary(max_size=40), min_size=1, max_size=4),
    st.integers(min_value=0, max_value=2000),
    st.sampled_from([0, 64, 256, 4096]),
    st.booleans(),
)
def test_arbitrary_bytes_fail_or_decode_the_same(
    prefix: list[list[tuple[bytes, bytes, bool]]], garbage: list[bytes], list_limit: int, allowed: int, raw: bool
) -> None:
    theirs, ours = pair(list_limit, 4096)
    encoder = hpack.Encoder()
    for headers in prefix:  # fill both dynamic tables first, so that indexes past 61 can hit
        data = encoder.encode(headers)
        assert outcome(ours, data) == outcome(theirs, data)
    theirs.max_allowed_table_size = ours.max_allowed_table_size = allowed
    for data in garbage:
        expected = outcome(theirs, data, raw)
        assert outcome(ours, data, raw) == expected
        if isinstance(expected, type):
            break  # after an error the connection ends: the tables no longer matter
        assert ours.dynamic_entries == list(theirs.header_table.dynamic_entries)


@given(st.lists(st.tuples(header_lists, st.none() | table_sizes, st.booleans()), min_size=1, max_size=6))
def test_our_blocks_decode_with_hpack(blocks: list[tuple[list[tuple[bytes, bytes, bool]], int | None, bool]]) -> None:
    encoder = Encoder()
    theirs = hpack.Decoder(max_header_list_size=1 << 20)
    for headers, resize, as_tuples in blocks:
        if resize is not None:
            encoder.header_table_size = resize
            theirs.max_allowed_table_size = resize  # as if the client's SETTINGS were just acknowledged
        given_fields: list[object] = [
            (NeverIndexedHeaderTuple(name, value) if sensitive else HeaderTuple(name, value))
            if as_tuples
            else (name, value, sensitive)
            for name, value, sensitive in headers
        ]
        decoded = theirs.decode(encoder.encode(given_fields), raw=True)
        assert [tuple(field) for field in decoded] == [(name, value) for name, value, _ in headers]
        for field, (name, value, sensitive) in zip(decoded, headers):
            if sensitive:
                assert isinstance(field, NeverIndexedHeaderTuple)
        assert len(theirs.header_table.dynamic_entries) == 0


@given(header_lists, st.booleans(), st.data())
def test_damaged_blocks_fail_or_decode_the_same(headers: list[tuple[bytes, bytes, bool]], huffman: bool, data: st.DataObject) -> None:
    block = bytearray(hpack.Encoder().encode(headers, huffman=huffman))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):  # flip bytes, cut the block
        if block and data.draw(st.booleans()):
            block[data.draw(st.integers(min_value=0, max_value=len(block) - 1))] ^= data.draw(st.integers(1, 255))
        else:
            del block[data.draw(st.integers(min_value=0, max_value=len(block))) :]
    theirs, ours = pair(data.draw(st.integers(min_value=0, max_value=4000)))
    assert outcome(ours, bytes(block)) == outcome(theirs, bytes(block))
