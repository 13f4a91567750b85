"""The command line as a deploy pipeline uses it: exit codes and output of check-config, --version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from relaytest import EXAMPLES

import llmrelay


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "PORT")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "llmrelay", *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=60
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert llmrelay.__version__ in result.stdout


def test_check_config_summarises_the_original_format() -> None:
    result = run_cli("check-config", str(EXAMPLES / "original.toml"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "listener: http://127.0.0.1:8811" in out
    assert "/anthropic_dev/  provider=anthropic  relay_keys=none (client credentials pass through)  retries=2" in out
    assert "upstream anthropic_dev#0  provider=anthropic  target=https://api.anthropic.com  proxy=http://localhost:8080" in out
    assert "/openai_prod/  provider=openai" in out
    assert "upstream openai_prod#0  provider=openai  target=https://api.openai.com/v1  proxy=http://proxy.company.com:3129" in out
    assert "/direct/  provider=anthropic" in out
    assert "upstream direct#0  provider=anthropic  target=https://api.anthropic.com  proxy=direct" in out
    # Each endpoint's line is followed by its upstreams' lines.
    lines = out.splitlines()
    assert lines[lines.index(next(line for line in lines if line.startswith("  /direct/"))) + 1].startswith("    upstream direct#0")
    assert out.strip().endswith("ok")


def test_check_config_never_prints_key_values(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'auth_keys = ["relay-secret-1"]\n[endpoints.a]\ntarget_base = "https://api.openai.com/v1"\n'
        'api_keys = [{ key = "sk-secret-A", weight = 1 }, { key = "${B_KEY}", weight = 2 }]\n'
        'proxy_url = "http://user:proxy-pass@127.0.0.1:3128"\n'
    )
    result = run_cli("check-config", str(path), env={"B_KEY": "sk-secret-B"})
    assert result.returncode == 0, result.stderr
    assert "relay_keys=1 (inherited from top-level auth_keys)" in result.stdout
    assert "upstream a#0  provider=openai" in result.stdout and "  api_keys=2  check=none" in result.stdout
    for secret in ("relay-secret-1", "sk-secret-A", "sk-secret-B", "proxy-pass"):
        assert secret not in result.stdout + result.stderr
    assert "proxy=http://***@127.0.0.1:3128" in result.stdout


def test_check_config_reports_every_error_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = -1\n[endpoints.a]\nweight = 2\n[endpoints.b]\ntarget_base = "nope"\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    err = result.stderr
    assert "3 error(s)" in err or "4 error(s)" in err, err
    assert "server.port:" in err
    assert "endpoints.a.weight: unknown key" in err
    assert "endpoints.b.target_base:" in err


def test_check_config_uses_config_path_then_local_file_then_default(tmp_path: Path) -> None:
    result = run_cli("check-config", cwd=tmp_path)
    assert result.returncode == 0 and "config: <embedded default>" in result.stdout
    assert "/groq/  provider=openai" in result.stdout
    assert "upstream groq#0  provider=openai  target=https://api.groq.com/openai/v1" in result.stdout
    (tmp_path / "llmrelay.toml").write_text('[endpoints.local]\ntarget_base = "http://127.0.0.1:9"\n')
    result = run_cli("check-config", cwd=tmp_path)
    assert "config: llmrelay.toml" in result.stdout and "/local/" in result.stdout
    result = run_cli("check-config", cwd=tmp_path, env={"CONFIG_PATH": str(EXAMPLES / "original.toml")})
    assert "/openai_prod/" in result.stdout


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = run_cli("check-config", str(tmp_path / "missing.toml"))
    assert result.returncode == 1
    assert "config file not found" in result.stderr


def test_serve_refuses_a_bad_config_before_binding(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nworkers = 0\n")
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 1
    assert "server.workers:" in result.stderr
