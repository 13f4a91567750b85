"""One line per request, with nothing secret in it.

The path is logged without its query string (a Gemini key may travel as `?key=`), and no header value
is ever logged. Every field is escaped (`llmrelay.io.logsafe.field`): a `"`, a space or a line break in
a request target cannot end the quoted request, forge a `status=` field or start a second line.
"""

from __future__ import annotations

import logging

from llmrelay.server.exchange import Refusal
from llmrelay.io.logsafe import field, needs_escape

log = logging.getLogger("llmrelay.access")


class AccessRecord:
    __slots__ = (
        "method",
        "endpoint",
        "upstream",
        "attempts",
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
        self.upstream = "-"  # the upstream of the last attempt
        self.attempts = 0
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
        client, method, path = self.client, self.method, self.path
        endpoint, outcome, request_id = self.endpoint, self.outcome, self.request_id
        if needs_escape(client + method + path + endpoint + outcome + request_id):  # one search for all
            client, method, path = field(client), field(method), field(path)
            endpoint, outcome, request_id = field(endpoint), field(outcome), field(request_id)
        return (
            f'{client} "{method} {path}" endpoint={endpoint} attempts={self.attempts} upstream={self.upstream} '
            f"status={self.status} "
            f"in={self.bytes_in} out={self.bytes_out} duration_ms={duration:.1f} ttfb_ms={ttfb} "
            f"streamed={'yes' if self.streamed else 'no'} outcome={outcome} rid={request_id}"
        )

    @classmethod
    def of_refusal(cls, refusal: Refusal, now: float) -> AccessRecord:
        """The record of a request refused before it became an exchange (method and path "-" when
        they never arrived)."""
        record = cls(
            refusal.method.decode("latin-1") or "-",
            refusal.target.decode("latin-1") or "-",
            "-",
            refusal.client[0],
            now - refusal.duration,
        )
        record.status = refusal.status
        record.outcome = refusal.outcome
        record.finished = now
        return record


def write(record: AccessRecord) -> None:
    log.info("%s", record.line())
