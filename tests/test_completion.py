"""`llmrelay completion bash|zsh|fish`: the scripts, and bash completing through the installed `llmrelay`
(the script calls it back; click answers with this version's commands and options)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import run_cli

LLMRELAY = Path(sys.executable).parent / "llmrelay"


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o nosort -F"), ("zsh", "#compdef llmrelay"), ("fish", "complete --no-files --command llmrelay")])
def test_each_shell_gets_its_script(shell: str, marker: str) -> None:
    result = run_cli("completion", shell)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout and "_LLMRELAY_COMPLETE" in result.stdout


def test_an_unknown_shell_is_refused() -> None:
    result = run_cli("completion", "tcsh")
    assert result.returncode == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in result.stderr


def _bash_complete(words: str) -> list[str]:
    """What bash offers for the command line `words` (cursor at its end), with the script loaded."""
    script = run_cli("completion", "bash").stdout
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    listed = words + ('""' if words.endswith(" ") else "")  # (a trailing space: completing an empty word)
    program = f"{script}\nCOMP_WORDS=({listed}); COMP_CWORD={cword}\n_llmrelay_completion llmrelay\n" + 'printf "%s\\n" "${COMPREPLY[@]}"\n'

    env = {**os.environ, "PATH": f"{LLMRELAY.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.skipif(not LLMRELAY.exists(), reason="the llmrelay script is not installed next to this Python")
def test_bash_completes_commands_and_options_through_llmrelay() -> None:
    assert set(_bash_complete("llmrelay che")) == {"check-config"}
    assert {"serve", "reload", "restart", "status", "usage", "completion", "check-config"} <= set(_bash_complete("llmrelay "))
    assert "--workers" in _bash_complete("llmrelay serve --wor")
    assert set(_bash_complete("llmrelay completion ")) == {"bash", "zsh", "fish"}
