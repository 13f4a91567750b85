"""The supervisor and its workers when things go wrong: reloads a worker cannot apply, boot failures,
slots without a worker, a second `serve` on the same port or pid file, signals during a stop, a
`llmrelay` folder in the working directory, the outcome of `llmrelay reload`/`restart`, slow key
commands on SIGHUP, removed slots, and `/health` as a readiness probe. Real processes throughout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import certifi
import httpx
import pytest

from mock_providers import MockProvider
from relaytest import BackgroundStream, endpoint_config, free_port

LLMRELAY_SCRIPT = Path(sys.executable).parent / "llmrelay"


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def wait_for_log(relay, text: str, count: int = 1, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    if not wait_until(lambda: relay.logs().count(text) >= count, timeout):
        raise AssertionError(f"{text!r} x{count} not logged within {timeout} s:\n{relay.logs()[-4000:]}")


def cli(*args: str, cwd: Path | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LLMRELAY_PID_FILE", "CONFIG_PATH", "PORT")}
    return subprocess.run(
        [sys.executable, "-m", "llmrelay", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


@pytest.fixture(autouse=True)
def _no_pid_file_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMRELAY_PID_FILE", raising=False)


# -- boot failures, backoff, and the 503 stand-in ----------------------------------------------------------


def test_a_slot_whose_workers_cannot_boot_backs_off_and_answers_503(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca_file = tmp_path / "ca.pem"
    shutil.copy(certifi.where(), ca_file)
    config = endpoint_config("oai", mock) + f'[endpoints.tls]\ntarget_base = "https://127.0.0.1:9/v1"\nca_file = "{ca_file}"\n'
    relay = start_relay(config)
    ca_file.unlink()
    ca_file.mkdir()  # valid when the config was loaded; a directory when the next worker boots
    victim = relay.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for_log(relay, "failed to boot (exited with status 3 (boot failed)): IsADirectoryError")
    wait_for_log(relay, "answering 503")
    started = time.monotonic()
    response = httpx.get(relay.url("/oai/v1/models"), timeout=5)
    assert response.status_code == 503 and time.monotonic() - started < 2
    assert response.json()["error"]["code"] == "no_worker"
    time.sleep(2.5)
    failures = relay.logs().count("failed to boot")
    assert 2 <= failures <= 4, relay.logs()  # 0.5 s, 1 s, 2 s: backed off, not respawned at full speed
    assert "respawning slot 0 in 1 s" in relay.logs()
    ca_file.rmdir()
    shutil.copy(certifi.where(), ca_file)
    assert wait_until(lambda: "no longer answering 503" in relay.logs(), 15), relay.logs()[-3000:]
    assert httpx.get(relay.url("/oai/v1/models"), timeout=5).status_code == 200


# -- a reload that workers cannot apply ----------------------------------------------------------------------

SITECUSTOMIZE = """
import os, sys
if "--control-fd" in sys.argv:  # a worker process
    slot = sys.argv[sys.argv.index("--slot") + 1] if "--slot" in sys.argv else ""
    if slot in os.environ.get("REJECT_SLOTS", "").split(","):
        import llmrelay.relay.runtime as runtime
        original = runtime.RelayRuntime.__init__
        def init(self, config, generation):
            if any(e.name == "unappliable" for e in config.endpoints):
                raise FileNotFoundError(2, "No such file or directory", "/gone/ca.pem")
            original(self, config, generation)
        runtime.RelayRuntime.__init__ = init
"""


def test_a_reload_one_worker_cannot_apply_is_rolled_back_and_reload_exits_1(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Workers of slot 1 fail to build the runtime of any config with an endpoint named `unappliable`
    # (what a CA file removed between validation and application does), those of slot 0 apply it.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pid_file = tmp_path / "relay.pid"
    server = "[server]\nheartbeat_interval = 0.5\n"
    relay = start_relay(
        server + endpoint_config("oai", mock),
        "--pid-file",
        str(pid_file),
        workers=2,
        env={"PYTHONPATH": str(hooks), "REJECT_SLOTS": "1"},
    )
    assert relay.config_path is not None
    relay.config_path.write_text(server + endpoint_config("oai", mock) + endpoint_config("unappliable", mock))
    result = cli("reload", "--pid-file", str(pid_file))
    assert result.returncode == 1, result
    assert "reload rejected: 1 of 2 workers cannot apply it; still serving generation 3" in result.stderr
    assert "(slot 1): FileNotFoundError: [Errno 2] No such file or directory: '/gone/ca.pem'" in result.stderr
    assert "rolled back as generation 3" in relay.logs()
    time.sleep(1.0)  # the next health broadcast
    for _ in range(20):
        with httpx.Client(timeout=5) as client:  # new connections: both workers
            assert client.get(relay.url("/unappliable/v1/models")).status_code == 404
            assert client.get(relay.url("/oai/v1/models")).status_code == 200
            health = client.get(relay.url("/health")).json()
            assert health["generation"] == 3
            assert {w["generation"] for w in health["workers"]} == {3}, health["workers"]
    # A worker that dies now is respawned on the config that every worker serves.
    os.kill(relay.worker_pids()[1], signal.SIGKILL)
    wait_for_log(relay, "ready, version", 3)
    assert "failed to boot" not in relay.logs()
    relay.config_path.write_text(server + endpoint_config("oai", mock) + endpoint_config("two", mock))
    result = cli("reload", "--pid-file", str(pid_file))
    assert result.returncode == 0, result
    assert result.stdout.strip().endswith("reload applied: generation 4: 1 endpoints added, 0 removed, 0 changed")


# -- a second serve ------------------------------------------------------------------------------------------


def test_a_second_serve_on_the_same_port_exits_3(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    first = start_relay(endpoint_config("oai", mock), workers=2)
    second = start_relay(endpoint_config("oai", mock), port=first.port, wait=False)
    assert second.process.wait(20) == 3
    assert "address already in use" in second.logs()
    assert "started worker" not in second.logs()
    pids = set()
    for _ in range(30):  # every connection is the first relay's
        with httpx.Client(timeout=5) as client:
            pids.add(int(client.get(first.url("/health")).headers["x-llmrelay-worker"]))
    assert pids <= set(first.worker_pids())


def test_a_port_held_by_another_reuseport_socket_is_in_use(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        relay = start_relay(endpoint_config("oai", mock), port=other.getsockname()[1], wait=False)
        assert relay.process.wait(20) == 3
    assert "address already in use" in relay.logs()


def test_a_second_serve_with_the_same_pid_file_exits_with_a_clear_message(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pid_file = tmp_path / "relay.pid"
    first = start_relay(endpoint_config("oai", mock), "--pid-file", str(pid_file))
    second = start_relay(endpoint_config("oai", mock), "--pid-file", str(pid_file), wait=False)
    assert second.process.wait(20) == 3
    assert f"pid file {pid_file} is held by a running llmrelay supervisor (pid {first.pid})" in second.logs()
    assert int(pid_file.read_text()) == first.pid
    # An unlocked copy naming a live llmrelay is not overwritten either.
    copy = tmp_path / "copy.pid"
    copy.write_text(f"{first.pid}\n")
    third = start_relay(endpoint_config("oai", mock), "--pid-file", str(copy), wait=False)
    assert third.process.wait(20) == 3
    assert f"names process {first.pid}, a live llmrelay" in third.logs()
    # A stale one (its process is gone) is taken over.
    copy.write_text("999999\n")
    fourth = start_relay(endpoint_config("oai", mock), "--pid-file", str(copy))
    assert int(copy.read_text()) == fourth.pid
    assert first.stop() == 0 and not pid_file.exists()


# -- signals during a graceful stop ---------------------------------------------------------------------


@pytest.mark.parametrize("second", [signal.SIGQUIT, signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_graceful_stop_stops_at_once(mock: MockProvider, start_relay, second: int) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock), workers=2)  # drain_timeout: the default 600 s
    workers = relay.worker_pids()
    stream = BackgroundStream(relay, delay=0.5, events=60, timeout=40)
    assert stream.started.wait(10)
    relay.send_signal(signal.SIGINT)
    wait_for_log(relay, "graceful stop: draining")
    time.sleep(0.3)
    assert relay.process.poll() is None  # the stream holds the drain
    relay.send_signal(second)
    started = time.monotonic()
    relay.process.wait(5)
    assert time.monotonic() - started < 3
    assert wait_until(lambda: not any(os.path.exists(f"/proc/{pid}/stat") and _alive(pid) for pid in workers), 5)
    if second == signal.SIGQUIT:
        assert "immediate stop" in relay.logs()
    else:
        assert f"second {signal.Signals(second).name} during graceful stop: stopping now" in relay.logs()
    stream.join(10)


def test_other_signals_during_a_graceful_stop_are_ignored(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock))
    stream = BackgroundStream(relay, delay=0.3, events=8)
    events = stream.events
    assert wait_until(lambda: bool(events) or len(mock.requests) > 0, 10)
    time.sleep(0.5)
    relay.send_signal(signal.SIGTERM)
    wait_for_log(relay, "graceful stop: draining")
    for signum in (signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP):
        relay.send_signal(signum)
        time.sleep(0.1)
    stream.join(20)
    assert relay.process.wait(20) == 0
    assert events and events[-1] == "data: [DONE]"
    assert "rolling replacement ignored: the supervisor is stopping" in relay.logs()
    assert "Traceback" not in relay.logs()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# -- the working directory is not on the workers' import path -------------------------------------------


def test_a_llmrelay_folder_in_the_working_directory_does_not_break_the_workers(mock: MockProvider, tmp_path: Path) -> None:
    workdir = tmp_path / "here"
    (workdir / "llmrelay" / "worker").mkdir(parents=True)
    (workdir / "llmrelay" / "__init__.py").write_text("")  # no __version__
    (workdir / "llmrelay" / "worker" / "__init__.py").write_text("")
    (workdir / "llmrelay.toml").write_text(endpoint_config("oai", mock))
    os.chmod(workdir / "llmrelay.toml", 0o600)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "PORT", "LLMRELAY_PID_FILE")}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(LLMRELAY_SCRIPT), "serve", "--port", str(port)], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        def serving() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/oai/v1/models", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(serving, 20), log_path.read_text()
        assert "failed to boot" not in log_path.read_text()
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(20)


# -- reload and restart report their outcome; the default pid file ------------------------------------------


def test_reload_and_restart_wait_for_the_outcome(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock), workers=2)  # no --pid-file: ./llmrelay.pid
    pid_file = tmp_path / "llmrelay.pid"
    assert int(pid_file.read_text()) == relay.pid
    result = cli("reload", cwd=tmp_path)
    assert result.returncode == 0, result
    assert "reload applied: generation 2: 0 endpoints added, 0 removed, 0 changed" in result.stdout
    assert relay.config_path is not None
    relay.config_path.write_text("[endpoints.a]\ntarget_base = 7\n")
    result = cli("reload", cwd=tmp_path)
    assert result.returncode == 1
    assert "reload rejected: 1 error(s) in" in result.stderr and "still serving generation 2" in result.stderr
    assert "endpoints.a.target_base" in result.stderr
    status = json.loads((tmp_path / "llmrelay.pid.status").read_text())
    assert status["pid"] == relay.pid and status["reload"]["outcome"] == "rejected"
    before = set(relay.worker_pids())
    result = cli("restart", cwd=tmp_path)
    assert result.returncode == 0, result
    assert "restart done: 2 workers replaced" in result.stdout
    assert not set(relay.worker_pids()) & before
    assert relay.stop() == 0
    assert not pid_file.exists() and not (tmp_path / "llmrelay.pid.status").exists()
    result = cli("reload", cwd=tmp_path)
    assert result.returncode == 1 and "no pid file" in result.stderr


def test_reload_with_a_stale_pid_file_signals_nobody(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "llmrelay.pid").write_text(f"{sleeper.pid}\n")  # a live process, not a supervisor
        result = cli("reload", cwd=tmp_path)
        assert result.returncode == 1 and "stale pid file" in result.stderr
        assert sleeper.poll() is None  # SIGHUP would have killed it
    finally:
        sleeper.kill()
        sleeper.wait(5)


# -- a slow key command on SIGHUP --------------------------------------------------------------------------


def test_a_slow_key_command_on_sighup_leaves_the_supervisor_responsive(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "slow"
    script = tmp_path / "key.sh"
    script.write_text(f"#!/bin/sh\nif [ -e {marker} ]; then sleep 5; fi\necho sk-from-command\n")
    script.chmod(0o700)
    relay = start_relay(endpoint_config("oai", mock, api_key=f"$({script})", auth_keys=["relay-key"]), workers=1)
    marker.touch()
    relay.send_signal(signal.SIGHUP)
    wait_for_log(relay, "received SIGHUP")
    victim = relay.worker_pids()[0]
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: relay.logs().count("ready, version") >= 2, 5)
    assert time.monotonic() - killed < 2.0, "the respawn waited for the key command"
    relay.send_signal(signal.SIGTTIN)
    sent = time.monotonic()
    wait_for_log(relay, "worker count 1 -> 2", timeout=10)
    assert time.monotonic() - sent < 2.0, "SIGTTIN waited for the key command"
    wait_for_log(relay, "reload ok", timeout=15)


# -- removed slots ---------------------------------------------------------------------------------------------


def test_a_removed_slot_is_never_respawned(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock), workers=2)
    removed = relay.worker_pids()[1]
    relay.send_signal(signal.SIGTTOU)
    wait_for_log(relay, "worker count 2 -> 1")
    wait_for_log(relay, f"worker {removed} (slot 1) exited")
    time.sleep(1.0)
    logs = relay.logs()
    assert "respawning slot 1" not in logs
    assert "failed to boot" not in logs
    assert relay.worker_pids() == [p for p in relay.worker_pids() if p != removed] and len(relay.worker_pids()) == 1


# -- /health as a readiness probe ------------------------------------------------------------------------


def test_health_answers_503_when_an_endpoint_has_nothing_usable(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    dead = f'[endpoints.dead]\ntarget_base = "http://127.0.0.1:{free_port()}/v1"\nprovider = "openai"\n'
    relay = start_relay("[server]\nheartbeat_interval = 0.3\n" + endpoint_config("oai", mock) + dead)
    assert httpx.get(relay.url("/health"), timeout=5).json()["status"] == "ok"
    # One failure: the upstream is still usable (it is tried), the relay is degraded but ready.
    assert httpx.post(relay.url("/dead/v1/chat/completions"), json={}, timeout=5).status_code == 502
    assert wait_until(lambda: httpx.get(relay.url("/health"), timeout=5).json()["status"] == "degraded", 5)
    assert httpx.get(relay.url("/health"), timeout=5).status_code == 200
    for _ in range(2):
        assert httpx.post(relay.url("/dead/v1/chat/completions"), json={}, timeout=5).status_code == 502
    wait_for_log(relay, "upstream dead/dead#0 ejected for 1 s: 3 failures in a row")
    # Past the first (1 s) ejection it is half-open: usable for one probe, the relay degraded but ready.
    assert wait_until(lambda: httpx.get(relay.url("/health"), timeout=5).status_code == 200, 5)
    body = httpx.get(relay.url("/health"), timeout=5).json()
    assert body["status"] == "degraded" and body["endpoints"]["dead"]["usable"] is True
    # The probe fails: ejected again, twice as long, and the relay says it cannot serve every route.
    assert httpx.post(relay.url("/dead/v1/chat/completions"), json={}, timeout=5).status_code == 502
    wait_for_log(relay, "upstream dead/dead#0 ejected for 2 s")
    response = httpx.get(relay.url("/health"), timeout=5)
    body = response.json()
    assert response.status_code == 503 and body["status"] == "failing"
    assert body["endpoints"]["dead"]["usable"] is False
    assert body["endpoints"]["dead"]["upstreams"]["dead#0"]["state"] == "ejected"
    assert body["endpoints"]["oai"]["usable"] is True
    assert httpx.get(relay.url("/health?endpoint=dead"), timeout=5).status_code == 503
    assert httpx.get(relay.url("/health?endpoint=oai"), timeout=5).status_code == 200
    assert httpx.get(relay.url("/health?endpoint=nosuch"), timeout=5).status_code == 404
    # While ejected, a request is answered at once: 503 in the provider's shape, with Retry-After.
    refused = httpx.post(relay.url("/dead/v1/chat/completions"), json={}, timeout=5)
    assert refused.status_code == 503 and 1 <= int(refused.headers["retry-after"]) <= 2
    assert refused.json()["error"]["type"] == "service_unavailable"


def test_start_up_line_says_worker_in_the_singular(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock))
    assert "with 1 worker (config:" in relay.logs()
