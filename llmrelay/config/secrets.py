"""Key sources: a literal, `${ENV_NAME}`, or `$(command args)` whose standard output is the key.

Commands run without a shell (the value is split like a shell word list, nothing is expanded), with a
time bound and an output bound; their standard output is never logged. A failure is reported by its
exit status and the first line of what the command wrote to standard error (cut to a short length),
which is where tools explain themselves (`secret not found`, `permission denied`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping

COMMAND_TIMEOUT = 10.0
MAX_OUTPUT_BYTES = 64 * 1024
MAX_STDERR_SHOWN = 200  # characters of the first line of a failing command's standard error

_ENV = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
_COMMAND = re.compile(r"\$\((?P<command>.*)\)", re.DOTALL)


class SecretError(Exception):
    """A key source could not produce a key; the message never contains the key."""


def is_command(value: str) -> bool:
    return _COMMAND.fullmatch(value.strip()) is not None


def resolve_secret(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Return the key that `value` designates; it must be sendable as a header value."""
    key = _resolve(value, environ)
    if not all(0x21 <= ord(ch) <= 0x7E for ch in key):
        raise SecretError("the key holds spaces, control or non-ASCII characters, which cannot be sent in a header")
    return key


def _resolve(value: str, environ: Mapping[str, str] | None) -> str:
    env = os.environ if environ is None else environ
    text = value.strip()
    match = _ENV.fullmatch(text)
    if match:
        name = match.group("name")
        if name not in env:
            raise SecretError(f"environment variable {name} is not set")
        resolved = env[name]
        if not resolved:
            raise SecretError(f"environment variable {name} is empty")
        return resolved
    match = _COMMAND.fullmatch(text)
    if match:
        return _run_command(match.group("command"))
    if not value:
        raise SecretError("empty key")
    return value


def _run_command(command: str) -> str:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise SecretError(f"cannot parse command: {exc}") from None
    if not argv:
        raise SecretError("empty command")
    try:
        completed = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=COMMAND_TIMEOUT,
            check=False,
            shell=False,
        )
    except FileNotFoundError:
        raise SecretError(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise SecretError(f"command not executable: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise SecretError(f"command {argv[0]} timed out after {COMMAND_TIMEOUT:g} s") from None
    if completed.returncode != 0:
        raise SecretError(
            f"command {argv[0]} exited with status {completed.returncode}" + _first_line(completed.stderr)
        )
    output = completed.stdout
    if len(output) > MAX_OUTPUT_BYTES:
        raise SecretError(f"command {argv[0]} printed more than {MAX_OUTPUT_BYTES} bytes")
    try:
        key = output.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretError(f"command {argv[0]} printed bytes that are not UTF-8") from None
    if not key:
        raise SecretError(f"command {argv[0]} printed nothing")
    return key


def _first_line(stderr: bytes) -> str:
    """`: <first non-empty line of stderr>`, printable and short, or "" when it wrote nothing."""
    for raw_line in stderr[:4096].splitlines():
        line = raw_line.decode("utf-8", "replace").strip()
        if line:
            shown = "".join(ch if ch.isprintable() else "?" for ch in line[:MAX_STDERR_SHOWN])
            return f": {shown}" + ("..." if len(line) > MAX_STDERR_SHOWN else "")
    return ""
