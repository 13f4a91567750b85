"""Fuzzes CONNECT destinations (`llmrelay.proto.authority`) and the head guard's CONNECT path.

A CONNECT target decides where a tunnel goes, so its parser and the allow-list must hold for any
bytes a client can send. The properties: `parse_authority` raises nothing but `AuthorityError`; what
it accepts reads the same to an independent parser (`urllib.parse`) and prints back to itself; the
head guard accepts `CONNECT <target>` exactly when `parse_authority` does; an allow pattern agrees
with a reference matcher (`fnmatch` with `*` only) on names and never matches an IP literal it does not
name; and an address carried inside IPv6 (mapped) gets the verdict of the IPv4 address it carries.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from urllib.parse import urlsplit

from hypothesis import assume, given
from hypothesis import strategies as st

from llmrelay.proto.authority import Authority, AuthorityError, address_refusal, compile_pattern, parse_authority
from llmrelay.proto.errors import RequestRejected
from llmrelay.proto.h1.head_guard import HeadLimits, parse_request_head

LIMITS = HeadLimits()

labels = st.from_regex(r"[a-z0-9_]([a-z0-9_-]{0,8}[a-z0-9_])?", fullmatch=True)
names = st.lists(labels, min_size=1, max_size=4).map(".".join).filter(lambda name: not name.rsplit(".", 1)[-1].isdigit())
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
ports = st.integers(0, 70000)
# Pieces that make a target nearly valid: the places where parsers disagree.
noise = st.sampled_from(
    [b"", b"@", b"user@", b":", b"::", b"[", b"]", b"%25", b"%2e", b".", b"..", b"/", b"?", b"#", b" ", b"\t",
     b"0x7f", b"0", b"00", b"-", b"\x00", b"\xff", b"%", b"v1.x", b"*"]
)


@st.composite
def targets(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["name", "v4", "v6", "raw"]))
    port = b"%d" % draw(ports)
    if kind == "name":
        host = draw(names).encode()
    elif kind == "v4":
        host = str(draw(ipv4)).encode()
    elif kind == "v6":
        host = b"[" + str(draw(ipv6)).encode() + b"]"
    else:
        host = draw(st.binary(max_size=12))
    parts = [draw(noise), host, draw(noise), b":", draw(noise), port, draw(noise)]
    keep = draw(st.lists(st.booleans(), min_size=len(parts), max_size=len(parts)))
    # the usual shape most of the time, noise dropped or kept at random
    return b"".join(part for part, kept in zip(parts, keep) if kept or part in (host, b":", port))


@given(st.one_of(targets(), st.binary(max_size=64)))
def test_parse_authority_raises_only_authority_error(target: bytes) -> None:
    try:
        parsed = parse_authority(target)
    except AuthorityError:
        return
    assert isinstance(parsed, Authority)
    assert 1 <= parsed.port <= 65535
    assert parse_authority(str(parsed).encode()) == parsed
    # an independent reading of the same authority finds the same host and port
    split = urlsplit("//" + target.decode("ascii"))
    assert split.port == parsed.port
    assert split.hostname is not None
    expected = split.hostname.rstrip(".") if parsed.address is None else str(ipaddress.ip_address(split.hostname))
    assert expected == parsed.host
    assert split.username is None and split.path == "" and split.query == ""


@given(targets())
def test_the_head_guard_accepts_a_connect_target_exactly_when_the_relay_can_read_it(target: bytes) -> None:
    assume(b"\r" not in target and b"\n" not in target)
    head = b"CONNECT " + target + b" HTTP/1.1\r\nHost: relay\r\n\r\n"
    try:
        parse_authority(target)
        readable = True
    except AuthorityError:
        readable = False
    try:
        parsed = parse_request_head(head, LIMITS, "http", ("127.0.0.1", 1))
    except RequestRejected as exc:
        assert exc.status in (400, 405) and not (readable and exc.status == 405)
        assert not readable or b" " in target or b"\t" in target or target[:1] == b"/"
        return
    assert readable and parsed.method == b"CONNECT" and parsed.target == target and not parsed.has_body


@given(names, st.data())
def test_a_name_pattern_agrees_with_a_reference_matcher(name: str, data: st.DataObject) -> None:
    # a pattern made from the name, or from another name, with runs replaced by `*`
    base = data.draw(st.one_of(st.just(name), names))
    start = data.draw(st.integers(0, len(base)))
    end = data.draw(st.integers(start, len(base)))
    text = base[:start] + "*" + base[end:] if data.draw(st.booleans()) else base
    text = text.strip(".") or "*"
    try:
        pattern = compile_pattern(f"{text}:443")
    except ValueError:
        return
    expected = fnmatch.fnmatchcase(name, text)
    assert pattern.matches(Authority(name, 443)) is expected
    assert not pattern.matches(Authority(name, 444))


@given(st.one_of(ipv4, ipv6), st.sampled_from(["*", "*.*", "1*", "*1", "*:*"]))
def test_a_wildcard_pattern_never_matches_an_ip_literal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> None:
    pattern = compile_pattern(text if text.endswith(":*") else f"{text}:443")
    assert not pattern.matches(Authority(str(address), 443, address))


@given(ipv4, ipv4)
def test_an_ip_pattern_matches_only_its_own_address(listed: ipaddress.IPv4Address, other: ipaddress.IPv4Address) -> None:
    pattern = compile_pattern(f"{listed}:443")
    assert pattern.matches(Authority(str(listed), 443, listed))
    assert pattern.matches(Authority(str(other), 443, other)) is (other == listed)


@given(ipv4)
def test_a_mapped_address_gets_the_verdict_of_the_address_it_carries(address: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert (address_refusal(mapped) is None) is (address_refusal(address) is None)
    if address_refusal(address) is None:
        assert address.is_global and not address.is_multicast
