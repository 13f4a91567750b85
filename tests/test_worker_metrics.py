"""Workers driven over their control pipes: the `MetricsDelta`s they send add up, exactly, to the
requests they served (spread over three workers), streamed events, tokens and gauges included; and the last
delta arrives before `Stopped`."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from mock_providers import MockProvider
from relaytest import endpoint_config

from llmrelay.config.load import load_config_text
from llmrelay.control import Config, ControlMessage, Drain, FrameReader, MetricsDelta, Ready, Stopped, encode_frame
from llmrelay.observe import catalog

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class Worker:
    """`python -m llmrelay.worker` on its own loopback socket; the test holds its control pipe and
    keeps every message it sends, with the time it arrived."""

    def __init__(self, tmp_path: Path, slot: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.control, child = socket.socketpair()
        self.messages: list[tuple[float, ControlMessage]] = []
        self.log = open(tmp_path / f"worker-{slot}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "llmrelay.worker", "--control-fd", str(child.fileno()),
             "--listen-fd", str(self.listener.fileno()), "--slot", str(slot)],
            pass_fds=(child.fileno(), self.listener.fileno()), stdout=self.log, stderr=subprocess.STDOUT,
        )
        child.close()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        reader = FrameReader()
        self.control.settimeout(60)
        while True:
            try:
                data = self.control.recv(65536)
            except OSError:
                return
            if not data:
                return
            now = time.monotonic()
            self.messages += [(now, message) for message in reader.feed(data)]

    def send(self, message: object) -> None:
        self.control.sendall(encode_frame(message))

    def wait_for(self, kind: type, timeout: float = 15) -> ControlMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, message in list(self.messages):
                if isinstance(message, kind):
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no {kind.__name__} from the worker")

    def deltas(self) -> list[tuple[float, MetricsDelta]]:
        return [(at, m) for at, m in list(self.messages) if isinstance(m, MetricsDelta)]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._reader.join(5)
        self.control.close()
        self.listener.close()
        self.log.close()


def _config(mock: MockProvider) -> Config:
    text = endpoint_config("oai", mock) + '[server.metrics]\nmodels = ["gpt-4o*"]\n'
    return Config(config=load_config_text(text, "test", environ={}), generation=1)


def _sum(workers: list[Worker]) -> tuple[Counter[tuple[str, tuple[str, ...]]], dict[tuple[str, tuple[str, ...]], list[float]]]:
    counters: Counter[tuple[str, tuple[str, ...]]] = Counter()
    histograms: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    for worker in workers:
        for _, delta in worker.deltas():
            for counter in delta.counters:
                counters[(counter.name, tuple(counter.labels))] += counter.value
            for histogram in delta.histograms:
                total = histograms.setdefault((histogram.name, tuple(histogram.labels)), [0.0] * (len(histogram.buckets) + 2))
                for index, count in enumerate(histogram.buckets):
                    total[index] += count
                total[-2] += histogram.sum
                total[-1] += histogram.count
    return counters, histograms


def test_metrics_deltas_of_three_workers_add_up_to_the_requests(mock: MockProvider, tmp_path: Path) -> None:
    workers = [Worker(tmp_path, slot) for slot in range(3)]
    try:
        for worker in workers:
            worker.send(_config(mock))
        for worker in workers:
            worker.wait_for(Ready)
        bytes_in = bytes_out = events = 0
        statuses: Counter[tuple[str, str]] = Counter()
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for index in range(30):
                url = f"http://127.0.0.1:{workers[index % 3].port}"
                if index % 5 == 4:
                    response = client.get(url + "/nowhere")  # no endpoint: 404, endpoint "-"
                    statuses[("-", "4xx")] += 1
                elif index % 5 == 3:
                    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
                    response = client.post(url + "/oai/v1/chat/completions", json=body, headers={"x-mock-events": "4"})
                    events += response.content.count(b"\n\n")
                    statuses[("oai", "stream")] += 1
                else:
                    response = client.post(url + "/oai/v1/chat/completions", json=CHAT)
                    statuses[("oai", "2xx")] += 1
                bytes_out += len(response.content)
                bytes_in += len(response.request.content)
                assert response.status_code in (200, 404)
        for worker in workers:
            worker.send(Drain(timeout=5, close_idle=True))
        for worker in workers:
            worker.wait_for(Stopped)
            assert worker.process.wait(10) == 0
        counters, histograms = _sum(workers)
        requests = catalog.REQUESTS.name
        assert counters[(requests, ("oai", "oai#0", "2xx", "false"))] == statuses[("oai", "2xx")] == 18
        assert counters[(requests, ("oai", "oai#0", "2xx", "true"))] == statuses[("oai", "stream")] == 6
        assert counters[(requests, ("-", "-", "4xx", "false"))] == statuses[("-", "4xx")] == 6
        assert sum(v for (name, _), v in counters.items() if name == requests) == 30
        assert counters[(catalog.UPSTREAM_ATTEMPTS.name, ("oai", "oai#0", "ok"))] == 24
        assert counters[(catalog.STREAM_EVENTS.name, ("oai", "oai#0"))] == events > 6 * 4
        # the mock reports 1 prompt token ("hi") and 4 completion tokens, in JSON and in the last SSE chunk
        assert counters[(catalog.TOKENS.name, ("oai", "gpt-4o-mini", "input"))] == 24
        assert counters[(catalog.TOKENS.name, ("oai", "gpt-4o-mini", "output"))] == 24 * 4
        assert counters[(catalog.BYTES.name, ("in",))] == bytes_in
        assert counters[(catalog.BYTES.name, ("out",))] == bytes_out
        duration = histograms[(catalog.REQUEST_DURATION.name, ("oai", "oai#0"))]
        assert duration[-1] == 24 and sum(duration[:-2]) == 24 and duration[-2] > 0
        assert histograms[(catalog.TIME_TO_FIRST_BYTE.name, ("oai", "oai#0"))][-1] == 24
        assert histograms[(catalog.REQUEST_DURATION.name, ("-", "-"))][-1] == 6
        for worker in workers:  # every worker served its share; the last delta came before Stopped
            served = sum(c.value for _, d in worker.deltas() for c in d.counters if c.name == requests)
            assert served == 10
            kinds = [type(m) for _, m in worker.messages]
            assert kinds.index(Stopped) > max(i for i, kind in enumerate(kinds) if kind is MetricsDelta)
            times = [at for at, _ in worker.deltas()]
            assert all(b - a > 0.5 for a, b in zip(times[:-2], times[1:-1]))  # at most about one a second
    finally:
        for worker in workers:
            worker.close()


def test_gauges_follow_requests_in_flight_and_connections(mock: MockProvider, tmp_path: Path) -> None:
    worker = Worker(tmp_path, 0)
    try:
        worker.send(_config(mock))
        worker.wait_for(Ready)
        listener = f"127.0.0.1:{_config(mock).config.listeners[0].port}"
        url = f"http://127.0.0.1:{worker.port}/oai/v1/chat/completions"
        done = threading.Event()

        def slow() -> None:
            httpx.post(url, json={**CHAT, "stream": True}, headers={"x-mock-delay": "0.5", "x-mock-events": "5"}, timeout=20)
            done.set()

        thread = threading.Thread(target=slow, daemon=True)
        thread.start()

        def gauge(name: str) -> list[float]:
            return [g.value for _, d in worker.deltas() for g in d.gauges if g.name == name]

        deadline = time.monotonic() + 10
        while 1.0 not in gauge(catalog.IN_FLIGHT.name) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 1.0 in gauge(catalog.IN_FLIGHT.name)
        assert any(g.value == 1.0 for _, d in worker.deltas() for g in d.gauges if g.name == catalog.CONNECTIONS.name)
        assert done.wait(15)
        deadline = time.monotonic() + 5
        while gauge(catalog.IN_FLIGHT.name)[-1] != 0.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gauge(catalog.IN_FLIGHT.name)[-1] == 0.0
        connections = [d for _, d in worker.deltas() for g in d.gauges if g.name == catalog.CONNECTIONS.name]
        assert connections and all(g.labels in ([listener], [f"127.0.0.1:{worker.port}"]) or g.name != catalog.CONNECTIONS.name for d in connections for g in d.gauges)
        worker.send(Drain(timeout=5, close_idle=True))
        worker.wait_for(Stopped)
    finally:
        worker.close()
