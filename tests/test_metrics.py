"""Prometheus metrics: the supervisor's aggregation of the workers' deltas (fed directly, as fake
workers would send them), its exposition read by prometheus_client's own parsers and checked by
`promtool`, and the end-to-end totals of a real relay with 4 workers (a kill -9 included)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from relaytest import endpoint_config, free_port, wait_until

from llmrelay.control import CounterDelta, GaugeValue, HistogramDelta, MetricsDelta
from llmrelay.observe import catalog
from supervisor.metrics import LiveState, MetricsTotals, RestartReason, exposition, quantile

RELAY_KEY = "sk-relay-metrics-7c1d"
PROVIDER_KEY = "sk-provider-metrics-93ab"
DURATION_BUCKETS = len(catalog.REQUEST_DURATION.buckets) + 1
LIVE = LiveState(upstream_healthy=[("oai", "oai#0", True), ("ant", "a", False)], worker_rss=[(0, 1 << 20), (1, 2 << 20)])


def families(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample named `name` (a counter's `_total`, a histogram's `_bucket`...) with its labels."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def request_delta(pid: int, count: int, endpoint: str = "oai", upstream: str = "oai#0", bucket: int = 3) -> MetricsDelta:
    buckets = [0] * DURATION_BUCKETS
    buckets[bucket] = count
    return MetricsDelta(
        pid=pid,
        counters=[CounterDelta(catalog.REQUESTS.name, [endpoint, upstream, "2xx", "false"], float(count))],
        histograms=[HistogramDelta(catalog.REQUEST_DURATION.name, [endpoint, upstream], buckets, 0.04 * count, count)],
        gauges=[GaugeValue(catalog.IN_FLIGHT.name, [], float(pid % 3))],
    )


def text_of(totals: MetricsTotals, accept: str = "") -> str:
    body, content_type = exposition(totals, LIVE, accept)
    assert content_type.startswith("application/openmetrics-text" if "openmetrics" in accept else "text/plain; version=0.0.4")
    return body.decode()


def test_counters_and_histograms_are_summed_over_workers() -> None:
    totals = MetricsTotals(time.time())
    expected = 0
    for round_ in range(5):
        for pid in (101, 102, 103, 104):
            count = pid - 100 + round_
            totals.add(request_delta(pid, count, bucket=round_), time.time())
            expected += count
    text = text_of(totals)
    requests = samples(text, catalog.REQUESTS.name)
    assert requests == [({"endpoint": "oai", "upstream": "oai#0", "status_class": "2xx", "streamed": "false"}, expected)]
    buckets = [value for labels, value in samples(text, catalog.REQUEST_DURATION.name + "_bucket")]
    assert len(buckets) == DURATION_BUCKETS
    assert buckets == sorted(buckets), "buckets are cumulative"
    assert buckets[-1] == expected
    assert samples(text, catalog.REQUEST_DURATION.name + "_count")[0][1] == expected
    assert samples(text, catalog.REQUEST_DURATION.name + "_sum")[0][1] == pytest.approx(0.04 * expected)
    les = [labels["le"] for labels, _ in samples(text, catalog.REQUEST_DURATION.name + "_bucket")]
    assert les[-1] == "+Inf" and [float(le) for le in les[:-1]] == list(catalog.REQUEST_DURATION.buckets)


def test_gauges_are_the_live_workers_latest_values_summed() -> None:
    totals = MetricsTotals(time.time())
    totals.add(MetricsDelta(pid=1, gauges=[GaugeValue(catalog.IN_FLIGHT.name, [], 5)]), time.time())
    totals.add(MetricsDelta(pid=2, gauges=[GaugeValue(catalog.IN_FLIGHT.name, [], 2)]), time.time())
    totals.add(MetricsDelta(pid=1, gauges=[GaugeValue(catalog.IN_FLIGHT.name, [], 3)]), time.time())  # latest wins
    totals.add(MetricsDelta(pid=2, gauges=[GaugeValue(catalog.CONNECTIONS.name, ["127.0.0.1:8080"], 7)]), time.time())
    assert samples(text_of(totals), catalog.IN_FLIGHT.name) == [({}, 5.0)]  # 3 + 2 (pid 2 did not repeat it)
    totals.forget(1)  # worker 1 exited: its gauges go, not its counters
    text = text_of(totals)
    assert samples(text, catalog.IN_FLIGHT.name) == [({}, 2.0)]
    assert samples(text, catalog.CONNECTIONS.name) == [({"listener": "127.0.0.1:8080"}, 7.0)]
    totals.forget(2)
    assert samples(text_of(totals), catalog.IN_FLIGHT.name) == [({}, 0.0)]
    assert samples(text_of(totals), catalog.CONNECTIONS.name) == []


def test_a_gone_workers_counts_are_kept() -> None:
    totals = MetricsTotals(time.time())
    totals.add(request_delta(7, 40), time.time())
    totals.forget(7)
    totals.add(request_delta(8, 2), time.time())
    assert samples(text_of(totals), catalog.REQUESTS.name)[0][1] == 42


def test_deltas_that_do_not_fit_the_catalog_are_dropped() -> None:
    totals = MetricsTotals(time.time())
    totals.add(
        MetricsDelta(
            pid=1,
            counters=[
                CounterDelta("llmrelay_made_up_total", ["x"], 1),  # not in the catalog
                CounterDelta(catalog.REQUESTS.name, ["oai", "2xx"], 1),  # too few labels
                CounterDelta(catalog.IN_FLIGHT.name, [], 1),  # a gauge, sent as a counter
                CounterDelta(catalog.RELOADS.name, ["ok"], 1),  # the supervisor's own
                CounterDelta(catalog.BYTES.name, ["in"], -5),  # counters only grow
                CounterDelta(catalog.BYTES.name, ["out"], 10),
            ],
            histograms=[
                HistogramDelta(catalog.REQUEST_DURATION.name, ["oai", "u"], [1, 0], 0.1, 1),  # wrong bucket count
                HistogramDelta(catalog.REQUEST_DURATION.name, ["oai", "u"], [1] + [0] * (DURATION_BUCKETS - 1), 0.1, 2),
            ],
        ),
        time.time(),
    )
    text = text_of(totals)
    assert "llmrelay_made_up" not in text
    assert samples(text, catalog.REQUESTS.name) == []
    assert samples(text, catalog.BYTES.name) == [({"direction": "out"}, 10.0)]
    assert samples(text, catalog.RELOADS.name) == [({"result": "ok"}, 0.0), ({"result": "failed"}, 0.0)]
    assert samples(text, catalog.REQUEST_DURATION.name + "_count") == []


def test_supervisor_metrics_and_every_catalog_family() -> None:
    totals = MetricsTotals(time.time())
    totals.restarted(RestartReason.CRASH)
    totals.restarted(RestartReason.ROLLING)
    totals.restarted(RestartReason.ROLLING)
    totals.reloaded(True)
    totals.reloaded(False)
    totals.reloaded(True)
    text = text_of(totals)
    found = families(text)
    for metric in catalog.CATALOG:
        family_name = metric.name.removesuffix("_total")
        assert family_name in found, metric.name
        assert found[family_name].type == metric.kind  # type: ignore[attr-defined]
    restarts = dict((labels["reason"], value) for labels, value in samples(text, catalog.WORKER_RESTARTS.name))
    assert restarts == {reason.value: {"crash": 1.0, "rolling": 2.0}.get(reason.value, 0.0) for reason in RestartReason}
    assert samples(text, catalog.RELOADS.name) == [({"result": "ok"}, 2.0), ({"result": "failed"}, 1.0)]
    assert samples(text, catalog.UPSTREAM_HEALTHY.name) == [
        ({"endpoint": "oai", "upstream": "oai#0"}, 1.0),
        ({"endpoint": "ant", "upstream": "a"}, 0.0),
    ]
    assert samples(text, catalog.WORKER_RSS.name) == [({"slot": "0"}, float(1 << 20)), ({"slot": "1"}, float(2 << 20))]
    assert samples(text, catalog.BUILD_INFO.name)[0][1] == 1.0


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    totals = MetricsTotals(time.time())
    totals.add(request_delta(1, 3), time.time())
    text = text_of(totals, "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert text.endswith("# EOF\n")
    parsed = {family.name: family for family in openmetrics_families(text)}
    requests = parsed["llmrelay_requests"]
    assert requests.type == "counter"
    assert [s.value for s in requests.samples if s.name == "llmrelay_requests_total"] == [3.0]
    histogram = parsed[catalog.REQUEST_DURATION.name]
    assert [s.value for s in histogram.samples if s.name.endswith("_count")] == [3.0]


def test_quantiles_from_the_last_minute() -> None:
    bounds = (0.1, 0.2, 0.5)
    assert quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert quantile(0.5, bounds, [10, 0, 0, 0]) == pytest.approx(0.05)
    assert quantile(0.5, bounds, [0, 10, 10, 0]) == pytest.approx(0.2)
    assert quantile(0.99, bounds, [0, 10, 10, 0]) == pytest.approx(0.2 + 0.3 * 0.98)
    assert quantile(0.99, bounds, [0, 0, 0, 5]) == 0.5  # in +Inf: the highest bound
    now = time.time()
    totals = MetricsTotals(now - 120)
    totals.add(request_delta(1, 30, bucket=0), now - 90)  # older than a minute: not counted
    totals.add(request_delta(1, 60, bucket=2), now - 10)
    recent = totals.recent.summary(now)[("oai", "oai#0")]
    assert recent.requests_per_second == pytest.approx(1.0)
    assert recent.p50 is not None and 0.01 < recent.p50 <= 0.025
    assert recent.p99 is not None and recent.p99 <= 0.025


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (apt-get install -y prometheus; .ci/run installs it)"
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_promtool_accepts_the_exposition() -> None:
    totals = MetricsTotals(time.time())
    for pid in (1, 2):
        totals.add(request_delta(pid, 5), time.time())
    totals.add(
        MetricsDelta(pid=1, counters=[CounterDelta(catalog.TOKENS.name, ["oai", "gpt-4o", "input"], 120)]), time.time()
    )
    totals.restarted(RestartReason.RSS)
    promtool_check(text_of(totals))


# -- a real relay -------------------------------------------------------------------------------------


def relay_config(mock, admin_port: int) -> str:  # type: ignore[no-untyped-def]
    return (
        f'auth_keys = ["{RELAY_KEY}"]\n[server]\nheartbeat_interval = 0.5\n[server.admin]\nport = {admin_port}\n\n'
        + endpoint_config("oai", mock, api_key=PROVIDER_KEY)
    )


def scrape(admin_port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def total(text: str, name: str, **match: str) -> float:
    return sum(value for labels, value in samples(text, name) if all(labels.get(k) == v for k, v in match.items()))


def send_requests(relay, count: int) -> None:  # type: ignore[no-untyped-def]
    """`count` chat completions, each on a new connection (so that every worker may get some)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for _ in range(count):
            response = client.post(relay.url("/oai/v1/chat/completions"), json=body, headers={"authorization": f"Bearer {RELAY_KEY}"})
            assert response.status_code == 200, response.text


def test_requests_total_is_exact_over_four_workers(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    admin = free_port()
    relay = start_relay(relay_config(mock, admin), workers=4)
    count = 120
    send_requests(relay, count)

    def busy_workers() -> int:
        status = httpx.get(f"http://127.0.0.1:{admin}/status", timeout=10).json()
        return sum(1 for worker in status["workers"] if worker["requests"] > 0)

    assert wait_until(lambda: busy_workers() >= 2, timeout=5), "the requests were spread over several workers"
    name = catalog.REQUESTS.name
    wait_until(lambda: total(scrape(admin), name, endpoint="oai") >= count, timeout=10)
    time.sleep(1.5)  # (a late delta would show a count above N)
    text = scrape(admin)
    assert total(text, name, endpoint="oai") == count
    assert total(text, name, endpoint="oai", status_class="2xx") == count
    assert total(text, catalog.REQUEST_DURATION.name + "_count", endpoint="oai") == count
    assert total(text, catalog.TIME_TO_FIRST_BYTE.name + "_count", endpoint="oai") == count
    for labels, _ in samples(text, catalog.REQUEST_DURATION.name + "_count"):
        buckets = [v for l, v in samples(text, catalog.REQUEST_DURATION.name + "_bucket") if l["upstream"] == labels["upstream"]]
        assert buckets == sorted(buckets) and buckets[-1] == total(text, catalog.REQUEST_DURATION.name + "_count", upstream=labels["upstream"])
    for secret in (RELAY_KEY, PROVIDER_KEY):
        assert secret not in text
    promtool_check(text)


def test_a_killed_workers_counts_are_not_lost(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    admin = free_port()
    relay = start_relay(relay_config(mock, admin), workers=2)
    name = catalog.REQUESTS.name
    send_requests(relay, 40)
    assert wait_until(lambda: total(scrape(admin), name, endpoint="oai") == 40, timeout=10)
    victim = relay.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: victim not in relay.worker_pids() and len(relay.worker_pids()) == 2, timeout=15)
    text = scrape(admin)
    assert total(text, name, endpoint="oai") == 40
    assert total(text, catalog.WORKER_RESTARTS.name, reason="crash") == 1
    relay.wait_ready(workers=3)
    send_requests(relay, 10)
    assert wait_until(lambda: total(scrape(admin), name, endpoint="oai") == 50, timeout=10), scrape(admin)


# -- the Grafana dashboard ------------------------------------------------------------------------------

DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana-dashboard.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"] and dashboard["schemaVersion"] >= 30
    exprs = []
    for panel in dashboard["panels"]:
        assert {"id", "type", "title", "gridPos"} <= panel.keys()
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def catalog_name(used: str) -> str | None:
    """The catalog metric a name in a query refers to (a histogram's series included), or None."""
    if used in catalog.BY_NAME:
        return used
    for suffix in HISTOGRAM_SUFFIXES:
        base = used.removesuffix(suffix)
        if base != used and catalog.BY_NAME.get(base, None) is not None and catalog.BY_NAME[base].kind == "histogram":
            return base
    return None


def test_grafana_dashboard_queries_only_catalog_metrics() -> None:
    exprs = dashboard_exprs()
    used: set[str] = set()
    for expr in exprs:
        names = re.findall(r"\b(llmrelay_[a-z0-9_]+)", expr)
        assert names, f"a query without an llmrelay metric: {expr}"
        for name in names:
            metric = catalog_name(name)
            assert metric is not None, f"{name} (in {expr}) is not in the catalog"
            used.add(metric)
        for label in re.findall(r"by \(([^)]*)\)", expr):
            for name in (part.strip() for part in label.split(",")):
                labels = {label for m in names for label in catalog.BY_NAME[catalog_name(m) or ""].labels} | {"le", "job", "instance"}
                assert name in labels, f"{name} is not a label of {names} (in {expr})"
    wanted = {
        catalog.REQUESTS, catalog.REQUEST_DURATION, catalog.TIME_TO_FIRST_BYTE, catalog.IN_FLIGHT, catalog.UPSTREAM_HEALTHY,
        catalog.TOKENS, catalog.WORKER_RSS, catalog.WORKER_RESTARTS, catalog.RELOADS,
    }
    assert {metric.name for metric in wanted} <= used
    assert any("status_class" in expr and catalog.REQUESTS.name in expr for expr in exprs)
    for q in ("0.5", "0.99"):
        for metric in (catalog.REQUEST_DURATION, catalog.TIME_TO_FIRST_BYTE):
            assert any(f"histogram_quantile({q}" in e and metric.name + "_bucket" in e for e in exprs), (q, metric.name)


def test_grafana_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every query, with Grafana's variables filled in, is valid PromQL (as a recording rule for promtool)."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"llmrelay_dashboard:query{index}", "expr": expr.replace("$__rate_interval", "5m").replace("$job", ".*")}
                    for index, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # (JSON is YAML)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (apt-get install -y prometheus; .ci/run installs it)"
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
