"""`llmrelay status`: against a running relay (the table, --json, the address found from the config,
--admin, auth keys, port 0 through the status file, --watch), and a clear failure when nothing listens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from relaytest import endpoint_config, free_port, upstreams_config, wait_until

from supervisor.status_table import duration, render, size

ADMIN_KEY = "adm-status-cli-33e1"


def run_status(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "LLMRELAY_ADMIN_KEY", "LLMRELAY_ADMIN")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "llmrelay", "status", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def relay_config(mock, admin_port: int, **admin: object) -> str:  # type: ignore[no-untyped-def]
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in admin.items())
    return (
        f"[server]\nheartbeat_interval = 0.5\n[server.admin]\nport = {admin_port}\n{extra}\n"
        + upstreams_config("oai", [{"name": "first", "target_base": f"{mock.base_url}/v1"}, {"name": "second", "target_base": f"{mock.base_url}/v1"}], provider="openai")
        + endpoint_config("ant", mock, provider="anthropic")
    )


def test_table_and_json_against_a_running_relay(start_relay, mock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    admin = free_port()
    relay = start_relay(relay_config(mock, admin), workers=2)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(4):
        assert httpx.post(relay.url("/oai/v1/chat/completions"), json=body, timeout=10).status_code == 200
    assert httpx.post(f"http://127.0.0.1:{admin}/reload", timeout=60).status_code == 200
    pids = relay.worker_pids()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_status("--config", str(relay.config_path), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("llmrelay ") and "config generation 2" in out
    lines = out.splitlines()
    for pid in pids:
        assert any(line.split()[1:2] == [str(pid)] and "serving" in line for line in lines), out
    for endpoint, upstream in (("oai", "first"), ("oai", "second"), ("ant", "ant#0")):
        assert any(line.split()[:3] == [endpoint, upstream, "ok"] for line in lines), out
    assert "last reload: applied" in out and "last restart: none" in out
    # found as serve finds it: CONFIG_PATH, then ./llmrelay.toml
    from_env = run_status(cwd=elsewhere, env={"CONFIG_PATH": str(relay.config_path)})
    assert from_env.returncode == 0 and "config generation 2" in from_env.stdout
    (elsewhere / "llmrelay.toml").write_text(relay.config_path.read_text())
    assert "config generation 2" in run_status(cwd=elsewhere).stdout
    raw = run_status("--config", str(relay.config_path), "--json", cwd=elsewhere)
    assert raw.returncode == 0, raw.stderr
    document = json.loads(raw.stdout)
    assert sorted(w["pid"] for w in document["workers"]) == pids
    assert set(document["endpoints"]) == {"oai", "ant"}
    assert set(document["endpoints"]["oai"]["upstreams"]) == {"first", "second"}
    assert document["last_reload"]["outcome"] == "applied"
    via_admin = run_status("--admin", f"http://127.0.0.1:{admin}", "--json", cwd=elsewhere)
    assert json.loads(via_admin.stdout)["pid"] == relay.pid


def test_auth_keys_from_the_config_or_the_option(start_relay, mock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    admin = free_port()
    relay = start_relay(relay_config(mock, admin, auth_keys=[ADMIN_KEY]))
    assert run_status("--config", str(relay.config_path), cwd=tmp_path).returncode == 0  # the config's key
    url = f"http://127.0.0.1:{admin}"
    refused = run_status("--admin", url, cwd=tmp_path)
    assert refused.returncode == 1 and "401" in refused.stderr and ADMIN_KEY not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert run_status("--admin", url, "--admin-key", ADMIN_KEY, cwd=tmp_path).returncode == 0
    assert run_status("--admin", url, cwd=tmp_path, env={"LLMRELAY_ADMIN_KEY": ADMIN_KEY}).returncode == 0


def test_port_zero_is_found_in_the_status_file(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(relay_config(mock, 0))
    assert wait_until(lambda: json.loads((relay.workdir / "llmrelay.pid.status").read_text())["admin"], timeout=5)
    result = run_status("--config", str(relay.config_path), "--json", cwd=relay.workdir)  # ./llmrelay.pid
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pid"] == relay.pid


def test_nothing_listening_is_a_clear_failure(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(f"[server.admin]\nport = {port}\n\n[endpoints.oai]\ntarget_base = \"http://127.0.0.1:9/v1\"\n")
    for args in (("--config", str(config)), ("--admin", f"http://127.0.0.1:{port}"), ("--config", str(config), "--json")):
        result = run_status(*args, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"no llmrelay admin listener at http://127.0.0.1:{port}" in lines[0], result.stderr
        assert "Traceback" not in result.stderr
    config.write_text("[server.admin]\nenabled = false\n\n[endpoints.oai]\ntarget_base = \"http://127.0.0.1:9/v1\"\n")
    disabled = run_status("--config", str(config), cwd=tmp_path)
    assert disabled.returncode == 1 and "disabled" in disabled.stderr


def test_watch_redraws_until_interrupted(start_relay, mock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    admin = free_port()
    start_relay(relay_config(mock, admin))
    env = {k: v for k, v in os.environ.items() if k != "CONFIG_PATH"}
    process = subprocess.Popen(
        [sys.executable, "-m", "llmrelay", "status", "--admin", f"http://127.0.0.1:{admin}", "--watch"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        time.sleep(2.6)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    text = out.decode()
    assert text.startswith("\x1b[2J\x1b[H")
    assert text.count("\x1b[H") >= 2  # redrawn in place, at least once a second
    assert text.count("llmrelay 0") == text.count("\x1b[H") and "Ctrl-C quits" in text


def test_render_helpers() -> None:
    assert duration(5) == "5s" and duration(192) == "3m12s" and duration(3 * 3600 + 240) == "3h04m"
    assert size(0) == "-" and size(512) == "512 B" and size(3 << 20) == "3.0 MiB"
    lines = render({"version": "9", "workers": [], "endpoints": {}, "last_reload": None}, now=0)
    assert lines[0].startswith("llmrelay 9") and "last reload: none since start" in lines
