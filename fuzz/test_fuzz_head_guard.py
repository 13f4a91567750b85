"""Fuzzes the strict request-head guard (`llmrelay.proto.h1.head_guard`) against smuggling-shaped input.

The guard parses request heads itself (h11 is not on the request path; it is the oracle here), and
it is the relay's only defence against requests that two HTTP parsers could frame differently
(CL+TE, repeated or odd Transfer-Encoding, obs-fold, bare CR/LF, HTTP/2.0 request lines...), several
of which h11 accepts. These properties check that
the guard never fails with anything but `RequestRejected` and a status the adapter knows, that every head
it accepts is unambiguous when read from the raw bytes, that h11 parses every accepted head to the same
method, target, fields and body framing (a differential test), that each single smuggling vector applied
to a valid head is refused, and that `find_head_end` waits for a split head without refusing it.
Heads are built structurally (method, target, version, fields) and then mutated, so most examples are
close to valid instead of random noise. A Host value is accepted exactly when an oracle written
from RFC 3986's grammar (`uri-host [":" port]`) accepts it. The last tests guard fixed bugs: split
heads at the exact size limits, non-ASCII request targets (accepted by the guard, refused by h11), and
Host values with userinfo, paths, spaces or bad ports (accepted and forwarded in X-Forwarded-Host).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llmrelay.proto.errors import RequestRejected
from llmrelay.proto.h1.head_guard import HeadLimits, find_head_end, parse_request_head, valid_host

CHECK_STATUSES = frozenset({400, 405, 414, 431, 501, 505})
FIND_STATUSES = frozenset({400, 414, 431})
DEFAULT_LIMITS = HeadLimits()
CRLF = b"\r\n"
TERMINATOR = b"\r\n\r\n"

TOKEN_ALPHABET = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VCHAR = bytes(range(0x21, 0x7F))
OBS_TEXT = bytes(range(0x80, 0x100))
FRAMING_NAMES = (b"host", b"content-length", b"transfer-encoding")

LEGAL_CHUNKED = (b"chunked", b"Chunked", b"CHUNKED", b" chunked", b"chunked ", b"\tchunked")
ILLEGAL_TE = (
    b"chunked, chunked",
    b"gzip, chunked",
    b"chunked, gzip",
    b"identity",
    b"gzip",
    b"",
    b",chunked",
    b"chunked,",
    b"chunked;q=1",
    b"x-custom",
    b"chunked chunked",
    b'"chunked"',
    b"chunk\xe9d",
    b"chunked\t",  # OWS, but llhttp reads it as another coding (fuzz/test_fuzz_three_parsers.py)
    b"\tchunked \t",
)
BAD_CONTENT_LENGTHS = (
    b"",
    b"abc",
    b"-1",
    b"+5",
    b"0x10",
    b"1 2",
    b"1,1",
    b"5, 5",
    b"1e3",
    b"\xd9\xa3",  # ARABIC-INDIC DIGIT THREE, UTF-8
    b"1" * 19,
    b"12abc",
)
BAD_VERSIONS = (
    b"HTTP/2.0",
    b"HTTP/3.0",
    b"HTTP/0.9",
    b"HTTP/1.10",
    b"HTTP/1",
    b"HTTP/2",
    b"http/1.1",
    b"HTTP/ 1.1",
    b"HTTP/1.1 ",
    b"HTTPS/1.1",
)
NON_ORIGIN_TARGETS = (
    b"http://example.com/v1/chat",
    b"https://example.com",
    b"example.com:443",
    b"*",
    b"v1/models",
    b"",
    b"/a b",
    b"/a\tb",
    b"/a\x7fb",
)
INSERTABLE = (b"\n", b"\r", b"\x00", b"\r\n", b" ", b"\t", b"\x7f", b"\x0b", b"\n\n", TERMINATOR, b":", b",")
INSERTABLE_OR_ANY_BYTE = INSERTABLE + tuple(bytes([byte]) for byte in range(256))


@functools.lru_cache(maxsize=None)
def _bytes_from(alphabet: bytes, min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[bytes]:
    """Byte strings over `alphabet` (one `binary` draw, translated: much cheaper than a list of picks)."""
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    return st.binary(min_size=min_size, max_size=max_size).map(lambda raw: raw.translate(table))


@functools.lru_cache(maxsize=None)
def _pick(options: tuple[bytes, ...]) -> st.SearchStrategy[bytes]:
    return st.sampled_from(options)


@dataclass
class HeadParts:
    """A request head before rendering.

    `fields` holds (name, everything after the colon); a value of None renders a line without a colon.
    """

    method: bytes
    target: bytes
    version: bytes
    fields: list[tuple[bytes, bytes | None]]

    def render(self) -> bytes:
        lines = [b" ".join((self.method, self.target, self.version))]
        lines += [name if value is None else name + b":" + value for name, value in self.fields]
        return CRLF.join(lines) + TERMINATOR


# -- strategies ------------------------------------------------------------------------------------------

tokens = _bytes_from(TOKEN_ALPHABET, min_size=1, max_size=12)
methods = st.one_of(
    _pick((b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS")),
    tokens.filter(lambda m: m != b"CONNECT"),
)
ows = _pick((b"", b" ", b"  ", b"\t", b" \t"))
limits_strategy = st.one_of(
    st.just(DEFAULT_LIMITS),
    st.builds(
        HeadLimits,
        max_request_line=st.integers(0, 200),
        max_header_bytes=st.integers(0, 400),
        max_header_count=st.integers(0, 12),
    ),
)


# -- Host values: uri-host [ ":" port ] (RFC 3986 section 3.2.2) ---------------------------------------

UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
SUB_DELIMS = b"!$&'()*+,;="
HEXDIG = b"0123456789ABCDEFabcdef"

pct_encoded = st.builds(lambda a, b: b"%" + a + b, _bytes_from(HEXDIG, 1, 1), _bytes_from(HEXDIG, 1, 1))
reg_names = st.lists(st.one_of(_bytes_from(UNRESERVED + SUB_DELIMS, 1, 6), pct_encoded), max_size=5).map(b"".join)
ipv4_hosts = st.ip_addresses(v=4).map(lambda address: str(address).encode())
ipv6_hosts = st.ip_addresses(v=6).map(lambda address: b"[" + str(address).encode() + b"]")
ipvfuture_hosts = st.builds(
    lambda version, rest: b"[v" + version + b"." + rest + b"]",
    _bytes_from(HEXDIG, 1, 3),
    _bytes_from(UNRESERVED + SUB_DELIMS + b":", 1, 10),
)
ports = st.one_of(st.integers(0, 65535).map(lambda port: b"%d" % port), _bytes_from(b"0123456789", 1, 5))
valid_hosts = st.builds(
    lambda host, port: host + (b"" if port is None else b":" + port),
    st.one_of(reg_names, ipv4_hosts, ipv6_hosts, ipvfuture_hosts),
    st.one_of(st.none(), ports.filter(lambda port: int(port) <= 65535)),
)
HOST_BREAKERS = (b"@", b"/", b"?", b"#", b"[", b"]", b" ", b":", b"%", b"%g", b"\x80", b'"', b"<", b"\\", b"^", b"|")
BAD_HOSTS = (
    b"evil@a", b"user:pass@a", b"a b", b"a/b", b"a:99999", b"a:65536", b"a:x", b"a:", b"a:-1", b"a:+80",
    b"a:1:2", b"[::1", b"::1", b"[::1]x", b"[::g]", b"[1.2.3.4]", b"[fe80::1%25eth0]", b"a%2", b"a%zz",
    b"a?b", b"a#b", b"a:123456", b"a\x80", b"[v.x]", b"[v1.]",
)


def _ipv6_literal_ok(literal: bytes) -> bool:
    if literal[:1] in (b"v", b"V"):  # IPvFuture: "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
        version, dot, rest = literal[1:].partition(b".")
        return (
            bool(version) and all(c in HEXDIG for c in version) and bool(dot) and bool(rest)
            and all(c in UNRESERVED + SUB_DELIMS + b":" for c in rest)
        )
    if b"%" in literal:  # a zone identifier (RFC 6874) is not part of RFC 3986's grammar
        return False
    try:
        ipaddress.IPv6Address(literal.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def host_oracle(value: bytes) -> bool:
    """RFC 3986's uri-host [ ":" port ], written out by hand (the port: 1-5 digits up to 65535)."""
    if value[:1] == b"[":
        close = value.find(b"]")
        if close < 0 or not _ipv6_literal_ok(value[1:close]):
            return False
        rest = value[close + 1 :]
    else:
        host, colon, port = value.partition(b":")
        at = 0
        while at < len(host):
            if host[at : at + 1] == b"%":
                if len(host) < at + 3 or any(c not in HEXDIG for c in host[at + 1 : at + 3]):
                    return False
                at += 3
            elif host[at] in UNRESERVED + SUB_DELIMS:
                at += 1
            else:
                return False
        rest = colon + port
    if not rest:
        return True
    port = rest[1:]
    return rest[:1] == b":" and 1 <= len(port) <= 5 and all(c in b"0123456789" for c in port) and int(port) <= 65535


@st.composite
def mutated_hosts(draw: st.DrawFn) -> bytes:
    """A valid Host value with a character inserted or replaced, or a known bad one."""
    if draw(st.integers(0, 4)) == 0:
        return draw(_pick(BAD_HOSTS))
    host = draw(valid_hosts)
    at = draw(st.integers(0, len(host)))
    piece = draw(st.one_of(_pick(HOST_BREAKERS), _bytes_from(VCHAR + OBS_TEXT, 1, 2)))
    if draw(st.booleans()) and at < len(host):
        return host[:at] + piece + host[at + 1 :]
    return host[:at] + piece + host[at:]


# A field value as written after the colon: OWS, visible characters (obs-text too) with inner SP/HTAB, OWS.
field_values = st.builds(
    lambda lead, content, trail: lead + content + trail, ows, _bytes_from(VCHAR + OBS_TEXT + b" \t"), ows
)


def _casings(name: bytes) -> st.SearchStrategy[bytes]:
    return _pick((name, name.lower(), name.upper(), name.swapcase()))


@functools.lru_cache(maxsize=None)
def origin_targets(alphabet: bytes = VCHAR) -> st.SearchStrategy[bytes]:
    return _bytes_from(alphabet, max_size=40).map(lambda path: b"/" + path)


extra_fields = st.tuples(
    st.one_of(
        _pick((b"Content-Type", b"Accept", b"Authorization", b"X-Api-Key", b"Connection", b"Expect")),
        tokens,
    ).filter(lambda name: name.lower() not in FRAMING_NAMES),
    field_values,
)  # fields that take no part in routing or framing
versions = _pick((b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"))
framings_11 = st.sampled_from(("none", "length", "chunked"))
framings_10 = st.sampled_from(("none", "length"))


@functools.lru_cache(maxsize=None)
def valid_heads(target_alphabet: bytes = VCHAR) -> st.SearchStrategy[HeadParts]:
    return _valid_heads(target_alphabet)


@st.composite
def _valid_heads(draw: st.DrawFn, target_alphabet: bytes) -> HeadParts:
    """A request head the guard must accept: origin-form, one Host, at most one clean framing field."""
    version = draw(versions)
    method = draw(methods)
    if method == b"OPTIONS" and draw(st.booleans()):
        target = b"*"
    else:
        target = draw(origin_targets(target_alphabet))
    fields: list[tuple[bytes, bytes | None]] = list(draw(st.lists(extra_fields, max_size=6)))
    if version == b"HTTP/1.1" or draw(st.booleans()):
        fields.append((draw(_casings(b"Host")), draw(ows) + draw(valid_hosts) + draw(ows)))
    framing = draw(framings_11 if version == b"HTTP/1.1" else framings_10)
    if framing == "length":
        digits = draw(_bytes_from(b"0123456789", min_size=1, max_size=18))
        fields.append((draw(_casings(b"Content-Length")), draw(ows) + digits + draw(ows)))
    elif framing == "chunked":
        fields.append((draw(_casings(b"Transfer-Encoding")), b" " + draw(_pick(LEGAL_CHUNKED))))
    order = draw(st.permutations(range(len(fields))))
    return HeadParts(method, target, version, [fields[i] for i in order])


# -- mutations: each turns a valid head into one with a single smuggling vector ---------------------------

Mutation = Callable[[st.DrawFn, HeadParts], None]


def _insert_field(draw: st.DrawFn, parts: HeadParts, name: bytes, value: bytes | None) -> None:
    parts.fields.insert(draw(st.integers(0, len(parts.fields))), (name, value))


def _has_field(parts: HeadParts, name: bytes) -> bool:
    return any(n.lower() == name for n, _ in parts.fields)


def m_duplicate_host(draw: st.DrawFn, parts: HeadParts) -> None:
    if not _has_field(parts, b"host"):
        _insert_field(draw, parts, b"Host", b" example.com")
    _insert_field(draw, parts, draw(_casings(b"Host")), b" " + draw(_pick((b"example.com", b"evil.test"))))


def m_missing_host(draw: st.DrawFn, parts: HeadParts) -> None:
    parts.version = b"HTTP/1.1"
    parts.fields = [(n, v) for n, v in parts.fields if n.lower() not in (b"host", b"transfer-encoding")]


def m_length_and_chunked(draw: st.DrawFn, parts: HeadParts) -> None:
    _insert_field(draw, parts, draw(_casings(b"Content-Length")), b" " + draw(_pick((b"0", b"5", b"42"))))
    _insert_field(draw, parts, draw(_casings(b"Transfer-Encoding")), b" " + draw(_pick(LEGAL_CHUNKED)))


def m_illegal_transfer_encoding(draw: st.DrawFn, parts: HeadParts) -> None:
    if draw(st.booleans()):
        value = draw(_pick(ILLEGAL_TE))
        _insert_field(draw, parts, draw(_casings(b"Transfer-Encoding")), b" " + value)
    else:  # the same coding twice, in two fields
        for _ in range(2):
            _insert_field(draw, parts, b"Transfer-Encoding", b" " + draw(_pick(LEGAL_CHUNKED)))


def m_repeated_content_length(draw: st.DrawFn, parts: HeadParts) -> None:
    first = draw(_pick((b"0", b"5", b"42")))
    second = draw(_pick((first, b"6", b"0")))
    _insert_field(draw, parts, b"Content-Length", b" " + first)
    _insert_field(draw, parts, draw(_casings(b"Content-Length")), b" " + second)


def m_malformed_content_length(draw: st.DrawFn, parts: HeadParts) -> None:
    parts.fields = [(n, v) for n, v in parts.fields if n.lower() not in (b"content-length", b"transfer-encoding")]
    _insert_field(draw, parts, b"Content-Length", draw(ows) + draw(_pick(BAD_CONTENT_LENGTHS)))


def m_too_many_fields(draw: st.DrawFn, parts: HeadParts) -> None:
    count = draw(st.integers(DEFAULT_LIMITS.max_header_count + 1, DEFAULT_LIMITS.max_header_count + 40))
    parts.fields += [(b"X-Fill-%d" % index, b" v") for index in range(count)]


def m_bad_version(draw: st.DrawFn, parts: HeadParts) -> None:
    parts.version = draw(_pick(BAD_VERSIONS))


def m_chunked_on_http10(draw: st.DrawFn, parts: HeadParts) -> None:
    parts.version = b"HTTP/1.0"
    parts.fields = [(n, v) for n, v in parts.fields if n.lower() != b"transfer-encoding"]
    _insert_field(draw, parts, b"Transfer-Encoding", b" " + draw(_pick(LEGAL_CHUNKED)))


def m_non_origin_target(draw: st.DrawFn, parts: HeadParts) -> None:
    parts.target = draw(_pick(NON_ORIGIN_TARGETS))
    if parts.target == b"*":
        parts.method = b"GET"


def m_connect(draw: st.DrawFn, parts: HeadParts) -> None:
    # CONNECT with an origin-form target is malformed (a valid `host:port` CONNECT goes on to the
    # relay, which answers it: tunnels, or 405 while they are off).
    parts.method = b"CONNECT"
    parts.target = draw(_pick((b"/", parts.target)))


def m_obs_fold(draw: st.DrawFn, parts: HeadParts) -> None:
    fold = CRLF + draw(_pick((b" ", b"\t", b"  "))) + draw(_bytes_from(VCHAR, min_size=1, max_size=8))
    fold_a_field = draw(st.booleans())
    if parts.fields and fold_a_field:
        index = draw(st.integers(0, len(parts.fields) - 1))
        name, value = parts.fields[index]
        parts.fields[index] = (name, (value or b"") + fold)
    else:  # a continuation line right after the request line
        parts.fields.insert(0, (b" X-Folded", b" v"))


def m_space_before_colon(draw: st.DrawFn, parts: HeadParts) -> None:
    name = draw(_pick((b"Transfer-Encoding", b"Content-Length", b"Host", b"X-Other")))
    suffix = draw(_pick((b" ", b"\t", b"\x00", b"\x0b")))
    _insert_field(draw, parts, name + suffix, b" 1")


def m_field_without_colon(draw: st.DrawFn, parts: HeadParts) -> None:
    line = draw(st.one_of(_bytes_from(VCHAR.replace(b":", b""), min_size=1), tokens))
    parts.fields.insert(draw(st.integers(0, len(parts.fields))), (line, None))


STRUCTURAL_MUTATIONS: dict[str, tuple[Mutation, frozenset[int]]] = {
    "duplicate_host": (m_duplicate_host, frozenset({400})),
    "missing_host": (m_missing_host, frozenset({400})),
    "length_and_chunked": (m_length_and_chunked, frozenset({400})),
    "illegal_transfer_encoding": (m_illegal_transfer_encoding, frozenset({400, 501})),
    "repeated_content_length": (m_repeated_content_length, frozenset({400})),
    "malformed_content_length": (m_malformed_content_length, frozenset({400})),
    "too_many_fields": (m_too_many_fields, frozenset({431})),
    "bad_version": (m_bad_version, frozenset({400, 505})),
    "chunked_on_http10": (m_chunked_on_http10, frozenset({400})),
    "non_origin_target": (m_non_origin_target, frozenset({400})),
    "connect": (m_connect, frozenset({400})),
    "obs_fold": (m_obs_fold, frozenset({400})),
    "space_before_colon": (m_space_before_colon, frozenset({400})),
    "field_without_colon": (m_field_without_colon, frozenset({400})),
}


def _line_ending_mutation(draw: st.DrawFn, head: bytes, replacement: bytes) -> bytes:
    """Replace one CRLF inside the head (not the final blank line's second one) with `replacement`."""
    positions = [m.start() for m in re.finditer(re.escape(CRLF), head[:-2])]
    if not positions:  # only after earlier mutations took every line ending away
        return head + replacement
    at = positions[draw(st.integers(0, len(positions) - 1))]
    return head[:at] + replacement + head[at + 2 :]


def _insert_nul(draw: st.DrawFn, head: bytes) -> bytes:
    """A NUL anywhere before the final blank line."""
    at = draw(st.integers(0, max(0, len(head) - len(TERMINATOR))))
    return head[:at] + b"\x00" + head[at:]


BYTE_MUTATIONS: dict[str, tuple[Callable[[st.DrawFn, bytes], bytes], frozenset[int]]] = {
    "bare_lf": (lambda draw, head: _line_ending_mutation(draw, head, b"\n"), frozenset({400})),
    "bare_cr": (lambda draw, head: _line_ending_mutation(draw, head, b"\r"), frozenset({400})),
    "nul": (_insert_nul, frozenset({400})),
    "bare_lf_blank_line": (  # the blank line as h11 would also accept it
        lambda draw, head: head[: -len(TERMINATOR)] + draw(_pick((b"\n\n", b"\r\n\n"))),
        frozenset({400}),
    ),
}


structural_names = st.lists(st.sampled_from(sorted(STRUCTURAL_MUTATIONS)), max_size=3)
byte_mutation_kinds = st.sampled_from(("insert", "delete", *sorted(BYTE_MUTATIONS)))


@functools.lru_cache(maxsize=None)
def mutated_heads(
    insertable: tuple[bytes, ...] = INSERTABLE, target_alphabet: bytes = VCHAR
) -> st.SearchStrategy[bytes]:
    """A valid head with up to three structural mutations and up to two byte-level ones."""
    return _mutated_heads(insertable, target_alphabet)


@st.composite
def _mutated_heads(draw: st.DrawFn, insertable: tuple[bytes, ...], target_alphabet: bytes) -> bytes:
    parts = draw(valid_heads(target_alphabet))
    for name in draw(structural_names):
        STRUCTURAL_MUTATIONS[name][0](draw, parts)
    return mutate_bytes(draw, parts.render(), insertable)


def mutate_bytes(draw: st.DrawFn, head: bytes, insertable: tuple[bytes, ...]) -> bytes:
    """Up to two byte-level changes: a byte inserted or deleted, a line ending broken, a NUL."""
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(byte_mutation_kinds)
        if kind == "insert":
            at = draw(st.integers(0, len(head)))
            head = head[:at] + draw(_pick(insertable)) + head[at:]
        elif kind == "delete":
            if head:
                at = draw(st.integers(0, len(head) - 1))
                head = head[:at] + head[at + 1 :]
        else:
            head = BYTE_MUTATIONS[kind][0](draw, head)
    return head


# -- oracles ---------------------------------------------------------------------------------------------


def _rejection_status(head: bytes, limits: HeadLimits) -> int | None:
    """None when the guard accepts `head`, else the status; any other exception propagates."""
    try:
        parse_request_head(head, limits, "http", ("", 0))
    except RequestRejected as exc:
        return exc.status
    return None


def _raw_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(name, OWS-stripped value) of each field line of a CRLF-terminated head, as the bytes say."""
    fields = []
    for line in head[: -len(TERMINATOR)].split(CRLF)[1:]:
        name, _, value = line.partition(b":")
        fields.append((name, value.strip(b" \t")))
    return fields


def raw_ambiguities(head: bytes) -> list[str]:
    """Everything in the raw bytes that a second parser could read differently."""
    problems = []
    if re.search(rb"(?<!\r)\n", head):
        problems.append("bare LF")
    if re.search(rb"\r(?!\n)", head):
        problems.append("bare CR")
    if not head.endswith(TERMINATOR) or TERMINATOR in head[: -len(TERMINATOR)]:
        problems.append("head does not end at its only blank line")
        return problems
    lines = head[: -len(TERMINATOR)].split(CRLF)
    if any(line[:1] in (b" ", b"\t") for line in lines[1:]):
        problems.append("obs-fold")
    fields = _raw_fields(head)
    hosts = [value for name, value in fields if name.lower() == b"host"]
    if len(hosts) > 1:
        problems.append("more than one Host")
    if hosts and not host_oracle(hosts[0]):
        problems.append("Host is not uri-host [':' port]")
    lengths = [value for name, value in fields if name.lower() == b"content-length"]
    codings = [value for name, value in fields if name.lower() == b"transfer-encoding"]
    if lengths and codings:
        problems.append("Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        problems.append("more than one Content-Length")
    if lengths and not re.fullmatch(rb"[0-9]+", lengths[0]):
        problems.append("Content-Length is not digits")
    if len(codings) > 1 or (codings and codings[0].lower() != b"chunked"):
        problems.append("Transfer-Encoding other than exactly chunked")
    return problems


def assert_h11_agrees(head: bytes, limits: HeadLimits) -> None:
    """h11 must parse an accepted head to the same request line, fields and body framing."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_request_line + limits.max_header_bytes)
    parser.receive_data(head)
    try:
        event = parser.next_event()
    except h11.RemoteProtocolError as exc:
        pytest.fail(f"the guard accepted a head that h11 refuses ({exc}): {head!r}")
    assert isinstance(event, h11.Request), event
    method, target, version = head.split(CRLF, 1)[0].split(b" ")
    assert (event.method, event.target, b"HTTP/" + event.http_version) == (method, target, version)
    raw = _raw_fields(head)
    expected = [(n, v.lower() if n.lower() == b"transfer-encoding" else v) for n, v in raw]
    assert event.headers.raw_items() == expected
    lengths = [value for name, value in event.headers if name == b"content-length"]
    codings = [value for name, value in event.headers if name == b"transfer-encoding"]
    raw_lengths = [value for name, value in raw if name.lower() == b"content-length"]
    raw_codings = [value for name, value in raw if name.lower() == b"transfer-encoding"]
    assert not (lengths and codings)
    assert lengths == raw_lengths and len(lengths) <= 1
    assert codings == [b"chunked"] * len(raw_codings) and len(codings) <= 1
    # What the relay serves from: the same fields (names lower-cased), framing and keep-alive.
    ours = parse_request_head(head, limits, "http", ("", 0))
    assert (ours.method, ours.target, ours.http_version) == (event.method, event.target, event.http_version)
    # (h11 lower-cases Transfer-Encoding values; the relay never forwards that header.)
    assert [(n, v.lower() if n == b"transfer-encoding" else v) for n, v in ours.headers] == list(event.headers)
    assert ours.body_length == (int(lengths[0]) if lengths else None if codings else 0)
    assert ours.keep_alive == (event.http_version == b"1.1" and not any(
        name == b"connection" and b"close" in [t.strip().lower() for t in value.split(b",")]
        for name, value in event.headers
    ))


# -- properties ------------------------------------------------------------------------------------------

any_input = st.one_of(
    st.binary(max_size=300),
    mutated_heads(INSERTABLE_OR_ANY_BYTE, VCHAR + OBS_TEXT),
    st.builds(lambda head, tail: head + tail, mutated_heads(), st.binary(max_size=40)),
)


@given(data=any_input, limits=limits_strategy)
def test_guard_only_rejects_with_known_statuses(data: bytes, limits: HeadLimits) -> None:
    status = _rejection_status(data, limits)
    assert status is None or status in CHECK_STATUSES
    try:
        end = find_head_end(data, limits)
    except RequestRejected as exc:
        assert exc.status in FIND_STATUSES
    else:
        assert end == (-1 if TERMINATOR not in data else data.find(TERMINATOR) + len(TERMINATOR))


@given(
    head=st.one_of(
        valid_heads().map(HeadParts.render),
        mutated_heads(),
        mutated_heads(INSERTABLE_OR_ANY_BYTE, VCHAR + OBS_TEXT),
    )
)
def test_accepted_heads_are_unambiguous_and_h11_agrees(head: bytes) -> None:
    if _rejection_status(head, DEFAULT_LIMITS) is not None:
        return
    assert raw_ambiguities(head) == [], head
    assert_h11_agrees(head, DEFAULT_LIMITS)


@st.composite
def with_structural_vector(draw: st.DrawFn, name: str) -> bytes:
    parts = draw(valid_heads())
    STRUCTURAL_MUTATIONS[name][0](draw, parts)
    return parts.render()


@st.composite
def with_byte_vector(draw: st.DrawFn, name: str) -> bytes:
    return BYTE_MUTATIONS[name][0](draw, draw(valid_heads()).render())


# Eighteen vectors, each a small space: an eighth of the profile's examples apiece is plenty.
per_vector = settings(max_examples=max(20, settings().max_examples // 8))


@pytest.mark.parametrize("name", sorted(STRUCTURAL_MUTATIONS))
@per_vector
@given(data=st.data())
def test_each_structural_smuggling_vector_is_rejected(name: str, data: st.DataObject) -> None:
    head = data.draw(with_structural_vector(name))
    assert _rejection_status(head, DEFAULT_LIMITS) in STRUCTURAL_MUTATIONS[name][1], head


@pytest.mark.parametrize("name", sorted(BYTE_MUTATIONS))
@per_vector
@given(data=st.data())
def test_each_byte_level_smuggling_vector_is_rejected(name: str, data: st.DataObject) -> None:
    head = data.draw(with_byte_vector(name))
    assert _rejection_status(head, DEFAULT_LIMITS) in BYTE_MUTATIONS[name][1], head
    if b"\n\n" in head:  # a blank line of bare LFs ends the head for a lenient parser: refuse at once
        with pytest.raises(RequestRejected) as info:
            find_head_end(head, DEFAULT_LIMITS)
        assert info.value.status == 400
        return
    try:
        find_head_end(head, DEFAULT_LIMITS)
    except RequestRejected as exc:
        assert exc.status == 400


@given(parts=valid_heads(), tail=st.binary(max_size=64))
def test_valid_heads_are_accepted_and_found_however_split(parts: HeadParts, tail: bytes) -> None:
    head = parts.render()
    assert _rejection_status(head, DEFAULT_LIMITS) is None, head
    assert raw_ambiguities(head) == []
    for end in range(len(head)):
        assert find_head_end(head[:end], DEFAULT_LIMITS) == -1, head[:end]
    assert find_head_end(head, DEFAULT_LIMITS) == len(head)
    assert find_head_end(head + tail, DEFAULT_LIMITS) == len(head)


# -- regressions of fixed bugs --------------------------------------------------------------------------


@given(parts=valid_heads(), line_slack=st.integers(0, 3), block_slack=st.integers(0, 3))
@example(parts=HeadParts(b"GET", b"/", b"HTTP/1.1", [(b"Host", b" x")]), line_slack=0, block_slack=0)
def test_find_head_end_waits_for_a_split_head_at_the_size_limits(
    parts: HeadParts, line_slack: int, block_slack: int
) -> None:
    """Limits met exactly (or nearly): every prefix waits, as the whole head is accepted.

    Was a bug: the limits were applied to a prefix still missing its line endings, so a request line
    of exactly max_request_line bytes was refused 414 once its CR arrived (and likewise 431).
    """
    head = parts.render()
    request_line = head.split(CRLF, 1)[0]
    limits = HeadLimits(
        max_request_line=len(request_line) + line_slack,
        max_header_bytes=len(head) - len(TERMINATOR) - len(request_line) + block_slack,
        max_header_count=len(parts.fields),
    )
    assert _rejection_status(head, limits) is None
    for end in range(len(head)):
        assert find_head_end(head[:end], limits) == -1, head[:end]
    assert find_head_end(head, limits) == len(head)


@given(parts=valid_heads(target_alphabet=VCHAR + OBS_TEXT))
@example(parts=HeadParts(b"GET", b"/\x80", b"HTTP/1.1", [(b"Host", b" x")]))
def test_non_ascii_targets_are_refused_as_h11_refuses_them(parts: HeadParts) -> None:
    """Was a bug: the guard accepted obs-text (0x80-0xFF) in the target, a request line h11 refuses."""
    head = parts.render()
    if all(byte < 0x80 for byte in parts.target):
        assert _rejection_status(head, DEFAULT_LIMITS) is None
        assert_h11_agrees(head, DEFAULT_LIMITS)
        return
    assert _rejection_status(head, DEFAULT_LIMITS) == 400
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(head)
    with pytest.raises(h11.RemoteProtocolError):
        parser.next_event()


@given(value=st.one_of(valid_hosts, mutated_hosts(), _bytes_from(VCHAR + OBS_TEXT + b" ", max_size=20)))
@example(value=b"evil@a")
@example(value=b"a b")
@example(value=b"a/b")
@example(value=b"a:99999")
@example(value=b"a:x")
@example(value=b"[::1]:8080")
def test_host_is_accepted_exactly_when_it_is_uri_host_and_port(value: bytes) -> None:
    """Was a bug: any Host value was accepted (`evil@a`, `a b`, `a/b`, `a:99999`...) and forwarded in
    X-Forwarded-Host. The guard's answer is the oracle's, and a refused Host refuses the head with 400."""
    expected = host_oracle(value)
    assert valid_host(value) is expected, value
    head = b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n"
    status = _rejection_status(head, DEFAULT_LIMITS)
    if value != value.strip(b" \t"):  # (surrounding whitespace is OWS, not part of the value)
        return
    assert status == (None if expected else 400), (value, status)
    if expected:
        assert_h11_agrees(head, DEFAULT_LIMITS)
