"""The supervisor's `KeyRefresher` in one trio run, with stand-in workers: an ask runs the command and
every worker hears the result; an ask too soon after a run is answered at once, to the asker only; an
ask during a periodic run is answered by that run even when the value did not change; a new value goes
into the config in force, and a failing command changes nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from llmrelay.config import load_config_text
from llmrelay.config.resolved import RelayConfig
from llmrelay.control import KeyRefreshAsk, KeyUpdate
from supervisor.checks import ActiveChecks
from supervisor.health import HealthBoard, Update
from supervisor.key_refresh import KeyRefresher

pytestmark = pytest.mark.timeout(30)

# Prints the token file after a pause (so that a run is seen under way), or fails when asked to.
COMMAND = """\
import pathlib, sys, time
folder = pathlib.Path(sys.argv[1])
time.sleep(float((folder / "pause").read_text()))
if (folder / "fail").exists():
    sys.exit("no token today")
print((folder / "token").read_text())
"""


class StandInWorker:
    def __init__(self) -> None:
        self.ready = trio.Event()
        self.ready.set()
        self.received: list[KeyUpdate] = []

    async def send(self, message: KeyUpdate) -> bool:
        self.received.append(message)
        return True


class StandInTable:
    def __init__(self, config: RelayConfig, workers: list[StandInWorker]) -> None:
        self.config = config
        self.generation = 1
        self.workers = set(workers)


def refreshable_config(folder: Path, interval: float) -> RelayConfig:
    (folder / "command.py").write_text(COMMAND)
    (folder / "token").write_text("tok-1")
    (folder / "pause").write_text("0")
    source = f"$({sys.executable} {folder / 'command.py'} {folder})"
    text = (
        '[endpoints.c]\ntarget_base = "https://api.anthropic.com"\nkey_type = "oauth"\n'
        f'api_key = "{source}"\nrefresh_interval = {interval}\n'
    )
    return load_config_text(text, "test", environ={})


async def start(config: RelayConfig, workers: list[StandInWorker], nursery: trio.Nursery) -> tuple[KeyRefresher, StandInTable]:
    table = StandInTable(config, workers)
    board = HealthBoard(config)
    updates: list[Update] = []

    async def apply(update: Update) -> None:
        updates.append(update)

    refresher = KeyRefresher(table, board, ActiveChecks(board, apply, config), apply)  # type: ignore[arg-type]
    nursery.start_soon(refresher.run)
    await trio.sleep(0.05)
    return refresher, table


ASK = KeyRefreshAsk(generation=1, endpoint="c", upstream="c#0", key=0)


async def wait_for(predicate, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.02)


async def test_an_ask_runs_the_command_and_every_worker_hears_the_new_value(tmp_path: Path) -> None:
    config = refreshable_config(tmp_path, 3600)
    asker, other = StandInWorker(), StandInWorker()
    async with trio.open_nursery() as nursery:
        refresher, table = await start(config, [asker, other], nursery)
        (tmp_path / "token").write_text("tok-2")
        await refresher.ask(asker, ASK)  # type: ignore[arg-type]
        await wait_for(lambda: asker.received and other.received)
        for worker in (asker, other):
            assert [(u.value, u.changed, u.generation, u.refreshes) for u in worker.received] == [("tok-2", True, 1, 1)]
        assert table.config.endpoints[0].upstreams[0].api_keys[0].key == "tok-2"  # (workers started later get it)

        # Too soon for another run: the asker alone hears the current value at once.
        (tmp_path / "token").write_text("tok-3")
        await refresher.ask(asker, ASK)  # type: ignore[arg-type]
        assert [(u.value, u.changed) for u in asker.received[1:]] == [("tok-2", False)]
        assert len(other.received) == 1
        nursery.cancel_scope.cancel()


async def test_an_ask_during_a_periodic_run_is_answered_by_it_even_unchanged(tmp_path: Path) -> None:
    config = refreshable_config(tmp_path, 1)
    (tmp_path / "pause").write_text("0.6")
    worker = StandInWorker()
    async with trio.open_nursery() as nursery:
        refresher, _ = await start(config, [worker], nursery)
        await trio.sleep(1.2)  # the periodic run started at about 1 s and runs for 0.6 s
        await refresher.ask(worker, ASK)  # type: ignore[arg-type]
        assert worker.received == []  # (not answered at once: the run under way answers)
        await wait_for(lambda: worker.received, seconds=5)
        assert [(u.value, u.changed) for u in worker.received] == [("tok-1", False)]
        nursery.cancel_scope.cancel()


async def test_a_failing_command_keeps_the_value_and_still_answers_the_ask(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = refreshable_config(tmp_path, 3600)
    (tmp_path / "fail").write_text("")
    worker = StandInWorker()
    async with trio.open_nursery() as nursery:
        refresher, table = await start(config, [worker], nursery)
        await refresher.ask(worker, ASK)  # type: ignore[arg-type]
        await wait_for(lambda: worker.received)
        assert [(u.value, u.changed) for u in worker.received] == [("tok-1", False)]
        assert table.config.endpoints[0].upstreams[0].api_keys[0].key == "tok-1"
        nursery.cancel_scope.cancel()
    assert "re-running its command failed" in caplog.text and "no token today" in caplog.text
    assert "tok-1" not in caplog.text


async def test_an_ask_of_another_generation_is_answered_without_a_run(tmp_path: Path) -> None:
    config = refreshable_config(tmp_path, 3600)
    worker = StandInWorker()
    async with trio.open_nursery() as nursery:
        refresher, _ = await start(config, [worker], nursery)
        (tmp_path / "token").write_text("tok-2")
        await refresher.ask(worker, KeyRefreshAsk(generation=7, endpoint="c", upstream="c#0", key=0))  # type: ignore[arg-type]
        assert [(u.generation, u.value, u.changed) for u in worker.received] == [(7, "", False)]
        nursery.cancel_scope.cancel()


async def test_a_value_the_provider_refused_is_tried_again_sooner_than_its_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("supervisor.key_refresh.ASK_INTERVAL", 0.5)
    config = refreshable_config(tmp_path, 3600)
    worker = StandInWorker()
    async with trio.open_nursery() as nursery:
        refresher, _ = await start(config, [worker], nursery)
        await trio.sleep(0.6)
        await refresher.ask(worker, ASK)  # the provider refused tok-1, and the command still prints it
        await wait_for(lambda: worker.received)
        assert [(u.value, u.changed) for u in worker.received] == [("tok-1", False)]
        (tmp_path / "token").write_text("tok-2")  # the helper renews it a little later
        await wait_for(lambda: len(worker.received) == 2, seconds=5)  # (not 3600 s: within ASK_INTERVAL)
        assert [(u.value, u.changed) for u in worker.received[1:]] == [("tok-2", True)]
        await trio.sleep(1.2)
        assert len(worker.received) == 2  # back to its interval: no more runs, no more updates
        nursery.cancel_scope.cancel()
