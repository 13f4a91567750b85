"""The `llmrelay import-config` command: the converted config on standard output (or -o FILE), the
report on standard error; exit 0 when every setting carried over, 1 when one would change behaviour,
2 when the file cannot be read or recognised."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from llmrelay.importing.command import import_config
from llmrelay.importing.sources import FORMATS, ImportSourceError


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by its owner only: it may hold literal keys."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


@click.command("import-config")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the config to this file (mode 0600) instead of standard output.")
@click.option(
    "--format", "format_name", type=click.Choice(["auto", *FORMATS]), default="auto", show_default=True,
    help="The source's format; auto tells it from the file.",
)
def import_config_command(file: str, output: str | None, format_name: str) -> None:
    """Convert another proxy's config FILE into an llmrelay config.

    \b
    Formats: openproxy (providers: list, Host routing), llm-proxy-go (/openai, /anthropic...
    prefixes), actix-toml ([llm.*] and [[route]]), llmrelay (llm-api-proxy's [endpoints.*]).
    The report (each source key and where it went, every setting left behind and why) is
    printed on standard error. Exit 1 when a setting would change behaviour; 2 on an
    unreadable file.
    """
    try:
        imported = import_config(Path(file), format_name)
    except ImportSourceError as exc:
        click.echo(f"import-config: {exc}", err=True)
        sys.exit(2)
    if output is None:
        click.echo(imported.text, nl=False)
    else:
        try:
            _write_private(Path(output), imported.text)
        except OSError as exc:
            click.echo(f"import-config: cannot write {output}: {exc.strerror or exc}", err=True)
            sys.exit(2)
    for line in imported.report.lines():
        click.echo(line, err=True)
    if output is not None:
        click.echo(f"import-config: wrote {output}; check it with: llmrelay check-config {output}", err=True)
    sys.exit(1 if imported.report.changes_behaviour else 0)
