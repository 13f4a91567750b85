"""`llmrelay import-config` as a command, apart from any one format: without PyYAML a YAML source gets
a clear message (and TOML sources still import), a file that cannot be read or recognised exits 2 with
nothing on standard output, and an output file that cannot be written says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from importtest import SOURCES, run_import

# Runs the command with `import yaml` failing, as on a machine without the [import] extra.
WITHOUT_YAML = "import sys; sys.modules['yaml'] = None; from llmrelay.cli import main; sys.argv[0] = 'llmrelay'; main()"


def run_without_yaml(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "PORT")}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_YAML, "import-config", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_a_yaml_source_without_pyyaml_says_what_to_install() -> None:
    result = run_without_yaml(str(SOURCES / "openproxy.yml"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "reading YAML needs PyYAML, which is not installed: pip install 'llmrelay[import]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_toml_source_needs_no_pyyaml() -> None:
    result = run_without_yaml(str(SOURCES / "actix-llm-proxy.toml"))
    assert result.returncode == 0, result.stderr
    assert "[endpoints.claude]" in result.stdout


def test_unreadable_or_unrecognised_files_exit_2_with_nothing_written(tmp_path: Path) -> None:
    cases = {
        tmp_path / "missing.yml": "no such file",
        tmp_path / "empty.yml": "the file is empty",
        tmp_path / "list.yml": "expected a mapping at the top, got a list",
        tmp_path / "broken.yml": "YAML syntax",
        tmp_path / "broken.toml": "TOML syntax",
        tmp_path / "other.yml": "cannot tell the format of this file; name it with --format",
        tmp_path / "latin1.toml": "cannot read",
    }
    (tmp_path / "empty.yml").write_text("")
    (tmp_path / "list.yml").write_text("- a\n- b\n")
    (tmp_path / "broken.yml").write_text("providers: [\n")
    (tmp_path / "broken.toml").write_text("[server\n")
    (tmp_path / "other.yml").write_text("listen: 8080\n")
    (tmp_path / "latin1.toml").write_bytes("name = \"caf\xe9\"\n".encode("latin-1"))
    for path, message in cases.items():
        result = run_import(path)
        assert result.returncode == 2, (path.name, result.stderr)
        assert result.stdout == "" and message in result.stderr, (path.name, result.stderr)
        assert result.stderr.startswith("import-config: ") and "Traceback" not in result.stderr


def test_an_output_that_cannot_be_written_exits_2(tmp_path: Path) -> None:
    result = run_import(SOURCES / "actix-llm-proxy.toml", "-o", str(tmp_path / "no-such-dir" / "llmrelay.toml"))
    assert result.returncode == 2
    assert "cannot write" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "no-such-dir").exists()


def test_the_written_file_replaces_an_older_one_whole(tmp_path: Path) -> None:
    output = tmp_path / "llmrelay.toml"
    output.write_text("x" * 100_000)
    os.chmod(output, 0o644)
    result = run_import(SOURCES / "actix-llm-proxy.toml", "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert output.read_text().startswith("# Imported from actix-llm-proxy.toml")
    assert output.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["llmrelay.toml"]  # (no temporary file left)
    assert f"wrote {output}; check it with: llmrelay check-config {output}" in result.stderr
