"""CONNECT targets, allow patterns and the address check (`llmrelay.proto.authority`), byte by byte."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrelay.proto.authority import (
    AllowList,
    Authority,
    AuthorityError,
    address_refusal,
    compile_pattern,
    parse_authority,
)


@pytest.mark.parametrize(
    ("target", "host", "port", "literal"),
    [
        (b"api.openai.com:443", "api.openai.com", 443, False),
        (b"API.OpenAI.com:443", "api.openai.com", 443, False),
        (b"api.openai.com.:443", "api.openai.com", 443, False),
        (b"127.0.0.1:8443", "127.0.0.1", 8443, True),
        (b"[::1]:443", "::1", 443, True),
        (b"[2001:DB8::1]:1", "2001:db8::1", 1, True),
        (b"localhost:65535", "localhost", 65535, False),
        (b"under_score.example:443", "under_score.example", 443, False),
    ],
)
def test_a_strict_authority_is_parsed(target: bytes, host: str, port: int, literal: bool) -> None:
    parsed = parse_authority(target)
    assert (parsed.host, parsed.port, parsed.address is not None) == (host, port, literal)


@pytest.mark.parametrize(
    "target",
    [
        b"api.openai.com",  # no port
        b"api.openai.com:",  # empty port
        b":443",  # no host
        b"api.openai.com:0",
        b"api.openai.com:65536",
        b"api.openai.com:+443",
        b"api.openai.com:44 3",
        b"user@api.openai.com:443",
        b"user:pw@api.openai.com:443",
        b"api.openai.com:443/path",
        b"http://api.openai.com:443",
        b"api%2eopenai.com:443",
        b"::1:443",  # an IPv6 literal without brackets
        b"[::1]",
        b"[::1]443",
        b"[fe80::1%25eth0]:443",
        b"[not-v6]:443",
        b"127.1:443",  # an address spelled as no name is
        b"0x7f.0.0.1:443",
        b"010.0.0.1:443",
        b"-bad.example:443",
        b"bad-.example:443",
        b"a..b:443",
        b"\xc3\xa9t\xc3\xa9.example:443",
        b"a" * 64 + b".example:443",  # a label over 63 bytes
    ],
)
def test_anything_else_is_refused(target: bytes) -> None:
    with pytest.raises(AuthorityError):
        parse_authority(target)


def test_the_authority_prints_back_as_host_port() -> None:
    assert str(parse_authority(b"[::1]:443")) == "[::1]:443"
    assert str(parse_authority(b"Api.Example.com.:8443")) == "api.example.com:8443"


ALLOW = AllowList(["api.openai.com:443", "*.anthropic.com:443", "127.0.0.1:8443", "[::1]:9000", "models.example:*"])


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        (b"api.openai.com:443", True),
        (b"API.OPENAI.COM:443", True),
        (b"api.openai.com:80", False),  # another port
        (b"openai.com:443", False),
        (b"api.openai.com.evil.test:443", False),
        (b"api.anthropic.com:443", True),
        (b"a.b.anthropic.com:443", True),  # `*` matches any run, dots included
        (b"anthropic.com:443", False),  # `*.` needs something before the dot
        (b"evilanthropic.com:443", False),
        (b"api.anthropic.com.evil.test:443", False),
        (b"127.0.0.1:8443", True),  # an IP literal on the list
        (b"127.0.0.1:443", False),
        (b"127.0.0.2:8443", False),
        (b"[::1]:9000", True),
        (b"[0:0::1]:9000", True),  # the same address, written differently
        (b"models.example:1", True),
        (b"models.example:65535", True),
    ],
)
def test_allow_list_matching(target: bytes, allowed: bool) -> None:
    assert ALLOW.allows(parse_authority(target)) is allowed


def test_a_wildcard_never_matches_an_ip_literal() -> None:
    """`*:443` is written for names: an address must be listed as itself."""
    everything = AllowList(["*:443", "*:*", "1*:443"])
    assert everything.allows(parse_authority(b"api.openai.com:443"))
    assert not everything.allows(parse_authority(b"127.0.0.1:443"))
    assert not everything.allows(parse_authority(b"[::1]:443"))
    assert not everything.allows(parse_authority(b"10.0.0.1:443"))


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata address
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("100.64.0.1", "reserved"),  # shared address space (carrier-grade NAT)
        ("240.0.0.1", "private"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_addresses_a_name_may_resolve_to(address: str, reason: str | None) -> None:
    found = address_refusal(ipaddress.ip_address(address))
    if reason is None:
        assert found is None
    else:
        assert found is not None
        if reason != "private":  # (some reserved ranges are also "private" to the ipaddress module)
            assert found == reason


def test_pattern_syntax_errors() -> None:
    for bad in ("api.openai.com", "api.openai.com:x", "[nope]:443", "a b:443", ":443"):
        with pytest.raises(ValueError):
            compile_pattern(bad)


# -- properties ----------------------------------------------------------------------------------

labels = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
ports = st.integers(1, 65535)


@settings(max_examples=300, deadline=None)
@given(name=names, port=ports)
def test_an_exact_pattern_matches_exactly_its_destination(name: str, port: int) -> None:
    pattern = compile_pattern(f"{name}:{port}")
    assert pattern.matches(Authority(name, port))
    assert not pattern.matches(Authority(name, port % 65535 + 1))
    assert not pattern.matches(Authority("x" + name, port))
    assert not pattern.matches(Authority(name + ".x", port))


@settings(max_examples=300, deadline=None)
@given(prefix=names, suffix=names, other=names, port=ports)
def test_a_leading_wildcard_matches_only_names_ending_in_its_suffix(prefix: str, suffix: str, other: str, port: int) -> None:
    pattern = compile_pattern(f"*.{suffix}:{port}")
    assert pattern.matches(Authority(f"{prefix}.{suffix}", port))
    assert pattern.matches(Authority(f"{prefix}.{suffix}", port)) == pattern.matches(
        parse_authority(f"{prefix}.{suffix}:{port}".encode())
    )
    matched = pattern.matches(Authority(other, port))
    assert matched == (other.endswith("." + suffix))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_parse_authority_accepts_only_what_prints_back(target: bytes) -> None:
    """Whatever is accepted is a canonical host:port that parses again to itself."""
    try:
        parsed = parse_authority(target)
    except AuthorityError:
        return
    assert 1 <= parsed.port <= 65535
    assert parse_authority(str(parsed).encode()) == parsed
    if parsed.address is None:
        assert parsed.host == parsed.host.lower() and not parsed.host.endswith(".")
