"""`GET /health` as a function of the shared table: status, status code and per-endpoint answers."""

from __future__ import annotations

import time

import msgspec

from llmrelay.config import load_config_text
from llmrelay.control import EndpointHealth, HealthTable, WorkerInfo
from llmrelay.relay.runtime import RelayRuntime
from llmrelay.worker.health import health_view

CONFIG = "".join(f'[endpoints.{name}]\ntarget_base = "http://127.0.0.1:9/v1"\n' for name in ("a", "b"))
ME = WorkerInfo(pid=1, slot=0, state="serving", uptime=1.0, connections=0, in_flight=0, requests_total=0, version="x", generation=1)


def view(endpoints: dict[str, EndpointHealth], target: str = "/health") -> tuple[int, dict[str, object]]:
    runtime = RelayRuntime(load_config_text(CONFIG, "t", environ={}), 1)
    return health_view(runtime, HealthTable(generation=1, endpoints=endpoints, workers=[ME]), lambda: ME, target)


async def test_all_ok_is_200_ok() -> None:
    code, payload = view({"a": EndpointHealth("ok"), "b": EndpointHealth("ok")})
    assert (code, payload["status"]) == (200, "ok")


async def test_recent_failures_below_the_threshold_are_degraded_but_ready() -> None:
    code, payload = view({"a": EndpointHealth("ok", consecutive_failures=2), "b": EndpointHealth("ok")})
    assert (code, payload["status"]) == (200, "degraded")


async def test_an_endpoint_with_nothing_usable_makes_the_relay_unavailable() -> None:
    failing = EndpointHealth("failing", consecutive_failures=3, retry_at=time.time() + 30)
    code, payload = view({"a": failing, "b": EndpointHealth("ok")})
    assert (code, payload["status"]) == (503, "unavailable")
    endpoints = payload["endpoints"]
    assert isinstance(endpoints, dict) and endpoints["a"]["usable"] is False and endpoints["b"]["usable"] is True
    assert view({"a": failing, "b": EndpointHealth("ok")}, "/health?endpoint=a")[0] == 503
    assert view({"a": failing, "b": EndpointHealth("ok")}, "/health?endpoint=b")[0] == 200
    assert view({"a": failing, "b": EndpointHealth("ok")}, "/health?endpoint=zzz")[0] == 404


async def test_a_failing_endpoint_past_its_retry_interval_is_tried_again() -> None:
    held_out = EndpointHealth("failing", consecutive_failures=5, retry_at=time.time() - 1)
    code, payload = view({"a": held_out, "b": EndpointHealth("ok")})
    assert (code, payload["status"]) == (200, "degraded")
    assert view({"a": held_out, "b": EndpointHealth("ok")}, "/health?endpoint=a")[0] == 200


async def test_before_the_first_table_the_worker_lists_itself() -> None:
    runtime = RelayRuntime(load_config_text(CONFIG, "t", environ={}), 1)
    code, payload = health_view(runtime, None, lambda: ME)
    assert code == 200 and payload["workers"] == [msgspec.structs.asdict(ME)]
