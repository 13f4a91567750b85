"""One line per request, with nothing secret in it.

The path is logged without its query string (a Gemini key may travel as `?key=`), and no header value
is ever logged.
"""

from __future__ import annotations

import logging

log = logging.getLogger("llmrelay.access")


class AccessRecord:
    __slots__ = (
        "method",
        "endpoint",
        "path",
        "status",
        "bytes_in",
        "bytes_out",
        "started",
        "first_byte",
        "finished",
        "streamed",
        "request_id",
        "client",
        "outcome",
    )

    def __init__(self, method: str, path: str, request_id: str, client: str, started: float) -> None:
        self.method = method
        self.path = path.split("?", 1)[0][:256]
        self.endpoint = "-"
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = started
        self.first_byte: float | None = None
        self.finished = started
        self.streamed = False
        self.request_id = request_id
        self.client = client
        self.outcome = "ok"

    def line(self) -> str:
        duration = (self.finished - self.started) * 1000
        ttfb = "-" if self.first_byte is None else f"{(self.first_byte - self.started) * 1000:.1f}"
        return (
            f'{self.client} "{self.method} {self.path}" endpoint={self.endpoint} status={self.status} '
            f"in={self.bytes_in} out={self.bytes_out} duration_ms={duration:.1f} ttfb_ms={ttfb} "
            f"streamed={'yes' if self.streamed else 'no'} outcome={self.outcome} rid={self.request_id}"
        )


def write(record: AccessRecord) -> None:
    log.info("%s", record.line())
