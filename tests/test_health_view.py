"""`GET /health` as a function of the shared table: status, status code, per-endpoint, per-upstream
and per-key answers."""

from __future__ import annotations

import time

import msgspec

from llmrelay.config import load_config_text
from llmrelay.control import EndpointHealth, HealthTable, KeyHealth, UpstreamHealth, WorkerInfo
from llmrelay.relay.runtime import RelayRuntime
from llmrelay.worker.health import health_view

CONFIG = """
[endpoints.a]
target_base = "http://127.0.0.1:9/v1"
[endpoints.b]
api_keys = [{ key = "sk-1", name = "first" }, { key = "sk-2" }]
[[endpoints.b.upstreams]]
name = "main"
target_base = "http://127.0.0.1:9/v1"
[[endpoints.b.upstreams]]
name = "spare"
target_base = "http://127.0.0.1:10/v1"
fallback = true
"""
ME = WorkerInfo(pid=1, slot=0, state="serving", uptime=1.0, connections=0, in_flight=0, requests_total=0, version="x", generation=1)


def ejected() -> UpstreamHealth:
    return UpstreamHealth(state="ejected", consecutive_failures=3, last_error="connect refused", ejected_until=time.time() + 30)


def view(endpoints: dict[str, EndpointHealth], target: str = "/health") -> tuple[int, dict[str, object]]:
    runtime = RelayRuntime(load_config_text(CONFIG, "t", environ={}), 1)
    return health_view(runtime, HealthTable(generation=1, endpoints=endpoints, workers=[ME]), lambda: ME, target)


def upstream(payload: dict[str, object], endpoint: str, name: str) -> dict[str, object]:
    endpoints = payload["endpoints"]
    assert isinstance(endpoints, dict)
    entry = endpoints[endpoint]["upstreams"][name]
    assert isinstance(entry, dict)
    return entry


async def test_all_ok_is_200_ok_and_lists_every_upstream_and_key() -> None:
    code, payload = view({})
    assert (code, payload["status"]) == (200, "ok")
    assert upstream(payload, "a", "a#0")["state"] == "ok"
    keys = upstream(payload, "b", "main")["keys"]
    assert keys == {"first": {"state": "ok", "weight": 1.0, "cooling_until": 0.0}, "1": {"state": "ok", "weight": 1.0, "cooling_until": 0.0}}
    assert "sk-1" not in msgspec.json.encode(payload).decode()


async def test_recent_failures_below_the_threshold_are_degraded_but_ready() -> None:
    code, payload = view({"a": EndpointHealth({"a#0": UpstreamHealth(consecutive_failures=2)})})
    assert (code, payload["status"]) == (200, "degraded")


async def test_an_endpoint_with_nothing_usable_is_failing_503() -> None:
    table = {"a": EndpointHealth({"a#0": ejected()})}
    code, payload = view(table)
    assert (code, payload["status"]) == (503, "failing")
    entry = upstream(payload, "a", "a#0")
    assert entry["state"] == "ejected" and entry["usable"] is False and entry["last_error"] == "connect refused"
    assert view(table, "/health?endpoint=a")[0] == 503
    assert view(table, "/health?endpoint=b")[0] == 200
    assert view(table, "/health?endpoint=zzz")[0] == 404


async def test_a_fallback_keeps_the_endpoint_usable_degraded() -> None:
    code, payload = view({"b": EndpointHealth({"main": ejected()})})
    assert (code, payload["status"]) == (200, "degraded")
    assert upstream(payload, "b", "spare")["usable"] is True


async def test_an_ejection_past_its_deadline_is_usable_again_for_a_probe() -> None:
    past = UpstreamHealth(state="ejected", consecutive_failures=3, ejected_until=time.time() - 1)
    code, payload = view({"a": EndpointHealth({"a#0": past})})
    assert (code, payload["status"]) == (200, "degraded")
    assert upstream(payload, "a", "a#0")["usable"] is True


async def test_failing_active_check_is_unhealthy() -> None:
    sick = UpstreamHealth(state="unhealthy", checked=True, check_ok=False, last_check_error="status 503")
    code, payload = view({"a": EndpointHealth({"a#0": sick})})
    assert code == 503 and upstream(payload, "a", "a#0")["state"] == "unhealthy"


async def test_key_states_cooling_and_disabled() -> None:
    soon = time.time() + 20
    keys = [KeyHealth("first", "cooling", soon, 429), KeyHealth("1", "disabled", 0.0, 401)]
    code, payload = view({"b": EndpointHealth({"main": UpstreamHealth(state="cooling", keys=keys)})})
    entry = upstream(payload, "b", "main")
    assert entry["state"] == "cooling" and entry["usable"] is False
    assert entry["keys"] == {
        "first": {"state": "cooling", "weight": 1.0, "cooling_until": soon},
        "1": {"state": "disabled", "weight": 1.0, "cooling_until": 0.0},
    }
    assert (code, payload["status"]) == (200, "degraded")  # the fallback still serves
    expired = [KeyHealth("first", "cooling", time.time() - 1, 429), KeyHealth("1", "disabled", 0.0, 401)]
    _, payload = view({"b": EndpointHealth({"main": UpstreamHealth(state="cooling", keys=expired)})})
    assert upstream(payload, "b", "main")["state"] == "ok" and upstream(payload, "b", "main")["usable"] is True
    both = [KeyHealth("first", "disabled", 0.0, 403), KeyHealth("1", "disabled", 0.0, 401)]
    _, payload = view({"b": EndpointHealth({"main": UpstreamHealth(state="disabled", keys=both)})})
    assert upstream(payload, "b", "main")["state"] == "disabled"


async def test_one_refused_key_leaves_the_upstream_ok_and_the_relay_degraded() -> None:
    keys = [KeyHealth("first", "disabled", 0.0, 401), KeyHealth("1", "ok")]
    code, payload = view({"b": EndpointHealth({"main": UpstreamHealth(keys=keys)})})
    assert upstream(payload, "b", "main")["state"] == "ok" and upstream(payload, "b", "main")["usable"] is True
    assert (code, payload["status"]) == (200, "degraded")


async def test_before_the_first_table_the_worker_lists_itself() -> None:
    runtime = RelayRuntime(load_config_text(CONFIG, "t", environ={}), 1)
    code, payload = health_view(runtime, None, lambda: ME)
    assert code == 200 and payload["workers"] == [msgspec.structs.asdict(ME)]
