"""Fuzzes relay-key handling (`llmrelay.relay.credentials`): the check, and stripping `key=` upstream.

The relay key is the only thing between the internet and a provider key the relay injects, so its
check must accept exactly the configured non-empty keys, refuse a request that presents two different
credentials (one could be checked while the other is forwarded), and the `?key=` form must not reach
the upstream. Properties: `KeyRing(keys).accepts(p)` equals `p in keys and p != b""`; one credential
presented in any combination of places is judged as that credential, two different ones are always
refused; `strip_query_key` drops every `key` parameter, however its name is encoded, so a query key
that authenticated never reaches the upstream, and keeps every other parameter byte for byte, in
order. The last tests guard two fixed bugs (`k%65y=` was not stripped; `%FF` elsewhere was rewritten).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote_plus, urlencode

from hypothesis import example, given
from hypothesis import strategies as st

from llmrelay.proto.messages import Headers
from llmrelay.relay.credentials import KeyRing, check_relay_key, strip_query_key

keys = st.lists(st.text(max_size=12), max_size=5)
# Credentials as a client can send them in a header: visible ASCII, no spaces.
tokens = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16)
PLACES = ("bearer", "x-api-key", "x-goog-api-key", "query")
noise_headers = st.lists(
    st.tuples(st.sampled_from([b"content-type", b"accept", b"x-request-id", b"api-key"]), st.binary(max_size=10)),
    max_size=3,
)
OTHER_NAMES = ("alt", "a", "keys", "monkey", "Key", "KEY", "api_key", "key ", "k")
noise_params = st.lists(st.tuples(st.sampled_from(OTHER_NAMES), st.text(max_size=8)), max_size=3)


@given(configured=keys, data=st.data())
def test_keyring_accepts_exactly_the_configured_nonempty_keys(configured: list[str], data: st.DataObject) -> None:
    encoded = [key.encode("utf-8") for key in configured]
    candidates = [st.none(), st.just(b""), st.binary(max_size=16), st.text(max_size=12).map(str.encode)]
    if encoded:
        candidates.append(st.sampled_from(encoded))
    presented = data.draw(st.one_of(candidates))
    ring = KeyRing(configured)
    assert ring.required == bool(configured)
    assert ring.accepts(presented) == (presented is not None and presented != b"" and presented in encoded)


@st.composite
def presentation(draw: st.DrawFn, credentials: list[str]) -> tuple[Headers, str]:
    """Headers and a query presenting each credential in one or more places, amid unrelated noise."""
    headers: Headers = list(draw(noise_headers))
    params: list[tuple[str, str]] = list(draw(noise_params))
    for credential in credentials:
        raw = credential.encode("ascii")
        for place in draw(st.lists(st.sampled_from(PLACES), min_size=1, max_size=3)):
            if place == "bearer":
                scheme = draw(st.sampled_from([b"Bearer", b"bearer", b"BEARER"]))
                headers.append((b"authorization", scheme + draw(st.sampled_from([b" ", b"  "])) + raw))
            elif place == "query":
                params.append(("key", credential))
            else:
                padding = draw(st.sampled_from([b"", b" "]))
                headers.append((place.encode(), padding + raw + padding))
    order = draw(st.permutations(range(len(headers))))
    param_order = draw(st.permutations(range(len(params))))
    return [headers[i] for i in order], urlencode([params[i] for i in param_order])


@given(configured=keys, credential=tokens, data=st.data())
def test_one_credential_anywhere_is_judged_as_itself(
    configured: list[str], credential: str, data: st.DataObject
) -> None:
    configured = data.draw(st.sampled_from([configured, [*configured, credential]]))
    headers, query = data.draw(presentation([credential]))
    assert check_relay_key(KeyRing(configured), headers, query) == (credential in configured)


@given(first=tokens, second=tokens, others=keys, data=st.data())
def test_two_different_credentials_are_refused(first: str, second: str, others: list[str], data: st.DataObject) -> None:
    if first == second:
        second += "x"
    headers, query = data.draw(presentation([first, second]))
    assert not check_relay_key(KeyRing([first, second, *others]), headers, query)


def _latin1_pairs(query: str) -> list[tuple[str, str]]:
    """The query's parameters with percent-escapes decoded byte for byte (latin-1 keeps every byte)."""
    return parse_qsl(query, keep_blank_values=True, encoding="latin-1")


@given(params=st.lists(st.tuples(st.sampled_from(("key", *OTHER_NAMES)) | st.text(max_size=6), st.text(max_size=8))))
def test_strip_query_key_drops_key_and_keeps_the_rest_in_order(params: list[tuple[str, str]]) -> None:
    query = urlencode(params)
    stripped = strip_query_key(query)
    kept = [(name, value) for name, value in params if name != "key"]
    assert parse_qsl(stripped, keep_blank_values=True) == kept
    assert _latin1_pairs(stripped) == [pair for pair in _latin1_pairs(query) if pair[0] != "key"]


# -- arbitrary queries, and regressions of fixed bugs ----------------------------------------------------


@st.composite
def percent_encoded(draw: st.DrawFn, text: str) -> str:
    """`text` with any of its ASCII characters written as a %XX escape (either hex case)."""
    out = []
    for char in text:
        if char.isascii() and draw(st.booleans()):
            escape = f"%{ord(char):02X}"
            out.append(escape if draw(st.booleans()) else escape.lower())
        else:
            out.append(quote_plus(char))
    return "".join(out)


# Raw query text as a client may send it: names spelled "key" in any encoding, stray separators,
# escapes of bytes that are not UTF-8, "+" for a space, pairs without "=".
query_parts = st.one_of(
    percent_encoded("key").map(lambda name: name + "="),
    st.sampled_from(["key", "key=", "KEY=", "monkey=", "a=", "=", "&", "&&", "%FF", "%e9", "%", "+", "%2B", ";"]),
    st.text(alphabet="akey=%0123456789ABCDEFbdf+;-_.~ é", max_size=6),
)
raw_queries = st.lists(query_parts, max_size=8).map("".join)


@given(query=raw_queries)
@example(query="k%65y=RELAYKEY")
@example(query="a=%FF&key=k")
@example(query="key&b=1")
def test_strip_query_key_on_any_query(query: str) -> None:
    stripped = strip_query_key(query)
    assert "key" not in [name for name, _ in parse_qsl(stripped, keep_blank_values=True)]
    assert _latin1_pairs(stripped) == [pair for pair in _latin1_pairs(query) if pair[0] != "key"]


@given(name=percent_encoded("key"), secret=tokens)
@example(name="k%65y", secret="RELAYKEY")
def test_an_authenticating_query_key_is_never_forwarded(name: str, secret: str) -> None:
    """Was a bug: `?k%65y=RELAYKEY` authenticated, and was then forwarded upstream untouched."""
    query = f"a=1&{name}={quote_plus(secret)}"
    assert check_relay_key(KeyRing([secret]), [], query)
    assert strip_query_key(query) == "a=1"


@given(raw=st.binary(min_size=1, max_size=6), name=st.sampled_from(OTHER_NAMES))
@example(raw=b"\xff", name="a")
def test_strip_query_key_keeps_other_parameters_byte_for_byte(raw: bytes, name: str) -> None:
    """Was a bug: the other parameters were re-encoded through UTF-8, `a=%FF` becoming `a=%EF%BF%BD`."""
    escaped = "".join(f"%{byte:02X}" for byte in raw)
    query = f"{urlencode({name: ''})}{escaped}&key=k"
    assert strip_query_key(query) == f"{urlencode({name: ''})}{escaped}"
