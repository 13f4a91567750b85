"""The pid file: written atomically (temporary file, then rename), removed on exit."""

from __future__ import annotations

import os
from pathlib import Path


class PidFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pid: int | None = None

    def write(self, pid: int) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{pid}.tmp")
        temporary.write_text(f"{pid}\n")
        os.replace(temporary, self.path)
        self._pid = pid

    def remove(self) -> None:
        """Remove the file if it still names this process (a successor may have replaced it)."""
        try:
            if self._pid is not None and int(self.path.read_text().strip()) == self._pid:
                self.path.unlink()
        except (OSError, ValueError):
            pass
