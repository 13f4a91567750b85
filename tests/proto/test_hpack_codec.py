"""The relay's HPACK codec against RFC 7541: the Appendix C examples (with and without Huffman, the
dynamic table after each block, evictions), the errors h2 turns into COMPRESSION_ERROR, the header
list limit, and the encoder's choices (static index, literal without indexing, size updates)."""

from __future__ import annotations

import hpack
import pytest
from hpack.exceptions import HPACKDecodingError, InvalidTableIndex, InvalidTableSizeError, OversizedHeaderListError
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple

from llmrelay.proto.h2.hpack_codec import Decoder, Encoder, encode_field

Fields = list[tuple[bytes, bytes]]


def block(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def test_c2_literal_with_indexing() -> None:
    decoder = Decoder()
    fields = decoder.decode(block("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"), raw=True)
    assert fields == [(b"custom-key", b"custom-header")]
    assert decoder.dynamic_entries == [(b"custom-key", b"custom-header")]
    assert decoder.dynamic_table_size == 55


def test_c2_literal_without_indexing() -> None:
    decoder = Decoder()
    fields = decoder.decode(block("040c 2f73 616d 706c 652f 7061 7468"), raw=True)
    assert fields == [(b":path", b"/sample/path")]
    assert decoder.dynamic_entries == []


def test_c2_literal_never_indexed() -> None:
    decoder = Decoder()
    fields = decoder.decode(block("1008 7061 7373 776f 7264 0673 6563 7265 74"), raw=True)
    assert fields == [(b"password", b"secret")]
    assert type(fields[0]) is NeverIndexedHeaderTuple
    assert decoder.dynamic_entries == []


def test_c2_indexed() -> None:
    decoder = Decoder()
    fields = decoder.decode(b"\x82", raw=True)
    assert fields == [(b":method", b"GET")]
    assert type(fields[0]) is HeaderTuple


REQUESTS: list[tuple[Fields, list[tuple[bytes, bytes]], int]] = [
    (
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")],
        [(b":authority", b"www.example.com")],
        57,
    ),
    (
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b":authority", b"www.example.com"),
            (b"cache-control", b"no-cache"),
        ],
        [(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")],
        110,
    ),
    (
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/index.html"),
            (b":authority", b"www.example.com"),
            (b"custom-key", b"custom-value"),
        ],
        [(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"), (b":authority", b"www.example.com")],
        164,
    ),
]

C3_BLOCKS = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
]
C4_BLOCKS = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
]


@pytest.mark.parametrize("blocks", [C3_BLOCKS, C4_BLOCKS], ids=["C.3 plain", "C.4 Huffman"])
def test_c3_c4_requests(blocks: list[str]) -> None:
    decoder = Decoder()
    for text, (fields, table, size) in zip(blocks, REQUESTS):
        assert decoder.decode(block(text), raw=True) == fields
        assert decoder.dynamic_entries == table
        assert decoder.dynamic_table_size == size


DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = b"https://www.example.com"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSES: list[tuple[Fields, list[tuple[bytes, bytes]], int]] = [
    (
        [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", LOCATION)],
        [(b"location", LOCATION), (b"date", DATE1), (b"cache-control", b"private"), (b":status", b"302")],
        222,
    ),
    (
        # (":status", "302") is evicted to make room for (":status", "307").
        [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", LOCATION)],
        [(b":status", b"307"), (b"location", LOCATION), (b"date", DATE1), (b"cache-control", b"private")],
        222,
    ),
    (
        # Three evictions, and one entry larger than the rest.
        [
            (b":status", b"200"),
            (b"cache-control", b"private"),
            (b"date", DATE2),
            (b"location", LOCATION),
            (b"content-encoding", b"gzip"),
            (b"set-cookie", COOKIE),
        ],
        [(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)],
        215,
    ),
]
C5_BLOCKS = [
    """4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a
    3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d""",
    "4803 3330 37c1 c0bf",
    """88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04
    677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49
    553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31""",
]
C6_BLOCKS = [
    """4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e
    919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3""",
    "4883 640e ffc1 c0bf",
    """88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7
    821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed
    4ee5 b106 3d50 07""",
]


@pytest.mark.parametrize("blocks", [C5_BLOCKS, C6_BLOCKS], ids=["C.5 plain", "C.6 Huffman"])
def test_c5_c6_responses_with_evictions(blocks: list[str]) -> None:
    decoder = Decoder()
    decoder.header_table_size = decoder.max_allowed_table_size = 256
    for text, (fields, table, size) in zip(blocks, RESPONSES):
        assert decoder.decode(block(text), raw=True) == fields
        assert decoder.dynamic_entries == table
        assert decoder.dynamic_table_size == size


def test_strings_when_not_raw() -> None:
    assert Decoder().decode(block(C4_BLOCKS[0])) == [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ]
    with pytest.raises(HPACKDecodingError):
        Decoder().decode(b"\x00\x01a\x01\xff")


def test_entry_larger_than_the_table_empties_it() -> None:
    decoder = Decoder()
    decoder.decode(block(C3_BLOCKS[0]), raw=True)
    decoder.decode(b"\x3f\x1b", raw=True)  # size update to 58: ":authority" (57) still fits
    assert decoder.dynamic_entries == [(b":authority", b"www.example.com")]
    assert decoder.decode(b"\x40\x01a\x20" + b"x" * 32, raw=True) == [(b"a", b"x" * 32)]
    assert decoder.dynamic_entries == [] and decoder.dynamic_table_size == 0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x80", InvalidTableIndex),  # index 0
        (b"\xbe", InvalidTableIndex),  # 62 with an empty dynamic table
        (b"\xff\xff\xff\xff\xff\xff\x0f", HPACKDecodingError),  # more continuation bytes than allowed
        (b"\xff", HPACKDecodingError),  # integer cut after its prefix
        (b"\xff\x80", HPACKDecodingError),  # integer cut in its continuation
        (b"\x40", HPACKDecodingError),  # literal name missing
        (b"\x40\x05ab", HPACKDecodingError),  # name shorter than its length
        (b"\x41", HPACKDecodingError),  # value missing
        (b"\x41\x03ab", HPACKDecodingError),  # value shorter than its length
        (b"\x7f\x7f", InvalidTableIndex),  # indexed name out of range (190)
        (b"\x41\x81\xff", HPACKDecodingError),  # invalid Huffman code (EOS)
        (b"\x3f\xe2\x1f", InvalidTableSizeError),  # size update to 4097 > the allowed 4096
        (b"\x82\x20", HPACKDecodingError),  # size update after a field
    ],
)
def test_malformed_blocks(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        Decoder().decode(data, raw=True)
    with pytest.raises(error):  # the same type as hpack's
        hpack.Decoder().decode(data, raw=True)


def test_size_updates_only_at_the_start() -> None:
    decoder = Decoder()
    assert decoder.decode(b"\x20\x3f\x11\x82", raw=True) == [(b":method", b"GET")]
    assert decoder.header_table_size == 48


def test_peer_must_shrink_its_table_after_our_settings() -> None:
    decoder = Decoder()
    decoder.max_allowed_table_size = 100  # our SETTINGS_HEADER_TABLE_SIZE, acknowledged
    with pytest.raises(InvalidTableSizeError):
        decoder.decode(b"\x82", raw=True)
    decoder = Decoder()
    decoder.max_allowed_table_size = 100
    assert decoder.decode(b"\x3f\x45\x82", raw=True) == [(b":method", b"GET")]


def test_oversized_header_list() -> None:
    decoder = Decoder(max_header_list_size=100)
    fields = b"\x00\x01a\x20" + b"x" * 32  # 1 + 32 + 32 = 65 each
    assert decoder.decode(fields, raw=True) == [(b"a", b"x" * 32)]
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(fields * 2, raw=True)
    decoder.max_header_list_size = 130
    assert len(decoder.decode(fields * 2, raw=True)) == 2


def test_indexed_bomb_stops_at_the_limit() -> None:
    decoder = Decoder(max_header_list_size=1 << 16)
    decoder.decode(b"\x40\x01a\x7f\xe9\x06" + b"v" * 1000, raw=True)  # one entry of 1,033 bytes
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(b"\xbe" * 100_000, raw=True)


def test_encoder_static_index_and_literals() -> None:
    assert encode_field(b":status", b"200") == b"\x88"
    assert encode_field(b":status", b"201") == b"\x08\x03201"
    assert encode_field(b"x-id", b"7") == b"\x00\x04x-id\x017"
    assert encode_field(b"authorization", b"k", sensitive=True) == b"\x1f\x08\x01k"
    assert encode_field(b"content-type", b"a" * 200)[:3] == b"\x0f\x10\x7f"  # name index 31, length 200


def test_encoder_output_decodes_the_same_and_leaves_no_table() -> None:
    encoder = Encoder()
    fields = [
        (b":status", b"200"),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"abc"),
        (b"set-cookie", b"s=1"),
    ]
    theirs = hpack.Decoder()
    for _ in range(3):
        assert theirs.decode(encoder.encode(fields), raw=True) == fields
        assert len(theirs.header_table.dynamic_entries) == 0
    sensitive = encoder.encode([NeverIndexedHeaderTuple(b"authorization", b"k"), (b"cookie", b"c", True)])
    assert [type(f) for f in theirs.decode(sensitive, raw=True)] == [NeverIndexedHeaderTuple] * 2
    assert (b"authorization", b"k") not in encoder._encoded
    assert encoder.encode({"x-a": "1", ":status": "204"}) == b"\x89\x00\x03x-a\x011"


def test_encoder_signals_table_size_changes() -> None:
    encoder = Encoder()
    encoder.header_table_size = 4096  # unchanged: nothing to signal
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    encoder.header_table_size = 0
    encoder.header_table_size = 1000
    assert encoder.encode([(b":status", b"200")]) == b"\x20\x3f\xc9\x07\x88"  # smallest, then final
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    theirs = hpack.Decoder()
    theirs.max_allowed_table_size = 100
    encoder.header_table_size = 100
    assert theirs.decode(encoder.encode([(b":status", b"200")]), raw=True) == [(b":status", b"200")]


def test_encoder_cache_is_bounded() -> None:
    encoder = Encoder()
    for n in range(2000):
        encoder.encode([(b"x-n", str(n).encode())])
    assert len(encoder._encoded) <= 512
