"""The supervisor's active health checks (`supervisor.checks`) against real sockets on 127.0.0.1: the
mock provider records what a check sends, a closed port and a hanging answer fail it, a pproxy
forwarding proxy carries it, and the checks keep their interval and follow a restart."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec
import pytest
import trio

from llmrelay import __version__
from llmrelay.config import load_config_text
from llmrelay.config.resolved import RelayConfig, ResolvedEndpoint, ResolvedUpstream
from llmrelay.control import KeyEvent, UpstreamEvent, UpstreamHealth
from mock_providers import MockProvider
from relaytest import free_port
from supervisor.checks import ActiveChecks
from supervisor.health import HealthBoard, Update

pytestmark = pytest.mark.timeout(30)

KEY_PARKED = "sk-parked-0000aaaa"
KEY_ONE = "sk-one-1111bbbb"
KEY_TWO = "sk-two-2222cccc"


def config_for(
    base_url: str, check: str = "true", provider: str = "openai", extra: str = "", **changes: object
) -> RelayConfig:
    """One endpoint `m` with one upstream `up` checked by `check`; `changes` replace check fields
    (an interval under the config's 1 s minimum, to keep the tests short)."""
    text = (
        f'[endpoints.m]\nprovider = "{provider}"\n\n[[endpoints.m.upstreams]]\nname = "up"\n'
        f'target_base = "{base_url}/v1"\nconnect_timeout = 2\nhealth_check = {check}\n{extra}'
    )
    config = load_config_text(text, "test", environ={})
    upstream = config.endpoints[0].upstreams[0]
    assert upstream.health_check is not None
    if changes:
        check_config = msgspec.structs.replace(upstream.health_check, **changes)
        upstream = msgspec.structs.replace(upstream, health_check=check_config)
    return replace_upstream(config, upstream)


def replace_upstream(config: RelayConfig, upstream: ResolvedUpstream) -> RelayConfig:
    endpoint: ResolvedEndpoint = msgspec.structs.replace(config.endpoints[0], upstreams=[upstream])
    return msgspec.structs.replace(config, endpoints=[endpoint])


class Run:
    """Active checks of one config, with what they reported."""

    def __init__(self, config: RelayConfig) -> None:
        self.board = HealthBoard(config)
        self.updates: list[Update] = []
        self.checks = ActiveChecks(self.board, self.apply, config)

    async def apply(self, update: Update) -> None:
        self.updates.append(update)

    def row(self) -> UpstreamHealth:
        return self.board.table(1, [], time.time()).endpoints["m"].upstreams["up"]

    def lines(self) -> list[str]:
        return [line.text for update in self.updates for line in update.lines]

    async def until(self, condition: object, timeout: float = 10.0) -> None:
        assert callable(condition)
        with trio.fail_after(timeout):
            while not condition():
                await trio.sleep(0.01)


async def run_for(config: RelayConfig, seconds: float) -> Run:
    run = Run(config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.checks.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return run


async def test_a_check_sends_the_configured_request_with_the_first_usable_key(mock: MockProvider) -> None:
    check = (
        '{ method = "POST", path = "/echo", body = "{\\"ping\\": 1}", expected_status = [200], '
        'headers = { "x-probe" = "yes", "User-Agent" = "custom-agent" } }'
    )
    keys = (
        f'api_keys = [{{ key = "{KEY_PARKED}", weight = 0 }}, {{ key = "{KEY_ONE}" }}, '
        f'{{ key = "{KEY_TWO}", name = "two" }}]\n'
    )
    config = config_for(mock.base_url, check, extra=keys)
    run = Run(config)
    run.board.key_event(KeyEvent("m", "up", 1, 401, 1, disabled=True), time.time())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.checks.run)
        await run.until(lambda: run.row().last_check)
        nursery.cancel_scope.cancel()
    request = mock.requests[0]
    assert (request.method, request.path, request.body) == ("POST", "/v1/echo", b'{"ping": 1}')
    assert request.headers["host"] == f"127.0.0.1:{mock.port}"
    assert request.headers["content-length"] == "11"
    assert request.headers["x-probe"] == "yes"
    assert request.headers["user-agent"] == "custom-agent"  # a configured header replaces the default
    assert [name for name, _ in request.raw_headers].count("User-Agent") + [
        name for name, _ in request.raw_headers
    ].count("user-agent") == 1
    assert request.headers["authorization"] == f"Bearer {KEY_TWO}"  # key 0 is parked, key 1 disabled
    row = run.row()
    assert row.check_ok and row.last_check_error == "" and row.last_check_ms > 0


async def test_the_default_check_joins_the_base_path_and_presents_the_key_the_providers_way(
    mock: MockProvider,
) -> None:
    config = config_for(mock.base_url, provider="anthropic", extra=f'api_key = "{KEY_ONE}"\n')
    await run_for(config, 0.5)
    request = mock.requests[0]
    assert (request.method, request.path, request.body) == ("GET", "/v1/models", b"")
    assert request.headers["user-agent"] == f"llmrelay-health-check/{__version__}"
    assert request.headers["x-api-key"] == KEY_ONE
    assert "authorization" not in request.headers and "content-length" not in request.headers


async def test_no_key_is_sent_when_the_upstream_has_none(mock: MockProvider) -> None:
    await run_for(config_for(mock.base_url), 0.5)
    assert "authorization" not in mock.requests[0].headers


async def test_the_status_is_judged_against_expected_status(mock: MockProvider) -> None:
    check = '{ headers = { "x-mock-status" = "503" }, unhealthy_threshold = 2 }'
    failing = config_for(mock.base_url, check, interval=0.1)
    run = Run(failing)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.checks.run)
        await run.until(lambda: not run.row().check_ok)
        nursery.cancel_scope.cancel()
    assert run.row().state == "unhealthy" and run.row().last_check_error == "status 503"
    assert run.lines() == ["upstream m/up unhealthy: 2 failed checks, last: status 503"]
    assert any(update.changed for update in run.updates)

    expected = config_for(mock.base_url, '{ headers = { "x-mock-status" = "503" }, expected_status = [503] }')
    run = await run_for(expected, 0.5)
    assert run.row().check_ok and run.row().last_check and run.row().last_check_error == ""


async def test_a_closed_port_fails_with_a_readable_reason() -> None:
    port = free_port()  # nothing listens there
    run = Run(config_for(f"http://127.0.0.1:{port}", "{ unhealthy_threshold = 1 }"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.checks.run)
        await run.until(lambda: run.row().last_check)
        nursery.cancel_scope.cancel()
    row = run.row()
    assert row.state == "unhealthy"
    assert row.last_check_error == "cannot connect to the upstream: connection refused"
    assert run.lines() == [f"upstream m/up unhealthy: 1 failed check, last: {row.last_check_error}"]


async def test_a_check_past_its_timeout_fails(mock: MockProvider) -> None:
    config = config_for(mock.base_url, '{ headers = { "x-mock-hang" = "1" } }', timeout=0.3)
    run = Run(config)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.checks.run)
        await run.until(lambda: run.row().last_check)
        nursery.cancel_scope.cancel()
    assert 0.3 <= trio.current_time() - started < 2.0
    row = run.row()
    assert row.last_check_error == "timeout after 0.3 s" and row.last_check_ms >= 300
    assert mock.wait_for_disconnect(5.0)  # the hanging connection was closed


async def test_checks_run_once_per_interval(mock: MockProvider) -> None:
    await run_for(config_for(mock.base_url, interval=0.25), 1.1)
    assert 4 <= len(mock.requests) <= 6  # at 0, 0.25, 0.5, 0.75, 1.0 s


async def test_a_passing_check_ends_an_ejection_and_is_broadcast(mock: MockProvider) -> None:
    run = Run(config_for(mock.base_url, interval=0.2))
    now = time.time()
    for _ in range(3):
        run.board.observe(UpstreamEvent("m", "up", False, "connect refused"), now)
    assert run.row().state == "ejected"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.checks.run)
        await run.until(lambda: run.row().state == "ok")
        nursery.cancel_scope.cancel()
    assert run.lines() == ["upstream m/up recovered: its health check passed"]
    assert run.updates[0].changed


async def test_a_restart_cancels_the_old_checks_and_starts_the_new_ones(mock: MockProvider) -> None:
    old = config_for(mock.base_url, '{ path = "/old" }', interval=0.1)
    new = config_for(mock.base_url, '{ path = "/new" }', interval=0.1)
    run = Run(old)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.checks.run)
        await run.until(lambda: len(mock.requests) >= 2)
        run.board.sync(new)
        run.checks.restart(new)
        await run.until(lambda: sum(r.path == "/v1/new" for r in mock.requests) >= 3)
        before = len(mock.requests)
        unchecked = msgspec.structs.replace(new.endpoints[0].upstreams[0], health_check=None)
        run.checks.restart(replace_upstream(new, unchecked))  # no check left
        await trio.sleep(0.4)
        assert len(mock.requests) <= before + 1  # (one may have been under way)
        nursery.cancel_scope.cancel()
    paths = [r.path for r in mock.requests]
    first_new = paths.index("/v1/new")
    assert set(paths[:first_new]) == {"/v1/old"} and set(paths[first_new:]) == {"/v1/new"}


async def test_cancelled_checks_close_their_connections(mock: MockProvider) -> None:
    config = config_for(mock.base_url, '{ headers = { "x-mock-hang" = "1" } }', timeout=5.0)
    run = Run(config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.checks.run)
        await run.until(lambda: len(mock.requests) == 1)
        nursery.cancel_scope.cancel()
    assert mock.wait_for_disconnect(5.0)
    assert run.row().last_check == 0.0  # a cancelled check reports nothing


# -- through a forwarding proxy ------------------------------------------------------------------


async def test_a_check_goes_through_the_upstreams_proxy(mock: MockProvider, http_proxy: tuple[int, Path]) -> None:
    port, log_path = http_proxy
    config = config_for(mock.base_url, extra=f'proxy_url = "http://127.0.0.1:{port}"\n')
    run = Run(config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.checks.run)
        await run.until(lambda: run.row().last_check)
        nursery.cancel_scope.cancel()
    assert run.row().check_ok, run.row().last_check_error
    assert mock.requests[0].path == "/v1/models"
    with trio.fail_after(5):
        lines = log_path.read_text().splitlines
        while not any(line.rstrip().endswith(f"-> 127.0.0.1:{mock.port}") for line in lines()):
            await trio.sleep(0.05)


async def test_a_proxy_that_is_down_fails_the_check(mock: MockProvider) -> None:
    config = config_for(mock.base_url, extra=f'proxy_url = "http://127.0.0.1:{free_port()}"\n')
    run = await run_for(config, 0.5)
    assert run.row().last_check_error.startswith("cannot connect to the upstream proxy")
    assert not mock.requests


async def test_no_line_or_error_holds_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    extra = f'api_key = "{KEY_ONE}"\n'
    run = await run_for(config_for(f"http://127.0.0.1:{free_port()}", "{ unhealthy_threshold = 1 }", extra=extra), 0.3)
    assert run.lines() and run.row().last_check_error
    assert not any(KEY_ONE in line for line in run.lines())
    assert KEY_ONE not in run.row().last_check_error and KEY_ONE not in caplog.text
