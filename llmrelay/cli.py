"""The `llmrelay` command: `serve`, `check-config`, `--version`."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from llmrelay import __version__
from llmrelay.config.errors import ConfigError
from llmrelay.config.load import Overrides, find_config_path, load_config
from llmrelay.config.resolved import RelayConfig, ResolvedEndpoint, redact_url
from llmrelay.logs import configure_logging

EXIT_CONFIG_ERROR = 1


def _load_or_exit(path: Path | None, overrides: Overrides = Overrides()) -> RelayConfig:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        click.echo(f"{exc.source}: {len(exc.errors)} error(s)", err=True)
        for line in exc.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(EXIT_CONFIG_ERROR)


def _relay_keys(endpoint: ResolvedEndpoint) -> str:
    """How many relay keys an endpoint checks, and where they come from."""
    if endpoint.auth_source == "none":
        return "none (client credentials pass through)" if not endpoint.api_keys else "none"
    origin = "own" if endpoint.auth_source == "endpoint" else "inherited from top-level auth_keys"
    return f"{len(endpoint.auth_keys)} ({origin})"


def summary(config: RelayConfig) -> list[str]:
    """What check-config prints: listeners and endpoints, never a key value."""
    server = config.server
    lines = [
        f"config: {config.source}",
        f"listener: http://{server.host}:{server.port}  workers: {server.workers}",
        "endpoints:",
    ]
    for endpoint in config.endpoints:
        route = f"/{endpoint.name}/"
        if endpoint.hosts:
            route += " hosts=" + ",".join(endpoint.hosts)
        lines.append(
            f"  {route}  provider={endpoint.provider}  target={endpoint.target}"
            f"  proxy={redact_url(endpoint.proxy_url) or 'direct'}"
            f"  relay_keys={_relay_keys(endpoint)}  api_keys={len(endpoint.api_keys)}"
            + (f"  forwarded_headers={endpoint.forwarded_headers}" if endpoint.forwarded_headers != "append" else "")
            + ("  public" if endpoint.public else "")
        )
    return lines


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="llmrelay")
def main() -> None:
    """llmrelay: a relay for LLM provider APIs."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file (TOML).")
@click.option("--host", help="Listen address (overrides server.host).")
@click.option("--port", type=int, help="Listen port (overrides server.port and $PORT).")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes (overrides server.workers).")
@click.option(
    "--pid-file",
    type=click.Path(dir_okay=False),
    envvar="LLMRELAY_PID_FILE",
    help="Write the supervisor's pid here (removed on exit).",
)
def serve(
    config_path: str | None, host: str | None, port: int | None, workers: int | None, pid_file: str | None
) -> None:
    """Run the relay: a supervisor and its worker processes."""
    from supervisor import run

    path = find_config_path(config_path)
    overrides = Overrides(host=host, port=port, workers=workers)
    config = _load_or_exit(path, overrides)
    configure_logging(config.server.log_level)
    sys.exit(run(config, path, overrides, Path(pid_file) if pid_file else None))


@main.command("check-config")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
def check_config(path: str | None) -> None:
    """Validate a config file (default: the one `serve` would use) and summarise it."""
    config = _load_or_exit(find_config_path(path))
    for line in summary(config):
        click.echo(line)
    click.echo("ok")


def _signal_supervisor(pid_file: str, signum: signal.Signals, what: str) -> None:
    path = Path(pid_file)
    try:
        pid = int(path.read_text().strip())
    except FileNotFoundError:
        click.echo(f"no pid file at {path}: is llmrelay serve running with --pid-file {path}?", err=True)
        sys.exit(EXIT_CONFIG_ERROR)
    except (OSError, ValueError) as exc:
        click.echo(f"cannot read pid file {path}: {exc}", err=True)
        sys.exit(EXIT_CONFIG_ERROR)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        click.echo(f"no process {pid} (stale pid file {path})", err=True)
        sys.exit(EXIT_CONFIG_ERROR)
    except PermissionError:
        click.echo(f"not allowed to signal process {pid}", err=True)
        sys.exit(EXIT_CONFIG_ERROR)
    click.echo(f"sent {signum.name} to llmrelay supervisor {pid}: {what}")


_PID_FILE_OPTION = click.option(
    "--pid-file",
    type=click.Path(dir_okay=False),
    envvar="LLMRELAY_PID_FILE",
    default="llmrelay.pid",
    show_default=True,
    help="The pid file `serve --pid-file` wrote.",
)


@main.command()
@_PID_FILE_OPTION
def reload(pid_file: str) -> None:
    """Re-read and apply the config file (SIGHUP); a bad file keeps the running config."""
    _signal_supervisor(pid_file, signal.SIGHUP, "reloading the config (see its log for the outcome)")


@main.command()
@_PID_FILE_OPTION
def restart(pid_file: str) -> None:
    """Replace every worker, one at a time, with the code installed now (SIGUSR2)."""
    _signal_supervisor(pid_file, signal.SIGUSR2, "rolling replacement of the workers")


if __name__ == "__main__":
    main()
