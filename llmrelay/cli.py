"""The `llmrelay` command: `serve`, `check-config`, `reload`, `restart`, `status`, `usage`, `--version`."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from pathlib import Path

import click

from llmrelay import __version__
from llmrelay.completion import completion
from llmrelay.importing.cli_command import import_config_command
from llmrelay.config.errors import ConfigError
from llmrelay.config.load import Overrides, find_config_path, load_config
from llmrelay.config.resolved import RelayConfig
from llmrelay.config.summary import summary
from llmrelay.logs import LogSetupError, configure_logging

EXIT_CONFIG_ERROR = 1
EXIT_FAILED = 1  # reload / restart: rejected, failed, or no outcome known
DEFAULT_PID_FILE = "llmrelay.pid"


def _load_or_exit(path: Path | None, overrides: Overrides = Overrides()) -> RelayConfig:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        click.echo(f"{exc.source}: {len(exc.errors)} error(s)", err=True)
        for line in exc.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(EXIT_CONFIG_ERROR)


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
    help=f"Write the supervisor's pid here, locked while it runs [default: ./{DEFAULT_PID_FILE}, if writable].",
)
def serve(
    config_path: str | None, host: str | None, port: int | None, workers: int | None, pid_file: str | None
) -> None:
    """Run the relay: a supervisor and its worker processes."""
    from supervisor import run

    path = find_config_path(config_path)
    overrides = Overrides(host=host, port=port, workers=workers)
    config = _load_or_exit(path, overrides)
    try:
        configure_logging(config.server.log_level, config.server)
    except LogSetupError as exc:
        click.echo(f"llmrelay: {exc}", err=True)
        sys.exit(EXIT_CONFIG_ERROR)
    # Without --pid-file, ./llmrelay.pid is written when it can be, so that `llmrelay reload` run
    # from the same directory finds this supervisor; a read-only directory is no reason not to serve.
    optional = not pid_file
    sys.exit(run(config, path, overrides, Path(pid_file or DEFAULT_PID_FILE), pid_file_optional=optional))


@main.command("check-config")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
def check_config(path: str | None) -> None:
    """Validate a config file (default: the one `serve` would use) and summarise it."""
    config = _load_or_exit(find_config_path(path))
    for line in summary(config):
        click.echo(line)
    click.echo("ok")


def _read_pid(path: Path) -> int:
    for _ in range(20):  # a supervisor writes its pid just after creating the file
        try:
            return int(path.read_text().strip())
        except FileNotFoundError:
            click.echo(f"no pid file at {path}: is llmrelay serve running (with --pid-file {path})?", err=True)
            sys.exit(EXIT_FAILED)
        except ValueError:
            time.sleep(0.05)
        except OSError as exc:
            click.echo(f"cannot read pid file {path}: {exc.strerror or exc}", err=True)
            sys.exit(EXIT_FAILED)
    click.echo(f"pid file {path} does not hold a process id", err=True)
    sys.exit(EXIT_FAILED)


def _signal_and_wait(pid_file: str, signum: signal.Signals, action: str, timeout: float) -> None:
    """Send `signum` to the supervisor named in the pid file; wait for the outcome in its status file."""
    from supervisor.pidfile import held
    from supervisor.status import read_status, status_path

    path = Path(pid_file)
    pid = _read_pid(path)
    if not held(path):
        click.echo(f"stale pid file {path}: no llmrelay supervisor holds it (pid {pid} is not one)", err=True)
        sys.exit(EXIT_FAILED)
    status_file = status_path(path)
    status = read_status(status_file)
    if status is None or status.get("pid") != pid:
        click.echo(f"no status file {status_file} from supervisor {pid}: cannot follow the outcome", err=True)
        sys.exit(EXIT_FAILED)
    before = _counter(status, action, "requested")
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        click.echo(f"no process {pid} (stale pid file {path})", err=True)
        sys.exit(EXIT_FAILED)
    except PermissionError:
        click.echo(f"not allowed to signal process {pid}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"sent {signum.name} to llmrelay supervisor {pid}; waiting for the {action} to finish")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        status = read_status(status_file)
        if status is None or status.get("pid") != pid:
            if not held(path):
                click.echo(f"supervisor {pid} exited before the {action} finished", err=True)
                sys.exit(EXIT_FAILED)
            continue
        if _counter(status, action, "finished") > before:
            _report(status, action)
    click.echo(f"no outcome after {timeout:g} s: the {action} may still be running (see the supervisor's log)", err=True)
    sys.exit(EXIT_FAILED)


def _counter(status: dict[str, object], action: str, name: str) -> int:
    section = status.get(action)
    value = section.get(name) if isinstance(section, dict) else None
    return value if isinstance(value, int) else 0


def _report(status: dict[str, object], action: str) -> None:
    section = status.get(action)
    assert isinstance(section, dict)
    outcome, summary, errors = section.get("outcome"), section.get("summary", ""), section.get("errors") or []
    ok = outcome in ("applied", "done")
    line = f"{action} {outcome}: {summary}"
    if ok:
        click.echo(line)
        for error in errors:  # an applied reload whose listener move left some workers behind
            click.echo(f"  warning: {error}", err=True)
        sys.exit(0)
    if action == "reload":
        line += f"; still serving generation {status.get('generation')}"
    click.echo(line, err=True)
    for error in errors:
        click.echo(f"  {error}", err=True)
    sys.exit(EXIT_FAILED)


_PID_FILE_OPTION = click.option(
    "--pid-file",
    type=click.Path(dir_okay=False),
    envvar="LLMRELAY_PID_FILE",
    default=DEFAULT_PID_FILE,
    show_default=True,
    help="The pid file `serve` wrote.",
)


def _timeout_option(default: float) -> Callable[[click.decorators.FC], click.decorators.FC]:
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0),
        default=default,
        show_default=True,
        help="Seconds to wait for the outcome.",
    )


@main.command()
@_PID_FILE_OPTION
@_timeout_option(60.0)
def reload(pid_file: str, timeout: float) -> None:
    """Re-read and apply the config file (SIGHUP); wait for the outcome.

    Exit 0 when it was applied; 1 when it was rejected (the errors are printed, the running config
    stays), or when there is no supervisor or no outcome within --timeout.
    """
    _signal_and_wait(pid_file, signal.SIGHUP, "reload", timeout)


@main.command()
@_PID_FILE_OPTION
@_timeout_option(300.0)
def restart(pid_file: str, timeout: float) -> None:
    """Replace every worker, one at a time, with the code installed now (SIGUSR2); wait for the outcome.

    Exit 0 when every worker was replaced; 1 when a successor could not start (the old workers keep
    serving), or when there is no supervisor or no outcome within --timeout.
    """
    _signal_and_wait(pid_file, signal.SIGUSR2, "restart", timeout)


ADMIN_KEY_ENV = "LLMRELAY_ADMIN_KEY"


class AdminError(Exception):
    """The admin listener could not be asked: the message says why, on one line."""


def _admin_target(admin: str | None, config_path: str | None, pid_file: str) -> tuple[str, str | None]:
    """The admin listener's URL, and the key the config gives it (None: no auth_keys, or --admin)."""
    if admin:
        return admin.rstrip("/"), None
    path = find_config_path(config_path)
    config = _load_or_exit(path)
    section = config.server.admin
    where = config.source
    if not section.enabled:
        raise AdminError(f"the admin listener is disabled in {where} ([server.admin] enabled = false); use --admin URL")
    key: str | None = None
    if section.auth_keys:
        from llmrelay.config.secrets import SecretError, resolve_secret

        try:
            key = resolve_secret(section.auth_keys[0])
        except SecretError as exc:
            raise AdminError(f"server.admin.auth_keys[0] in {where}: {exc}") from None
    if section.port == 0:  # the port it took is in the status file
        from supervisor.status import read_status, status_path

        status = read_status(status_path(Path(pid_file)))
        url = status.get("admin") if status else None
        if not isinstance(url, str) or not url:
            raise AdminError(f"{where} sets [server.admin] port = 0 and no status file next to {pid_file} names the port; use --admin URL")
        return url, key
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(section.host, section.host)
    host = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{host}:{section.port}", key


def _fetch_status(url: str, key: str | None, timeout: float, route: str = "/status") -> bytes:
    """The body of GET `route` (with its query) on the admin listener at `url`."""
    request = urllib.request.Request(url + route, headers={"Accept": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise AdminError(f"{url} refused the admin key (401): pass --admin-key or set {ADMIN_KEY_ENV}") from None
        raise AdminError(f"{url}{route} answered {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise AdminError(f"no llmrelay admin listener at {url} ({reason}): is llmrelay serve running?") from None
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot read {url}{route}: {exc}") from None


def _document_lines(body: bytes, as_json: bool, render: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    """An admin document as printed: raw with --json, else as `render` lays it out."""
    if as_json:
        return [body.decode().rstrip("\n")]
    try:
        document = json.loads(body)
    except ValueError:
        raise AdminError("the admin listener answered something that is not JSON") from None
    if not isinstance(document, dict):
        raise AdminError("the admin listener answered an unexpected document")
    return render(document)


def _status_lines(body: bytes, as_json: bool) -> list[str]:
    from supervisor.status_table import render

    return _document_lines(body, as_json, render)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file (TOML) naming the admin listener.")
@click.option("--admin", "admin", metavar="URL", envvar="LLMRELAY_ADMIN", help="The admin listener's URL (instead of the config's).")
@click.option("--admin-key", envvar=ADMIN_KEY_ENV, help=f"A key of server.admin.auth_keys [env: {ADMIN_KEY_ENV}; default: the config's first].")
@_PID_FILE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw /status document.")
@click.option("--watch", is_flag=True, help="Refresh every second, redrawing in place; Ctrl-C quits.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="Seconds to wait for an answer.")
def status(
    config_path: str | None,
    admin: str | None,
    admin_key: str | None,
    pid_file: str,
    as_json: bool,
    watch: bool,
    timeout: float,
) -> None:
    """Show the running relay: version, config generation, workers, upstreams, the last reload.

    Asks the admin listener named by the config (found as `serve` finds it) or by --admin. Exit 1
    when nothing answers there.
    """
    try:
        url, config_key = _admin_target(admin, config_path, pid_file)
        key = admin_key or config_key
        if not watch:
            for line in _status_lines(_fetch_status(url, key, timeout), as_json):
                click.echo(line)
            return
    except AdminError as exc:
        click.echo(f"llmrelay status: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    clear = "\x1b[2J"  # the whole screen, once
    try:
        while True:
            try:
                lines = _status_lines(_fetch_status(url, key, timeout), as_json)
            except AdminError as exc:
                lines = [f"llmrelay status: {exc}"]
            lines += ["", f"{time.strftime('%H:%M:%S')}  every 1 s; Ctrl-C quits"]
            # home, each line over the previous frame's (erasing its rest), then erase below: no flicker
            click.echo(clear + "\x1b[H" + "".join(line + "\x1b[K\n" for line in lines) + "\x1b[J", nl=False, color=True)
            clear = ""
            time.sleep(1.0)
    except KeyboardInterrupt:
        sys.exit(0)


def _usage_lines(body: bytes, as_json: bool) -> list[str]:
    from supervisor.usage import render

    return _document_lines(body, as_json, render)


@main.command()
@click.option("--by", "by", type=click.Choice(["key", "model", "endpoint", "upstream"]), help="Sum the rows by one dimension.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file (TOML) naming the admin listener.")
@click.option("--admin", "admin", metavar="URL", envvar="LLMRELAY_ADMIN", help="The admin listener's URL (instead of the config's).")
@click.option("--admin-key", envvar=ADMIN_KEY_ENV, help=f"A key of server.admin.auth_keys [env: {ADMIN_KEY_ENV}; default: the config's first].")
@_PID_FILE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw /usage document.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="Seconds to wait for an answer.")
def usage(
    by: str | None,
    config_path: str | None,
    admin: str | None,
    admin_key: str | None,
    pid_file: str,
    as_json: bool,
    timeout: float,
) -> None:
    """Show what was used: requests, input and output tokens and errors per relay key, endpoint,
    upstream and model (or summed --by one of them), since the counting started.

    Asks the admin listener found as `status` finds it. Exit 1 when nothing answers there.
    """
    try:
        url, config_key = _admin_target(admin, config_path, pid_file)
        route = "/usage" + (f"?by={by}" if by else "")
        for line in _usage_lines(_fetch_status(url, admin_key or config_key, timeout, route), as_json):
            click.echo(line)
    except AdminError as exc:
        click.echo(f"llmrelay usage: {exc}", err=True)
        sys.exit(EXIT_FAILED)


main.add_command(completion)
main.add_command(import_config_command)

if __name__ == "__main__":
    main()
