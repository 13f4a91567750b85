"""examples/systemd: the units say what the supervisor does (Type=notify, reload by SIGHUP, a stop
timeout above the drain timeout, hardening), and `systemd-analyze verify` accepts them as written
(with ExecStart pointing at this environment's llmrelay)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmrelay.config.schema import ServerSection

UNITS = Path(__file__).resolve().parent.parent / "examples" / "systemd"
INSTALLED = "/usr/local/bin/llmrelay"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def test_the_service_unit_matches_the_supervisor() -> None:
    service = unit("llmrelay.service")["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > ServerSection().drain_timeout  # in-flight streams end first
    assert service["ExecStart"].startswith(f"{INSTALLED} serve ") and "--pid-file /run/llmrelay/" in service["ExecStart"]
    assert int(service["WatchdogSec"]) > 0
    for key, value in {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    }.items():  # fmt: skip
        assert service[key] == value, key
    upgrade = unit("llmrelay-upgrade.service")
    assert upgrade["Service"]["ExecStart"].startswith(f"{INSTALLED} restart --pid-file /run/llmrelay/llmrelay.pid")
    assert upgrade["Unit"]["Requisite"] == "llmrelay.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze (Debian systemd) is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    llmrelay = Path(sys.executable).parent / "llmrelay"
    assert llmrelay.exists()
    for name in ("llmrelay.service", "llmrelay-upgrade.service"):
        (tmp_path / name).write_text((UNITS / name).read_text().replace(INSTALLED, str(llmrelay)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "llmrelay.service"), str(tmp_path / "llmrelay-upgrade.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "llmrelay" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
