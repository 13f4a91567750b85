"""CORS decisions on byte strings: preflights allowed and refused, actual responses' headers."""

from __future__ import annotations

import pytest

from llmrelay.config.schema import CorsSection
from llmrelay.relay.policy.cors import CorsPolicy

APP = b"https://app.example.com"


def policy(**keys: object) -> CorsPolicy:
    return CorsPolicy(CorsSection(**keys))  # type: ignore[arg-type]


def test_preflight_of_an_allowed_origin() -> None:
    cors = policy(allow_origins=["https://app.example.com"], max_age=300)
    headers = dict(cors.preflight(APP, b"POST", b"Content-Type, Authorization, X-Stainless-OS") or [])
    assert headers[b"access-control-allow-origin"] == APP
    assert headers[b"access-control-allow-methods"] == b"GET, POST, OPTIONS"
    assert headers[b"access-control-allow-headers"] == b"content-type, authorization, x-stainless-os"
    assert headers[b"access-control-max-age"] == b"300"
    assert headers[b"vary"] == b"origin"
    assert b"access-control-allow-credentials" not in headers


@pytest.mark.parametrize(
    ("origin", "method", "requested"),
    [
        (b"https://evil.example.com", b"POST", None),  # origin not listed
        (b"https://app.example.com.evil.com", b"POST", None),  # exact match only
        (APP, b"DELETE", None),  # method not allowed
        (APP, b"POST", b"content-type, x-secret"),  # a header not allowed
    ],
)
def test_refused_preflights(origin: bytes, method: bytes, requested: bytes | None) -> None:
    cors = policy(allow_origins=["https://app.example.com"])
    assert cors.preflight(origin, method, requested) is None


def test_star_without_credentials_answers_star() -> None:
    cors = policy(allow_origins=["*"], allow_headers=["*"])
    headers = dict(cors.preflight(b"https://any.example", b"GET", b"x-anything") or [])
    assert headers[b"access-control-allow-origin"] == b"*"
    assert headers[b"access-control-allow-headers"] == b"x-anything"
    assert dict(cors.actual(b"https://any.example") or [])[b"access-control-allow-origin"] == b"*"


def test_credentials_echo_the_origin() -> None:
    cors = policy(allow_origins=["https://app.example.com"], allow_credentials=True, expose_headers=["x-request-id"])
    preflight = dict(cors.preflight(APP, b"post", None) or [])
    assert preflight[b"access-control-allow-origin"] == APP
    assert preflight[b"access-control-allow-credentials"] == b"true"
    actual = dict(cors.actual(APP) or [])
    assert actual == {
        b"access-control-allow-origin": APP,
        b"access-control-expose-headers": b"x-request-id",
        b"access-control-allow-credentials": b"true",
        b"vary": b"origin",
    }


def test_star_with_credentials_is_refused_by_the_schema() -> None:
    with pytest.raises(ValueError):
        CorsSection(allow_origins=["*"], allow_credentials=True)


def test_header_prefix_globs() -> None:
    cors = policy(allow_origins=["*"], allow_headers=["x-stainless-*", "content-type"])
    assert cors.header_allowed(b"x-stainless-lang")
    assert cors.header_allowed(b"content-type")
    assert not cors.header_allowed(b"x-stainless")  # (the prefix includes the dash)
    assert not cors.header_allowed(b"authorization")


def test_actual_of_a_refused_origin() -> None:
    cors = policy(allow_origins=["https://app.example.com"])
    assert cors.actual(b"https://evil.example.com") is None
    assert cors.actual(APP) == [(b"access-control-allow-origin", APP), (b"vary", b"origin")]


def test_no_origins_refuses_everything() -> None:
    cors = policy()
    assert cors.preflight(APP, b"POST", None) is None
    assert cors.actual(APP) is None
