"""The product code type-checks under `mypy --strict`, in CI as in development."""

from __future__ import annotations

import subprocess
import sys

from relaytest import ROOT


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "llmrelay", "supervisor"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
