"""Routing and URL joining, sans-IO."""

from __future__ import annotations

import pytest

from llmrelay.proto.errors import RequestRejected
from llmrelay.relay.routing import Router, join_path


@pytest.mark.parametrize(
    ("base", "rest", "expected"),
    [
        ("/v1", "/v1/chat/completions", "/v1/chat/completions"),
        ("/v1", "/chat/completions", "/v1/chat/completions"),
        ("", "/v1/messages", "/v1/messages"),
        ("/openai/v1", "/v1/chat/completions", "/openai/v1/v1/chat/completions"),
        ("/openai/v1", "/openai/v1/models", "/openai/v1/models"),
        ("/v1", "/v1", "/v1"),
        ("/v1", "/v1beta/models", "/v1/v1beta/models"),
        ("/v1beta", "/v1beta/models/x:generateContent?alt=sse", "/v1beta/models/x:generateContent?alt=sse"),
        ("/v1", "/models?limit=2&after=a%2Fb", "/v1/models?limit=2&after=a%2Fb"),
        ("", "/", "/"),
    ],
)
def test_join_path(base: str, rest: str, expected: str) -> None:
    assert join_path(base, rest) == expected


def make_router() -> Router[str]:
    return Router([("openai", [], "OPENAI"), ("anthropic_dev", [], "ANTHROPIC"), ("groq", ["groq.internal"], "GROQ")])


def test_prefix_routing() -> None:
    router = make_router()
    route = router.route(b"relay:8811", b"/openai/v1/chat/completions?x=1")
    assert route is not None and route.endpoint == "OPENAI" and route.rest == "/v1/chat/completions?x=1"
    route = router.route(b"relay", b"/anthropic_dev/v1/messages")
    assert route is not None and route.endpoint == "ANTHROPIC" and not route.by_host
    route = router.route(b"relay", b"/openai?x=1")
    assert route is not None and route.rest == "/?x=1"
    assert router.route(b"relay", b"/unknown/v1/models") is None
    assert router.route(b"relay", b"/openaix/v1/models") is None
    assert router.route(b"relay", b"*") is None


def test_host_routing_forwards_the_whole_path() -> None:
    router = make_router()
    for host in (b"groq.internal", b"GROQ.internal:8811", b"groq.internal."):
        route = router.route(host, b"/openai/v1/chat/completions")
        assert route is not None and route.endpoint == "GROQ" and route.by_host
        assert route.rest == "/openai/v1/chat/completions"


@pytest.mark.parametrize("target", [b"/openai/../anthropic_dev/v1", b"/openai/v1/%2e%2e/admin", b"/openai/./v1", b"/openai/%2E/x"])
def test_dot_segments_are_refused(target: bytes) -> None:
    with pytest.raises(RequestRejected) as info:
        make_router().route(b"relay", target)
    assert info.value.status == 400


def make_prefixed_router() -> Router[str]:
    return Router(
        [
            ("oai", ["oai.relay.test"], "PLAIN"),
            ("tenant_b", ["oai.relay.test/tenant-b"], "TENANT_B"),
            ("nested", ["oai.relay.test/api/v1", "oai.relay.test:9000/api"], "NESTED"),
            ("v1", [], "V1"),
        ],
        [("/v1/messages", "MESSAGES"), ("/v1/chat/completions", "CHAT"), ("/v1/chat", "CHAT_SHORT")],
    )


@pytest.mark.parametrize(
    ("host", "target", "expected"),
    [
        (b"oai.relay.test", b"/tenant-b/v1/models", ("TENANT_B", "/v1/models", True)),
        (b"OAI.relay.test:443", b"/tenant-b?x=1", ("TENANT_B", "/?x=1", True)),
        (b"oai.relay.test", b"/tenant-b", ("TENANT_B", "/", True)),
        (b"oai.relay.test", b"/tenant-bx/v1/models", ("PLAIN", "/tenant-bx/v1/models", True)),
        (b"oai.relay.test", b"/api/v1/v1/models", ("NESTED", "/v1/models", True)),
        (b"oai.relay.test:9000", b"/api/v1/v1/models", ("NESTED", "/v1/v1/models", True)),
        (b"oai.relay.test", b"/api/v2", ("PLAIN", "/api/v2", True)),
        (b"other.test", b"/tenant-b/v1/models", None),
        (b"other.test", b"/v1/messages", ("MESSAGES", "/v1/messages", False)),
        (b"other.test", b"/v1/chat/completions?stream=1", ("CHAT", "/v1/chat/completions?stream=1", False)),
        (b"other.test", b"/v1/chat/x", ("CHAT_SHORT", "/v1/chat/x", False)),
        (b"other.test", b"/v1/messagesx", ("V1", "/messagesx", False)),
        (None, b"/v1/messages/count_tokens", ("MESSAGES", "/v1/messages/count_tokens", False)),
    ],
)
def test_host_prefixes_and_paths(host: bytes | None, target: bytes, expected: tuple[str, str, bool] | None) -> None:
    route = make_prefixed_router().route(host, target)
    assert (None if route is None else (route.endpoint, route.rest, route.by_host)) == expected
