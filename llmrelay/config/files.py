"""Files a worker will load (CA bundles today; certificates and keys with TLS listeners), checked
at validation time.

A worker builds its TLS contexts from these paths when it applies a config. A path that does not load
there would take every worker down with it, so `check-config`, `serve` and every reload load each file
the same way first and report a failure as a config error naming the key.
"""

from __future__ import annotations

import ssl


def ca_file_problem(path: str) -> str | None:
    """Why the PEM bundle at `path` cannot verify an upstream's certificate, or None when it loads."""
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:  # before OSError, its base class
        return f"{path} holds no usable PEM certificate ({exc.reason or exc})"
    except IsADirectoryError:
        return f"{path} is a directory, not a PEM file"
    except FileNotFoundError:
        return f"{path} does not exist"
    except PermissionError:
        return f"{path} cannot be read (permission denied)"
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc})"
    except ValueError as exc:
        return f"{path} cannot be loaded ({exc})"
    return None
