"""The supervisor's shared health board, sans-IO (`supervisor.health`): passive reports through a
breaker per upstream, key cool-downs and disables, active-check verdicts, a reload, and the table
every worker decides from."""

from __future__ import annotations

import logging

from llmrelay.config import load_config_text
from llmrelay.config.resolved import RelayConfig
from llmrelay.control import KeyEvent, UpstreamEvent, UpstreamHealth
from supervisor.breaker import FIRST_COOLDOWN, MAX_COOLDOWN
from supervisor.health import ERROR_LIMIT, HealthBoard, Update

KEY_A = "sk-alpha-7d1f0a9c3b5e"
KEY_B = "sk-bravo-2c8e6b4a0f1d"

CHAT = f"""
[endpoints.chat]
provider = "openai"

[[endpoints.chat.upstreams]]
name = "openai-us"
target_base = "https://us.example.com/v1"
api_keys = [{{ key = "{KEY_A}", name = "main" }}, {{ key = "{KEY_B}" }}]

[[endpoints.chat.upstreams]]
name = "openai-eu"
target_base = "https://eu.example.com/v1"
health_check = {{ healthy_threshold = 2, unhealthy_threshold = 3 }}

[[endpoints.chat.upstreams]]
name = "backup"
target_base = "https://backup.example.com/v1"
fallback = true
"""


def config(text: str = CHAT) -> RelayConfig:
    return load_config_text(text, "test", environ={})


def fail(board: HealthBoard, upstream: str, now: float, reason: str = "connect refused") -> Update:
    return board.observe(UpstreamEvent("chat", upstream, False, reason), now)


def succeed(board: HealthBoard, upstream: str, now: float) -> Update:
    return board.observe(UpstreamEvent("chat", upstream, True), now)


def check(board: HealthBoard, upstream: str, ok: bool, now: float, error: str = "connect refused") -> Update:
    return board.check_result("chat", upstream, ok, 12.5, "" if ok else error, now)


def health(board: HealthBoard, upstream: str, now: float) -> UpstreamHealth:
    return board.table(1, [], now).endpoints["chat"].upstreams[upstream]


def texts(update: Update) -> list[str]:
    return [line.text for line in update.lines]


def test_the_threshold_ejects_once_with_one_line_and_a_success_recovers() -> None:
    board = HealthBoard(config())
    first = fail(board, "openai-us", 10.0)
    assert first.changed and not first.lines  # the table now shows failures: workers report a success
    second = fail(board, "openai-us", 10.1)
    assert not second.changed and not second.lines
    assert health(board, "openai-us", 10.1).state == "ok"
    ejected = fail(board, "openai-us", 10.2, "status 503")
    assert ejected.changed
    assert texts(ejected) == ["upstream chat/openai-us ejected for 1 s: 3 failures in a row, last: status 503"]
    assert ejected.lines[0].level == logging.WARNING
    row = health(board, "openai-us", 10.3)
    assert (row.state, row.consecutive_failures, row.last_error) == ("ejected", 3, "status 503")
    assert row.ejected_until == 10.2 + FIRST_COOLDOWN
    recovered = succeed(board, "openai-us", 11.5)
    assert recovered.changed and texts(recovered) == ["upstream chat/openai-us recovered"]
    assert recovered.lines[0].level == logging.INFO
    row = health(board, "openai-us", 11.5)
    assert (row.state, row.consecutive_failures, row.ejected_until) == ("ok", 0, 0.0)
    assert row.last_error == "status 503"  # the last error stays on show
    assert succeed(board, "openai-us", 11.6) == Update()  # nothing to change: no broadcast


def test_a_success_between_failures_resets_the_count_and_is_broadcast_once() -> None:
    board = HealthBoard(config())
    fail(board, "openai-us", 1.0)
    fail(board, "openai-us", 1.1)
    update = succeed(board, "openai-us", 1.2)
    assert update.changed and not update.lines  # the table no longer shows failures
    fail(board, "openai-us", 1.3)
    fail(board, "openai-us", 1.4)
    assert health(board, "openai-us", 1.4).state == "ok"


def test_the_ejection_half_opens_and_each_failed_probe_doubles_it_up_to_the_cap() -> None:
    board = HealthBoard(config())
    now = 0.0
    for _ in range(3):
        fail(board, "openai-us", now)
    lengths = []
    for _ in range(8):
        row = health(board, "openai-us", now)
        now = row.ejected_until  # past its deadline: the next request is a probe
        assert health(board, "openai-us", now).state == "ejected"  # (until a success)
        update = fail(board, "openai-us", now, "reset")
        assert len(update.lines) == 1 and update.changed
        lengths.append(health(board, "openai-us", now).ejected_until - now)
    assert lengths == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert max(lengths) == MAX_COOLDOWN
    assert texts(update) == ["upstream chat/openai-us ejected for 60 s: 11 failures in a row, last: reset"]


def test_failures_while_ejected_extend_to_the_later_deadline_without_a_line() -> None:
    board = HealthBoard(config())
    for now in (5.0, 5.1, 5.2):
        fail(board, "openai-us", now)
    assert health(board, "openai-us", 5.2).ejected_until == 6.2
    late = fail(board, "openai-us", 5.9)  # a request that was under way when it was ejected
    assert late.changed and not late.lines
    assert health(board, "openai-us", 5.9).ejected_until == 6.9
    assert not fail(board, "openai-us", 5.3).changed  # reported late: never shortens, nothing changes
    assert health(board, "openai-us", 6.0).ejected_until == 6.9


def test_twenty_five_failures_in_a_row_leave_it_ejected() -> None:
    board = HealthBoard(config())
    lines = 0
    now = 0.0
    for _ in range(25):
        lines += len(fail(board, "openai-us", now, "status 500").lines)
        now += 0.01
    assert lines == 1
    row = health(board, "openai-us", now)
    assert row.state == "ejected" and row.ejected_until > now and row.consecutive_failures == 25


def test_a_fallback_upstream_is_ejected_like_any_other() -> None:
    board = HealthBoard(config())
    for now in (1.0, 1.1, 1.2):
        update = fail(board, "backup", now)
    assert texts(update) == ["upstream chat/backup ejected for 1 s: 3 failures in a row, last: connect refused"]
    assert health(board, "backup", 1.3).state == "ejected"
    assert health(board, "openai-us", 1.3).state == "ok"


def test_the_check_verdict_follows_its_thresholds_both_ways() -> None:
    board = HealthBoard(config())
    row = health(board, "openai-eu", 0.0)
    assert row.checked and row.check_ok and row.last_check == 0.0
    assert not health(board, "openai-us", 0.0).checked
    assert check(board, "openai-eu", False, 1.0) == Update()
    assert check(board, "openai-eu", False, 2.0) == Update()
    unhealthy = check(board, "openai-eu", False, 3.0, "cannot connect to the upstream: Connection refused")
    assert unhealthy.changed and unhealthy.lines[0].level == logging.WARNING
    assert texts(unhealthy) == [
        "upstream chat/openai-eu unhealthy: 3 failed checks, last: cannot connect to the upstream: Connection refused"
    ]
    row = health(board, "openai-eu", 3.0)
    assert (row.state, row.check_ok, row.last_check, row.last_check_ms) == ("unhealthy", False, 3.0, 12.5)
    assert row.last_check_error == "cannot connect to the upstream: Connection refused"
    assert check(board, "openai-eu", False, 4.0) == Update()  # logged once
    assert check(board, "openai-eu", True, 5.0) == Update()
    assert health(board, "openai-eu", 5.0).last_check_error == ""
    assert check(board, "openai-eu", False, 6.0) == Update()  # the passes in a row start over
    check(board, "openai-eu", True, 7.0)
    healthy = check(board, "openai-eu", True, 8.0)
    assert healthy.changed and texts(healthy) == ["upstream chat/openai-eu healthy again: 2 passed checks"]
    assert healthy.lines[0].level == logging.INFO
    assert health(board, "openai-eu", 8.0).state == "ok"


def test_a_passing_check_ends_an_ejection_but_not_a_count_of_passive_failures() -> None:
    board = HealthBoard(config())
    for now in (1.0, 1.1, 1.2):
        fail(board, "openai-eu", now)
    assert health(board, "openai-eu", 1.3).state == "ejected"
    update = check(board, "openai-eu", True, 1.4)
    assert update.changed and texts(update) == ["upstream chat/openai-eu recovered: its health check passed"]
    assert health(board, "openai-eu", 1.4).ejected_until == 0.0
    fail(board, "openai-eu", 2.0)
    assert check(board, "openai-eu", True, 2.1) == Update()
    assert health(board, "openai-eu", 2.1).consecutive_failures == 1


def test_a_failing_check_does_not_count_as_a_passive_failure() -> None:
    board = HealthBoard(config())
    for now in range(5):
        check(board, "openai-eu", False, float(now))
    row = health(board, "openai-eu", 5.0)
    assert row.consecutive_failures == 0 and row.ejected_until == 0.0


def test_a_429_cools_the_key_to_the_later_deadline_logged_at_info_once() -> None:
    board = HealthBoard(config())
    first = board.key_event(KeyEvent("chat", "openai-us", 0, 429, 1, until=130.0), 100.0)
    assert first.changed and first.lines[0].level == logging.INFO
    assert texts(first) == ["upstream chat/openai-us key main cooling down for 30 s: the provider answered 429"]
    assert board.key_event(KeyEvent("chat", "openai-us", 0, 429, 1, until=120.0), 101.0) == Update()
    later = board.key_event(KeyEvent("chat", "openai-us", 0, 429, 1, until=140.0), 102.0)
    assert later.changed and not later.lines  # extended, already cooling: no new line
    key = health(board, "openai-us", 103.0).keys[0]
    assert (key.name, key.state, key.cooling_until, key.last_status) == ("main", "cooling", 140.0, 429)
    assert health(board, "openai-us", 103.0).state == "ok"  # the other key still serves
    assert health(board, "openai-us", 140.0).keys[0].state == "ok"
    again = board.key_event(KeyEvent("chat", "openai-us", 0, 429, 1, until=150.0), 141.0)
    assert len(again.lines) == 1  # a new cool-down once the last one is over


def test_a_disabled_key_is_logged_once_and_no_line_ever_holds_a_key_value() -> None:
    board = HealthBoard(config())
    lines: list[str] = []
    for _ in range(3):
        update = board.key_event(KeyEvent("chat", "openai-us", 1, 401, 1, disabled=True), 5.0)
        lines += texts(update)
    assert lines == ["upstream chat/openai-us key 1 disabled until reload: the provider answered 401"]
    both = board.key_event(KeyEvent("chat", "openai-us", 0, 403, 1, disabled=True), 6.0)
    lines += texts(both)
    assert texts(both) == [
        "upstream chat/openai-us key main disabled until reload: the provider answered 403",
        "upstream chat/openai-us has no usable key left: all disabled until reload",
    ]
    assert all(line.level == logging.WARNING for line in both.lines)
    assert board.disabled_keys("chat", "openai-us") == {0, 1}
    assert not any(KEY_A in line or KEY_B in line for line in lines)
    assert KEY_A not in repr(board.__dict__) and KEY_B not in repr(board.__dict__)
    row = health(board, "openai-us", 7.0)
    assert row.state == "disabled" and [k.state for k in row.keys] == ["disabled", "disabled"]
    assert [k.last_status for k in row.keys] == [403, 401]
    assert board.key_event(KeyEvent("chat", "openai-us", 0, 429, 1, until=99.0), 8.0) == Update()  # disabled stays


def test_events_about_unknown_upstreams_or_keys_are_ignored() -> None:
    board = HealthBoard(config())
    assert board.observe(UpstreamEvent("gone", "x", False, "reset"), 1.0) == Update()
    assert board.observe(UpstreamEvent("chat", "gone", False, "reset"), 1.0) == Update()
    assert board.key_event(KeyEvent("chat", "openai-us", 7, 401, 1, disabled=True), 1.0) == Update()
    assert board.key_event(KeyEvent("chat", "openai-eu", 0, 401, 1, disabled=True), 1.0) == Update()  # no keys
    assert board.check_result("chat", "openai-us", False, 1.0, "x", 1.0) == Update()  # no check of its own


def test_error_texts_are_capped_and_kept_on_one_line() -> None:
    board = HealthBoard(config())
    for now in (1.0, 1.1, 1.2):
        update = fail(board, "openai-us", now, "bad\r\nline" + "x" * 1000)
    assert "\n" not in update.lines[0].text and "\\x0d\\x0a" in update.lines[0].text
    assert len(health(board, "openai-us", 1.2).last_error) <= ERROR_LIMIT + 10


def test_the_table_state_precedence() -> None:
    board = HealthBoard(config())
    assert health(board, "openai-us", 0.0).state == "ok"
    board.key_event(KeyEvent("chat", "openai-us", 0, 429, 1, until=50.0), 0.0)
    board.key_event(KeyEvent("chat", "openai-us", 1, 429, 1, until=60.0), 0.0)
    assert health(board, "openai-us", 1.0).state == "cooling"
    assert health(board, "openai-us", 55.0).state == "ok"  # key main's cool-down is over
    board.key_event(KeyEvent("chat", "openai-us", 1, 401, 1, disabled=True), 1.0)
    assert health(board, "openai-us", 2.0).state == "cooling"  # one cooling, one disabled
    board.key_event(KeyEvent("chat", "openai-us", 0, 401, 1, disabled=True), 2.0)
    assert health(board, "openai-us", 3.0).state == "disabled"
    for now in (3.0, 3.1, 3.2):
        fail(board, "openai-us", now)
    assert health(board, "openai-us", 3.3).state == "ejected"  # ejected beats disabled
    assert health(board, "openai-us", 100.0).state == "ejected"  # half-open until a success
    for now in (4.0, 4.1, 4.2):
        fail(board, "openai-eu", now)
        check(board, "openai-eu", False, now)
    assert health(board, "openai-eu", 4.3).state == "unhealthy"  # unhealthy beats ejected


def test_a_key_of_weight_zero_does_not_keep_an_upstream_usable() -> None:
    text = CHAT.replace('{ key = "' + KEY_B + '" }', '{ key = "' + KEY_B + '", weight = 0 }')
    board = HealthBoard(config(text))
    board.key_event(KeyEvent("chat", "openai-us", 0, 401, 1, disabled=True), 1.0)
    assert health(board, "openai-us", 1.0).state == "disabled"


def test_a_reload_keeps_what_is_unchanged_and_forgets_the_rest() -> None:
    board = HealthBoard(config())
    for name in ("openai-us", "openai-eu", "backup"):
        for now in (1.0, 1.1, 1.2):
            fail(board, name, now)
    for now in (1.0, 2.0, 3.0):
        check(board, "openai-eu", False, now)
    board.key_event(KeyEvent("chat", "openai-us", 0, 429, 1, until=90.0), 1.0)
    board.key_event(KeyEvent("chat", "openai-us", 1, 429, 1, until=95.0), 1.0)
    board.key_event(KeyEvent("chat", "openai-us", 1, 401, 1, disabled=True), 1.0)
    reloaded = (
        CHAT.replace(f'{{ key = "{KEY_B}" }}', '{ key = "sk-charlie-new" }')  # key 1 replaced
        .replace("https://backup.example.com/v1", "https://backup2.example.com/v1")  # a new target
        + '\n[endpoints.extra]\ntarget_base = "https://x.example.com"\n'
    )
    board.sync(config(reloaded))
    us, eu, backup = (health(board, name, 4.0) for name in ("openai-us", "openai-eu", "backup"))
    assert us.state == "ejected" and us.consecutive_failures == 3  # same endpoint, name, target
    assert [(k.state, k.cooling_until) for k in us.keys] == [("cooling", 90.0), ("ok", 0.0)]
    assert eu.state == "unhealthy" and not eu.check_ok and eu.last_check == 3.0
    assert backup == UpstreamHealth()  # its target changed: a new upstream
    assert board.table(2, [], 4.0).endpoints["extra"].upstreams["extra#0"] == UpstreamHealth()
    board.sync(config(CHAT))
    assert set(board.table(3, [], 4.0).endpoints) == {"chat"}
    assert health(board, "openai-us", 4.0).keys[1].state == "ok"  # key B is back: its disable was reset


def test_a_reload_resets_disables_of_an_unchanged_key_and_follows_a_removed_check() -> None:
    board = HealthBoard(config())
    board.key_event(KeyEvent("chat", "openai-us", 0, 401, 1, disabled=True), 1.0)
    for now in (1.0, 2.0, 3.0):
        check(board, "openai-eu", False, now)
    board.sync(config(CHAT.replace("health_check = { healthy_threshold = 2, unhealthy_threshold = 3 }", "")))
    assert health(board, "openai-us", 4.0).keys[0].state == "ok"
    eu = health(board, "openai-eu", 4.0)
    assert not eu.checked and eu.check_ok and eu.state == "ok" and eu.last_check_error == ""


def test_the_table_carries_generation_and_workers() -> None:
    table = HealthBoard(config()).table(7, [], 0.0)
    assert table.generation == 7 and table.workers == []
    assert set(table.endpoints["chat"].upstreams) == {"openai-us", "openai-eu", "backup"}
