"""HPACK (RFC 7541) for the server side of HTTP/2: a decoder and an encoder in place of `hpack`'s, at
a fraction of their CPU per request.

Both are sans-IO and keep `hpack`'s interface (`decode(data, raw=True)`, `encode(headers)`, the
`max_header_list_size`, `max_allowed_table_size` and `header_table_size` attributes), raise `hpack`'s
exception types (the connection turns a bad block into COMPRESSION_ERROR, an oversized list into
ENHANCE_YOUR_CALM), and return `hpack`'s `HeaderTuple` / `NeverIndexedHeaderTuple`.

- **Decoder.** The whole protocol: indexed fields, the three kinds of literal, dynamic table size
  updates (only before the first field, never above `max_allowed_table_size`), a FIFO dynamic table
  with RFC sizes (name + value + 32) and eviction. Where `hpack` spends its time is per field: a
  memoryview slice, a call per representation, a `HeaderTuple` built for a static entry, a log call.
  Here a field is a few integer tests on the block's bytes; static entries are prebuilt tuples; an
  integer's continuation bytes are read only when its prefix is full. Huffman strings go through
  `hpack`'s decoder as `hpack_tuning` caches it (clients send the same coded values on every
  request). Integers longer than `hpack` accepts (5 continuation bytes) are
  refused as it refuses them, so both read any block the same way.
- **Encoder.** Only what a response needs, chosen so that nothing depends on what was sent before: a
  field equal to a static-table entry is sent as its index, any other as a literal without indexing
  (the name as a static index when the table has it), never Huffman-coded. `hpack` searches its
  dynamic table for every field and inserts nearly every one; the few bytes that saves on a response
  head cost more CPU than they save on the wire. With no inserted entries every encoded field is the
  same bytes on every response, so the last few hundred are kept (never those marked sensitive: an
  `authorization` value is not remembered). The peer's SETTINGS_HEADER_TABLE_SIZE is still honoured:
  a change is signalled by size updates at the start of the next block (RFC 7541 section 4.2), as
  a decoder that shrank its table expects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from hpack.exceptions import HPACKDecodingError, InvalidTableIndex, InvalidTableSizeError, OversizedHeaderListError
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable

from llmrelay.proto.h2.hpack_tuning import decode_huffman

ENTRY_OVERHEAD = 32  # bytes counted per field in table and list sizes (RFC 7541 section 4.1)
DEFAULT_TABLE_SIZE = 4096  # SETTINGS_HEADER_TABLE_SIZE before any SETTINGS (RFC 9113 section 6.5.2)
DEFAULT_MAX_HEADER_LIST_SIZE = 1 << 16  # hpack's default, which h2 sets again anyway
MAX_CONTINUATION_BYTES = 5  # what hpack reads of one integer: enough for any 32-bit value
ENCODED_KEPT = 512  # encoded response fields remembered

STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE  # RFC 7541 Appendix A
_STATIC_FIELDS = tuple(HeaderTuple(name, value) for name, value in STATIC_TABLE)
_STATIC_COUNT = len(STATIC_TABLE)
# The lowest index of each entry and of each name (`:status 200` is 8, `:status` alone also 8).
_STATIC_EXACT = {field: index for index, field in reversed(list(enumerate(STATIC_TABLE, 1)))}
_STATIC_NAME = {name: index for index, (name, _) in reversed(list(enumerate(STATIC_TABLE, 1)))}


def _integer(data: bytes, pos: int, mask: int) -> tuple[int, int]:
    """The integer whose prefix (`mask` of its low bits) is in `data[pos]`, and the offset after it."""
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    end = len(data)
    for _ in range(MAX_CONTINUATION_BYTES):
        if pos >= end:
            raise HPACKDecodingError("Truncated HPACK integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise HPACKDecodingError("HPACK integer representation is too long")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """The string literal starting at `data[pos]` (Huffman-decoded if coded), and the offset after it."""
    if pos >= len(data):
        raise HPACKDecodingError("Truncated header block")
    coded = data[pos] & 0x80
    length, pos = _integer(data, pos, 0x7F)
    end = pos + length
    if end > len(data):
        raise HPACKDecodingError("Truncated header block")
    text = data[pos:end]
    if coded:
        text = decode_huffman(text)
    return text, end


class Decoder:
    """One direction's HPACK decoding state: the dynamic table the peer's encoder fills."""

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        self.max_header_list_size = max_header_list_size
        # Our latest acknowledged SETTINGS_HEADER_TABLE_SIZE: the peer may not size its table above it.
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE
        self._max_size = DEFAULT_TABLE_SIZE
        self._size = 0
        self._entries: deque[HeaderTuple] = deque()  # newest first: entry i is index 62 + i

    @property
    def header_table_size(self) -> int:
        """The dynamic table's current maximum size, as the peer last set it."""
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._max_size = value
        self._evict()

    @property
    def dynamic_table_size(self) -> int:
        """The size of the dynamic table's entries, counted the RFC 7541 way."""
        return self._size

    @property
    def dynamic_entries(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest entry first (for tests and debugging)."""
        return [(name, value) for name, value in self._entries]

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        """The header list of one complete header block (bytes if `raw`, else UTF-8 strings)."""
        if type(data) is not bytes:
            data = bytes(data)
        fields: list[HeaderTuple] = []
        append = fields.append
        limit = self.max_header_list_size
        listed = 0
        pos = 0
        end = len(data)
        while pos < end:
            byte = data[pos]
            if byte & 0x80:  # indexed field
                if byte != 0xFF:
                    index = byte & 0x7F
                    pos += 1
                else:
                    index, pos = _integer(data, pos, 0x7F)
                field = self._field(index)
            elif byte & 0x40:  # literal, then added to the table
                field, pos = self._literal(data, pos, 0x3F, HeaderTuple)
                self._add(field)
            elif byte & 0x20:  # dynamic table size update
                if fields:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size, pos = _integer(data, pos, 0x1F)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                continue
            elif byte & 0x10:  # literal never indexed
                field, pos = self._literal(data, pos, 0x0F, NeverIndexedHeaderTuple)
            else:  # literal without indexing
                field, pos = self._literal(data, pos, 0x0F, HeaderTuple)
            append(field)
            listed += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if listed > limit:
                raise OversizedHeaderListError(f"A header list larger than {limit} has been received")
        # A peer that was told to shrink its table (our SETTINGS, acknowledged) must have done so.
        if self._max_size > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        if raw:
            return fields
        try:
            return [field.__class__(field[0].decode(), field[1].decode()) for field in fields]
        except UnicodeDecodeError as err:
            raise HPACKDecodingError("Unable to decode headers as UTF-8") from err

    def _field(self, index: int) -> HeaderTuple:
        if 0 < index <= _STATIC_COUNT:
            return _STATIC_FIELDS[index - 1]
        dynamic = index - _STATIC_COUNT - 1
        if 0 <= dynamic < len(self._entries):
            return self._entries[dynamic]
        raise InvalidTableIndex(f"Invalid table index {index}")

    def _literal(self, data: bytes, pos: int, mask: int, kind: type[HeaderTuple]) -> tuple[HeaderTuple, int]:
        if data[pos] & mask:
            index, pos = _integer(data, pos, mask)
            name = self._field(index)[0]
        else:
            name, pos = _string(data, pos + 1)
        value, pos = _string(data, pos)
        return tuple.__new__(kind, (name, value)), pos

    def _add(self, field: HeaderTuple) -> None:
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if size > self._max_size:  # RFC 7541 section 4.4: the table is emptied, nothing added
            self._entries.clear()
            self._size = 0
            return
        self._entries.appendleft(field)
        self._size += size
        self._evict()

    def _evict(self) -> None:
        entries = self._entries
        while self._size > self._max_size:
            name, value = entries.pop()
            self._size -= len(name) + len(value) + ENTRY_OVERHEAD


def _prefixed(value: int, mask: int, flags: int) -> bytes:
    """`value` as an HPACK integer with a prefix of `mask` bits, the rest of the first octet `flags`."""
    if value < mask:
        return bytes((flags | value,))
    out = bytearray((flags | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _as_bytes(text: bytes | str | Any) -> bytes:
    if type(text) is bytes:
        return text
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    return str(text).encode()


def encode_field(name: bytes, value: bytes, sensitive: bool = False) -> bytes:
    """One field as this encoder sends it: the static index of an equal entry, else a literal that
    no table keeps (never indexed when `sensitive`), with the name as a static index if listed."""
    if not sensitive:
        index = _STATIC_EXACT.get((name, value))
        if index is not None:
            return _prefixed(index, 0x7F, 0x80)
    flags = 0x10 if sensitive else 0x00
    name_index = _STATIC_NAME.get(name)
    if name_index is not None:
        head = _prefixed(name_index, 0x0F, flags)
    else:
        head = bytes((flags,)) + _prefixed(len(name), 0x7F, 0) + name
    return head + _prefixed(len(value), 0x7F, 0) + value


class Encoder:
    """HPACK encoding of response heads, with no dynamic table (see the module's paragraph)."""

    def __init__(self) -> None:
        self._table_size = DEFAULT_TABLE_SIZE  # the size the peer's decoder believes our table has
        self._smallest: int | None = None  # the smallest size set since the last block, if any
        self._encoded: dict[tuple[Any, ...], bytes] = {}

    @property
    def header_table_size(self) -> int:
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        value = int(value)
        if value == self._table_size and self._smallest is None:
            return
        self._smallest = value if self._smallest is None else min(self._smallest, value)
        self._table_size = value

    def encode(self, headers: Iterable[Any] | dict[Any, Any], huffman: bool = False) -> bytes:
        """The header block of `headers`: (name, value) pairs, `HeaderTuple`s (a
        `NeverIndexedHeaderTuple` is sent never-indexed), (name, value, sensitive) triples, or a
        dict (pseudo-header fields first). `huffman` is accepted and ignored."""
        parts: list[bytes] = []
        if self._smallest is not None:
            parts.append(self._size_updates())
        if isinstance(headers, dict):
            headers = sorted(headers.items(), key=lambda item: not _as_bytes(item[0]).startswith(b":"))
        encoded = self._encoded
        for header in headers:
            kind = header.__class__
            if kind is HeaderTuple or (kind is tuple and len(header) == 2):
                key = header  # hashes and compares as the plain (name, value) pair
            else:
                if isinstance(header, HeaderTuple):
                    sensitive = not header.indexable
                else:
                    sensitive = len(header) > 2 and bool(header[2])
                if sensitive:
                    parts.append(encode_field(_as_bytes(header[0]), _as_bytes(header[1]), True))
                    continue
                key = (header[0], header[1])
            field = encoded.get(key)
            if field is None:
                field = encode_field(_as_bytes(key[0]), _as_bytes(key[1]))
                if len(encoded) >= ENCODED_KEPT:
                    del encoded[next(iter(encoded))]
                encoded[key] = field
            parts.append(field)
        return b"".join(parts)

    def _size_updates(self) -> bytes:
        # RFC 7541 section 4.2: the smallest size since the last block, then the final one.
        smallest, self._smallest = self._smallest, None
        assert smallest is not None
        updates = _prefixed(smallest, 0x1F, 0x20)
        if smallest != self._table_size:
            updates += _prefixed(self._table_size, 0x1F, 0x20)
        return updates
