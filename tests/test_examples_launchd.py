"""examples/launchd/com.llmrelay.plist: a plist that parses, runs `llmrelay serve` with its config and
pid file, restarts it only after a failure, and lets the drain finish before launchd's SIGKILL."""

from __future__ import annotations

import plistlib
from pathlib import Path

from llmrelay.cli import main
from llmrelay.config.schema import ServerSection

PLIST = Path(__file__).resolve().parent.parent / "examples" / "launchd" / "com.llmrelay.plist"


def test_the_launchd_job_runs_serve_and_outlasts_the_drain() -> None:
    job = plistlib.loads(PLIST.read_bytes())
    assert job["Label"] == "com.llmrelay"
    program, command, *options = job["ProgramArguments"]
    assert program.endswith("/llmrelay") and command == "serve" and command in main.commands
    serve_options = {opt for param in main.commands["serve"].params for opt in param.opts}
    assert {option for option in options if option.startswith("--")} <= serve_options
    assert options[options.index("--config") + 1].endswith(".toml") and "--pid-file" in options
    assert job["RunAtLoad"] is True and job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["ExitTimeOut"] > ServerSection().drain_timeout
