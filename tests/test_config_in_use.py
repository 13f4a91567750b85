"""Config semantics seen from outside, through a real relay: forwarding headers per endpoint, Host
entries with ports and IPv6 addresses, pass-through endpoints beside a team key, and reloads that
would hand workers a file they cannot load."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from mock_providers import MockProvider
from relaytest import RelayProcess, endpoint_config

CHAIN = {"x-forwarded-for": "10.1.1.1, 10.2.2.2", "forwarded": "for=6.6.6.6", "x-real-ip": "6.6.6.6"}


@pytest.fixture
def relay(mock: MockProvider, start_relay) -> RelayProcess:  # type: ignore[no-untyped-def]
    config = (
        'auth_keys = ["team-key"]\n'
        + endpoint_config("appended", mock)
        + endpoint_config("replaced", mock, forwarded_headers="replace")
        + endpoint_config("unforwarded", mock, forwarded_headers="none")
        + endpoint_config("open", mock, auth_keys=[])
        + endpoint_config("any_port", mock, "openai", "/any", hosts=["api.any.test", "::1"])
        + endpoint_config("one_port", mock, "openai", "/one", hosts=["api.any.test:8443", "[::1]:9000", "localhost:8080"])
    )
    return start_relay(config)  # type: ignore[no-any-return]


def get(relay: RelayProcess, path: str, **headers: str) -> httpx.Response:
    return httpx.get(relay.url(path), headers={"authorization": "Bearer team-key", **headers}, timeout=10)


def test_append_extends_the_client_chain(relay: RelayProcess, mock: MockProvider) -> None:
    assert get(relay, "/appended/v1/models", **CHAIN).status_code == 200
    seen = mock.last().headers
    assert seen["x-forwarded-for"] == "10.1.1.1, 10.2.2.2, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{relay.port}"
    assert "forwarded" not in seen and "x-real-ip" not in seen


def test_append_without_a_client_chain_starts_one(relay: RelayProcess, mock: MockProvider) -> None:
    assert get(relay, "/appended/v1/models").status_code == 200
    assert mock.last().headers["x-forwarded-for"] == "127.0.0.1"


def test_replace_starts_the_chain_at_the_client(relay: RelayProcess, mock: MockProvider) -> None:
    assert get(relay, "/replaced/v1/models", **CHAIN).status_code == 200
    seen = mock.last().headers
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{relay.port}"


def test_none_sends_no_forwarding_header(relay: RelayProcess, mock: MockProvider) -> None:
    assert get(relay, "/unforwarded/v1/models", **CHAIN, **{"x-forwarded-proto": "https"}).status_code == 200
    names = {name.lower() for name, _ in mock.last().raw_headers}
    assert not names & {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
    assert "x-request-id" in names


def test_empty_auth_keys_pass_the_client_credential_beside_a_team_key(relay: RelayProcess, mock: MockProvider) -> None:
    response = httpx.get(relay.url("/open/v1/models"), headers={"authorization": "Bearer sk-client-own"}, timeout=10)
    assert response.status_code == 200
    assert mock.last().headers["authorization"] == "Bearer sk-client-own"
    guarded = httpx.get(relay.url("/appended/v1/models"), headers={"authorization": "Bearer sk-client-own"}, timeout=10)
    assert guarded.status_code == 401


@pytest.mark.parametrize(
    ("host", "base"),
    [
        ("api.any.test", "/any"),
        ("api.any.test:1234", "/any"),
        ("API.any.test.:8443", "/one"),
        ("api.any.test:8443", "/one"),
        ("[::1]", "/any"),
        ("[::1]:1234", "/any"),
        ("[::1]:9000", "/one"),
        ("[0:0::1]:9000", "/one"),
        ("localhost:8080", "/one"),
    ],
)
def test_host_entries_route_by_host_and_port(relay: RelayProcess, mock: MockProvider, host: str, base: str) -> None:
    # The path names no endpoint: only the Host routes it (each endpoint has its own target base path).
    response = get(relay, "/v1/models", host=host)
    assert response.status_code == 200, response.text
    assert mock.last().path == f"{base}/v1/models"


def test_a_host_entry_with_a_port_does_not_match_other_ports(relay: RelayProcess) -> None:
    assert get(relay, "/v1/models", host="localhost:8081").status_code == 404
    assert get(relay, "/v1/models", host="localhost").status_code == 404


def _wait_for(relay: RelayProcess, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in relay.logs():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{relay.logs()}"
        time.sleep(0.05)


def test_a_reload_to_an_unloadable_ca_file_is_rejected_and_the_old_config_serves(
    mock: MockProvider, start_relay, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    relay: RelayProcess = start_relay(endpoint_config("a", mock) + endpoint_config("b", mock))
    assert relay.config_path is not None
    broken = tmp_path / "not-a-ca.pem"
    broken.mkdir()
    relay.config_path.write_text(endpoint_config("a", mock) + endpoint_config("b", mock, ca_file=str(broken)))
    relay.send_signal(signal.SIGHUP)
    _wait_for(relay, "reload rejected")
    assert f"endpoints.b.ca_file: {broken} is a directory, not a PEM file" in relay.logs()
    assert "reload ok" not in relay.logs()
    for name in ("a", "b"):
        assert httpx.get(relay.url(f"/{name}/v1/models"), timeout=5).status_code == 200
    assert "Traceback" not in relay.logs()
