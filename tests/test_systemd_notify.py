"""systemd's notification protocol, as a real supervisor speaks it to a datagram socket the test binds:
READY=1 once the workers serve, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP,
STOPPING=1 at SIGTERM, WATCHDOG=1 pings while the loop runs; and the variables are not passed on."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from mock_providers import MockProvider
from relaytest import endpoint_config, wait_until

from supervisor.notify import Notifier


class NotifyListener:
    """A bound AF_UNIX datagram socket and the messages it received (each a dict of KEY=value lines)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path if not path.startswith("@") else "\0" + path[1:])
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def kinds(self) -> list[str]:
        """The messages as their first meaningful key (READY, RELOADING, STOPPING, WATCHDOG, STATUS)."""
        out = []
        for message in list(self.messages):
            for key in ("READY", "RELOADING", "STOPPING", "WATCHDOG"):
                if message.get(key) == "1":
                    out.append(key)
                    break
            else:
                out.append("STATUS")
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path):  # type: ignore[no-untyped-def]
    notify = NotifyListener(str(tmp_path / "notify.sock"))
    yield notify
    notify.close()


def test_ready_reloading_and_stopping_in_order_with_watchdog_pings(mock: MockProvider, start_relay, listener: NotifyListener) -> None:  # type: ignore[no-untyped-def]
    config = endpoint_config("oai", mock)
    env = {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000"}
    relay = start_relay(config, env=env, workers=2)
    assert wait_until(lambda: "READY" in listener.kinds(), 10), listener.messages
    ready = next(m for m in listener.messages if m.get("READY") == "1")
    assert ready["STATUS"].startswith("2 of 2 workers serving, config generation 1"), ready
    assert relay.logs().count("ready (pid") >= 2  # (READY=1 came once both workers were serving)
    assert wait_until(lambda: listener.kinds().count("WATCHDOG") >= 3, 5), listener.kinds()  # every 0.2 s

    relay.send_signal(signal.SIGHUP)
    assert wait_until(lambda: listener.kinds().count("READY") >= 2, 15), listener.kinds()
    reloading = [m for m in listener.messages if m.get("RELOADING") == "1"]
    assert len(reloading) == 1
    usec = int(reloading[0]["MONOTONIC_USEC"])
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60_000_000  # the same clock
    again = [m for m in listener.messages if m.get("READY") == "1"][1]
    assert "config generation 2" in again["STATUS"], again

    assert "systemd notification" not in relay.logs()  # (nothing failed)
    relay.stop(signal.SIGTERM)
    kinds = [kind for kind in listener.kinds() if kind != "WATCHDOG"]
    assert kinds == ["READY", "RELOADING", "READY", "STOPPING"], kinds


def test_the_workers_do_not_inherit_the_notify_socket(mock: MockProvider, start_relay, listener: NotifyListener) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock), env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "1000000"})
    assert wait_until(lambda: "READY" in listener.kinds(), 10)
    for pid in relay.worker_pids():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not any(entry.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_USEC=")) for entry in environ), pid


def test_a_rejected_reload_still_ends_with_ready(mock: MockProvider, start_relay, listener: NotifyListener, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock), env={"NOTIFY_SOCKET": listener.path})
    assert wait_until(lambda: "READY" in listener.kinds(), 10)
    relay.config_path.write_text("[server\nbroken = ")
    relay.send_signal(signal.SIGHUP)
    assert wait_until(lambda: listener.kinds().count("READY") >= 2, 15), listener.kinds()
    last = [m for m in listener.messages if m.get("READY") == "1"][-1]
    assert last["STATUS"].endswith("last reload rejected"), last


# -- the notifier alone ------------------------------------------------------------------------------


def test_the_environment_is_read_once_and_cleared() -> None:
    env = {"NOTIFY_SOCKET": "@llmrelay-test", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "x"}
    notifier = Notifier.from_environment(env)
    assert notifier.address == "@llmrelay-test" and notifier.watchdog_usec == 3_000_000
    assert env == {"OTHER": "x"}
    elsewhere = Notifier.from_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"})
    assert elsewhere.watchdog_usec == 0  # (the watchdog is another process's)
    assert not Notifier.from_environment({}).enabled


def test_an_abstract_socket_is_reached_and_a_missing_one_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    name = f"@llmrelay-notify-test-{os.getpid()}"
    listener = NotifyListener(name)
    try:
        Notifier(name).ready("fine")
        assert wait_until(lambda: listener.messages, 2) and listener.messages[0] == {"READY": "1", "STATUS": "fine"}
    finally:
        listener.close()
    gone = Notifier("/nonexistent/notify.sock")
    gone.ready("x")
    gone.stopping()  # (logged once, never raised)
    assert sum("systemd notification" in r.getMessage() for r in caplog.records) == 1
