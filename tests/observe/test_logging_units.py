"""Log shapes and outputs, in-process: the JSON and text formatters, a sink whose output blocks
(lines dropped and counted, never waited for), reopening after a rename; and what the access log
learns of a request (model, client address behind trusted proxies, relay key label)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from pathlib import Path

import pytest

from llmrelay.config.schema import ServerSection
from llmrelay.logs import configure_logging, dropped_lines, effective_format, flush_logs, reopen_log_files, shutdown_logging
from llmrelay.observe.logformat import JsonFormatter, TextFormatter
from llmrelay.observe.requestinfo import TrustedProxies, relay_key_label, request_model
from llmrelay.observe.sinks import LineSink, LogSetupError


def _record(msg: str, *args: object, fields: dict[str, object] | None = None) -> logging.LogRecord:
    record = logging.LogRecord("llmrelay.test", logging.WARNING, __file__, 1, msg, args, None)
    if fields is not None:
        record.fields = fields
    return record


def test_json_line_has_the_base_keys_and_the_fields() -> None:
    line = JsonFormatter().format(_record("%d lines\nand more", 3, fields={"endpoint": "oai", "pid": 1, "n": [1, 2]}))
    entry = json.loads(line)
    assert "\n" not in line
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    assert entry["level"] == "warning" and entry["logger"] == "llmrelay.test" and entry["pid"] == os.getpid()
    assert entry["msg"] == "3 lines\nand more" and entry["endpoint"] == "oai" and entry["n"] == [1, 2]


def test_json_line_of_an_exception_and_of_an_odd_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info())
    record.fields = {"path": Path("/tmp"), "raw": b"\xff"}
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exc"] and entry["path"] == "/tmp"


def test_text_line_appends_fields_quoted_when_needed() -> None:
    line = TextFormatter().format(_record("hello", fields={"a": 1, "b": "two words", "c": "x"}))
    assert line.endswith(' llmrelay.test: hello a=1 b="two words" c=x')


def test_the_config_decides_the_format_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRELAY_LOG_FORMAT", "json")
    assert effective_format(None) == "json" and effective_format("text") == "text"
    monkeypatch.setenv("LLMRELAY_LOG_FORMAT", "yaml")
    assert effective_format(None) == "text"


def test_a_blocked_output_drops_and_counts_instead_of_waiting() -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: a small pipe that nobody reads
    sink = LineSink("", max_lines=20)
    sink._fd = write_end
    sink.start()
    try:
        started = time.monotonic()
        for index in range(2000):
            sink.offer(f"line {index} ".encode() + b"x" * 200 + b"\n", "access")
        assert time.monotonic() - started < 0.5  # never waited for the pipe
        assert sink.dropped_by_stream["access"] > 1000
        dropped = sink.dropped
        text = b""
        deadline = time.monotonic() + 5
        while b"log lines dropped" not in text and time.monotonic() < deadline:
            os.set_blocking(read_end, False)
            try:
                text += os.read(read_end, 65536)
            except BlockingIOError:
                time.sleep(0.02)
        assert f"{dropped} log lines dropped".encode() in text
        lines = [line for line in text.split(b"\n")[:-1] if b"log lines dropped" not in line]
        assert lines and all(re.fullmatch(rb"line \d+ x{200}", line) for line in lines)  # whole lines only
    finally:
        sink.close()
        os.close(read_end)
        os.close(write_end)


def test_a_file_that_cannot_be_opened_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(LogSetupError, match="cannot open log file"):
        LineSink(str(tmp_path / "missing" / "x.log"))


def test_files_split_access_from_the_rest_and_reopen_after_a_rename(tmp_path: Path) -> None:
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    configure_logging("info", ServerSection(log_format="json", access_log_file=str(access), error_log_file=str(errors)))
    try:
        logging.getLogger("llmrelay.access").info("one", extra={"fields": {"request_id": "r1"}})
        logging.getLogger("llmrelay.worker").warning("something")
        flush_logs()
        access.rename(tmp_path / "access.log.1")
        reopen_log_files()
        logging.getLogger("llmrelay.access").info("two")
        flush_logs()
        time.sleep(0.05)
        assert [json.loads(x)["msg"] for x in (tmp_path / "access.log.1").read_text().splitlines()] == ["one"]
        assert [json.loads(x)["msg"] for x in access.read_text().splitlines()] == ["two"]
        assert [json.loads(x)["msg"] for x in errors.read_text().splitlines()] == ["something"]
        assert dropped_lines() == {"access": 0, "error": 0}
    finally:
        shutdown_logging()


def test_request_model() -> None:
    assert request_model("/v1/chat/completions", b'{"messages": [], "model": "gpt-4o"}') == "gpt-4o"
    assert request_model("/v1beta/models/gemini-2.0-flash:streamGenerateContent", b"{}") == "gemini-2.0-flash"
    assert request_model("/v1/chat/completions", b"not json, but \"model\"") is None
    assert request_model("/v1/chat/completions", b'["model"]') is None
    assert request_model("/v1/chat/completions", b'{"model": 4}') is None
    assert request_model("/v1/chat/completions", b"") is None
    assert request_model("/v1/x", b'{"model": "' + b"m" * 1000 + b'"}') == "m" * 200


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "127.0.0.1", "fd00::/8"])
    xff = [(b"x-forwarded-for", b"198.51.100.1, 203.0.113.7"), (b"x-forwarded-for", b"10.1.2.3")]
    assert proxies.client_ip("10.9.9.9", xff) == "203.0.113.7"  # the last untrusted hop, from the right
    assert proxies.client_ip("192.0.2.1", xff) == "192.0.2.1"  # an untrusted peer: its header is not believed
    assert proxies.client_ip("127.0.0.1", []) == "127.0.0.1"
    assert proxies.client_ip("::ffff:10.0.0.1", [(b"x-forwarded-for", b"203.0.113.9:4711")]) == "203.0.113.9"
    assert proxies.client_ip("fd00::1", [(b"x-forwarded-for", b"[2001:db8::1]:80")]) == "2001:db8::1"
    assert proxies.client_ip("10.0.0.1", [(b"x-forwarded-for", b"evil, 10.0.0.2")]) == "10.0.0.2"  # garbage: stop
    assert proxies.client_ip("10.0.0.1", [(b"x-forwarded-for", b"10.0.0.3, 10.0.0.2")]) == "10.0.0.3"
    assert TrustedProxies([]).client_ip("10.0.0.1", xff) == "10.0.0.1"


def test_relay_key_label_is_short_and_stable() -> None:
    label = relay_key_label("sk-secret")
    assert label == relay_key_label("sk-secret") != relay_key_label("sk-secret2")
    assert re.fullmatch(r"[0-9a-f]{8}", label) and "secret" not in label
