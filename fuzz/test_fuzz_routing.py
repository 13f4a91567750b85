"""Fuzzes request routing and upstream path joining (`llmrelay.relay.routing`).

Routing decides which provider, and which key, a request reaches, and `join_path` builds the upstream
target from client-controlled bytes, so both must hold for any target a client can send. The
properties: `has_dot_segment` agrees with an independent regex definition of a (possibly
percent-encoded) `.`/`..` segment; `Router.route` raises nothing but `RequestRejected(400)`, and that
exactly for dot segments; `/{name}/{rest}` reaches the endpoint called `name` with `rest` intact and an
unknown name reaches nothing; a configured Host (in any case, with a port or a trailing dot) takes the
whole target; `hosts` entries with a path prefix and endpoints' `paths` agree with a reference
matcher written from their definition (longest prefix on a segment boundary, Host before paths before
the first segment, a Host's prefix taken off); `join_path` keeps the query verbatim, always stays under the base path, never repeats
the base path when the rest already starts with it, and is idempotent.
"""

from __future__ import annotations

import re

from hypothesis import assume, given
from hypothesis import strategies as st

from llmrelay.config.hosts import HostEntryError, canonical_host_entry
from llmrelay.proto.errors import RequestRejected
from llmrelay.relay.routing import Route, Router, has_dot_segment, join_path

_DOT_SEGMENT = re.compile(r"(?:\.|%2[eE]){1,2}")


def reference_has_dot_segment(target: str) -> bool:
    """A `.` or `..` path segment, each dot possibly written `%2e`/`%2E`; the query does not count."""
    return any(_DOT_SEGMENT.fullmatch(segment) for segment in target.split("?", 1)[0].split("/"))


# -- strategies ------------------------------------------------------------------------------------------

TRICKY_SEGMENTS = (".", "..", "%2e", "%2E", ".%2e", "%2E.", "%2e%2E", "...", ".a", "a.", "%2", "%", "%2f", "%252e", "")
PATH_CHARS = "abcv01._~-%2eEfF:;@!$&'()*+,=\u00e9"

segments = st.one_of(st.sampled_from(TRICKY_SEGMENTS), st.text(alphabet=PATH_CHARS, max_size=8))
queries = st.text(alphabet=PATH_CHARS + "/?=&#", max_size=16)
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
endpoint_names = st.builds(str.__add__, st.sampled_from(ALNUM), st.text(alphabet=ALNUM + "_.~-", max_size=8))
host_labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
host_names = st.one_of(
    st.lists(host_labels, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["[::1]", "127.0.0.1", "api.example.com"]),
)


@st.composite
def structured_paths(draw: st.DrawFn) -> str:
    path = "/" + "/".join(draw(st.lists(segments, max_size=5)))
    if draw(st.booleans()):
        path += "?" + draw(queries)
    return path


targets = st.one_of(
    structured_paths(),
    st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=40),
    st.sampled_from(["*", "http://example.com/openai/v1", "/openai/../admin", "/openai/%2e%2E/x", "//x"]),
)


@st.composite
def routers(draw: st.DrawFn, min_hosts: int | None) -> tuple[Router[str], list[str], dict[str, str]]:
    """A router over unique endpoint names (values `endpoint:NAME`), with the host -> value map.

    `min_hosts` None: no host routing at all; else at least that many hosts, spread over the endpoints.
    """
    names = draw(st.lists(endpoint_names, min_size=1, max_size=5, unique=True))
    hosts = [] if min_hosts is None else draw(st.lists(host_names, min_size=min_hosts, max_size=4, unique=True))
    owners = {host: draw(st.sampled_from(names)) for host in hosts}
    entries = [(name, [h for h, owner in owners.items() if owner == name], f"endpoint:{name}") for name in names]
    return Router(entries), names, {host: f"endpoint:{owner}" for host, owner in owners.items()}


@st.composite
def host_headers(draw: st.DrawFn, host: str) -> bytes:
    """Spellings of `host` that name it: any case, surrounding spaces, a trailing dot, a port."""
    spelled = "".join(c.upper() if draw(st.booleans()) else c for c in host)
    if not host.startswith("[") and draw(st.booleans()):
        spelled += "."
    if draw(st.booleans()):
        spelled += f":{draw(st.integers(0, 65535))}"
    return (draw(st.sampled_from(["", " "])) + spelled + draw(st.sampled_from(["", " "]))).encode("latin-1")


# -- properties ------------------------------------------------------------------------------------------


@given(path=st.one_of(targets, queries))
def test_has_dot_segment_matches_reference(path: str) -> None:
    assert has_dot_segment(path) == reference_has_dot_segment(path)


@given(
    router=routers(min_hosts=0),
    host=st.one_of(st.none(), st.binary(max_size=20), host_names.map(str.encode)),
    target=targets.map(lambda t: t.encode("latin-1")),
)
def test_route_rejects_exactly_dot_segments(
    router: tuple[Router[str], list[str], dict[str, str]], host: bytes | None, target: bytes
) -> None:
    try:
        route = router[0].route(host, target)
    except RequestRejected as exc:
        assert exc.status == 400
        assert reference_has_dot_segment(target.decode("latin-1"))
    else:
        assert not reference_has_dot_segment(target.decode("latin-1"))
        assert route is None or isinstance(route, Route)


other_names = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=10).map(
    lambda text: text.replace("/", "").replace("?", "")
)
suffixes = st.one_of(st.just(""), structured_paths(), queries.map(lambda query: "?" + query))
host_headers_or_none = st.one_of(st.none(), host_names.map(str.encode))


@given(router=routers(min_hosts=None), data=st.data())
def test_route_by_first_segment_reaches_the_named_endpoint_or_nothing(
    router: tuple[Router[str], list[str], dict[str, str]], data: st.DataObject
) -> None:
    table, names, _ = router
    name = names[data.draw(st.integers(0, len(names) - 1))] if data.draw(st.booleans()) else data.draw(other_names)
    suffix = data.draw(suffixes)
    target = f"/{name}{suffix}"
    assume(not reference_has_dot_segment(target))
    host = data.draw(host_headers_or_none)
    route = table.route(host, target.encode("latin-1"))
    if name not in names:
        assert route is None
        if not reference_has_dot_segment(name):
            assert table.route(host, name.encode("latin-1")) is None  # not origin-form
        return
    assert route is not None
    assert (route.endpoint, route.by_host) == (f"endpoint:{name}", False)
    assert route.rest == (suffix if suffix.startswith("/") else "/" + suffix)


@given(router=routers(min_hosts=1), target=targets, data=st.data())
def test_host_routing_takes_the_whole_target(
    router: tuple[Router[str], list[str], dict[str, str]], target: str, data: st.DataObject
) -> None:
    table, _, by_host = router
    assume(not reference_has_dot_segment(target))
    host = data.draw(st.sampled_from(sorted(by_host)))
    route = table.route(data.draw(host_headers(host)), target.encode("latin-1"))
    assert route is not None
    assert (route.endpoint, route.rest, route.by_host) == (by_host[host], target, True)


@given(
    host=host_names,
    port=st.integers(1, 65535),
    other=st.integers(0, 65535),
    with_plain_entry=st.booleans(),
    target=targets,
    data=st.data(),
)
def test_a_host_entry_with_a_port_wins_for_that_port_only(
    host: str, port: int, other: int, with_plain_entry: bool, target: str, data: st.DataObject
) -> None:
    assume(not reference_has_dot_segment(target) and other != port)
    try:
        canonical_host_entry(host)
    except HostEntryError:
        assume(False)  # labels such as "-" are not host names
    entries = [("one", [canonical_host_entry(f"{host}:{port}")], "ONE")]
    if with_plain_entry:
        entries.append(("any", [canonical_host_entry(host)], "ANY"))
    table = Router(entries)
    spelled = data.draw(host_headers(host).filter(lambda h: b":" not in h.rsplit(b"]", 1)[-1]))
    route = table.route(spelled.rstrip() + f":{port}".encode(), target.encode("latin-1"))
    assert route is not None and (route.endpoint, route.by_host) == ("ONE", True)
    elsewhere = table.route(spelled.rstrip() + f":{other}".encode(), target.encode("latin-1"))
    if with_plain_entry:
        assert elsewhere is not None and (elsewhere.endpoint, elsewhere.by_host) == ("ANY", True)
    else:
        assert elsewhere is None or not elsewhere.by_host


prefix_segments = st.sampled_from(["a", "ab", "v1", "tenant-b", "api", "x~y"])
prefixes = st.lists(prefix_segments, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s))


def reference_route(
    host_prefixes: dict[str, str], plain_host: str | None, paths: dict[str, str], names: set[str], target: str, host_matches: bool
) -> tuple[str, str, bool] | None:
    """(endpoint, rest, by_host) from the definition: for a matching Host its prefixes (longest first,
    taken off) then its plain entry; then `paths` (longest first, target whole); then `/{name}/`."""
    def below(prefix: str) -> bool:
        return target == prefix or target.startswith(prefix + "/") or target.startswith(prefix + "?")

    if host_matches:
        for prefix in sorted(host_prefixes, key=len, reverse=True):
            if below(prefix):
                rest = target[len(prefix):]
                return host_prefixes[prefix], rest if rest.startswith("/") else "/" + rest, True
        if plain_host is not None:
            return plain_host, target, True
    for prefix in sorted(paths, key=len, reverse=True):
        if below(prefix):
            return paths[prefix], target, False
    if not target.startswith("/"):
        return None
    name = re.split(r"[/?]", target[1:], maxsplit=1)[0]
    if name not in names:
        return None
    rest = target[1 + len(name):]
    return f"endpoint:{name}", rest if rest.startswith("/") else "/" + rest, False


@given(
    host_prefixes=st.dictionaries(prefixes, st.sampled_from(["endpoint:p1", "endpoint:p2"]), max_size=3),
    plain=st.sampled_from([None, "endpoint:plain"]),
    paths=st.dictionaries(prefixes, st.sampled_from(["endpoint:q1", "endpoint:q2"]), max_size=3),
    tail=st.one_of(st.just(""), structured_paths(), queries.map(lambda q: "?" + q)),
    lead=st.one_of(st.just(""), prefixes),
    host_matches=st.booleans(),
)
def test_host_prefixes_and_paths_match_the_reference(
    host_prefixes: dict[str, str], plain: str | None, paths: dict[str, str], tail: str, lead: str, host_matches: bool
) -> None:
    target = lead + tail if (lead + tail).startswith("/") else "/" + lead + tail
    assume(not reference_has_dot_segment(target))
    owners: dict[str, list[str]] = {}
    for prefix, owner in host_prefixes.items():
        owners.setdefault(owner, []).append("relay.test" + prefix)
    if plain is not None:
        owners.setdefault(plain, []).append("relay.test")
    names = {"a", "v1", "api"}
    entries = [(name, [], f"endpoint:{name}") for name in names]
    entries += [(owner.split(":")[1], hosts, owner) for owner, hosts in owners.items()]
    table = Router(entries, [(prefix, owner) for prefix, owner in paths.items()])
    host = b"relay.test:8811" if host_matches else b"other.test"
    route = table.route(host, target)
    expected = reference_route(host_prefixes, plain, paths, names | {o.split(":")[1] for o in owners}, target, host_matches)
    got = None if route is None else (route.endpoint, route.rest, route.by_host)
    assert got == expected


# -- join_path -------------------------------------------------------------------------------------------

base_segments = st.text(alphabet="abv012._~-%", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
base_paths = st.one_of(st.just(""), st.lists(base_segments, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s)))


@st.composite
def rests(draw: st.DrawFn, base: str) -> str:
    """A request's rest: anything, or something that already starts with the base path."""
    tail = draw(st.one_of(structured_paths(), st.text(max_size=20)))
    return draw(st.sampled_from([tail, base + tail, base, base + "/" + tail.lstrip("/"), tail.lstrip("/")]))


@given(data=st.data(), base=base_paths)
def test_join_path_keeps_query_and_base_without_repeating_it(data: st.DataObject, base: str) -> None:
    rest = data.draw(rests(base))
    joined = join_path(base, rest)
    path, sep, query = rest.partition("?")
    joined_path, joined_sep, joined_query = joined.partition("?")
    assert (joined_sep, joined_query) == (sep, query)  # the query, verbatim
    assert joined_path.startswith("/")
    if base:
        assert joined_path == base or joined_path.startswith(base + "/")
    origin_path = path if path.startswith("/") else "/" + path
    if base and (origin_path == base or origin_path.startswith(base + "/")):
        assert joined_path == origin_path  # the base path is not repeated
    else:
        assert joined_path == base + origin_path
    assert join_path(base, joined) == joined  # joining again adds nothing
