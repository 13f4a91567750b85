"""One line per request, with nothing secret in it.

The path is logged without its query string (a Gemini key may travel as `?key=`), and no header value
but the User-Agent is ever logged; a relay key appears only as its label (`observe.requestinfo`).
In text format every field is escaped (`llmrelay.io.logsafe.field`): a `"`, a space or a line break
in a request target cannot end the quoted request, forge a `status=` field or start a second line. In
json format the line is one object (`fields()`), escaped by the JSON encoder.
"""

from __future__ import annotations

import logging
from operator import itemgetter
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from llmrelay import logs
from llmrelay.io.logsafe import field, needs_escape
from llmrelay.observe.requestinfo import TrustedProxies
from llmrelay.proto.messages import Headers, RequestHead
from llmrelay.server.exchange import Refusal

log = logging.getLogger("llmrelay.access")
OK_OUTCOMES = frozenset({"ok"})
_BASE_KEYS = ("ts", "level", "logger", "pid", "msg")


class AccessLine(msgspec.Struct):
    """The json access line, key by key in this order (a Struct: its keys are encoded once, not per line)."""

    ts: str
    level: str
    logger: str
    pid: int
    msg: str
    request_id: str
    method: str
    path: str
    endpoint: str
    upstream: str
    attempts: int
    model: str | None
    status: int
    bytes_in: int
    bytes_out: int
    duration_ms: float
    ttfb_ms: float | None
    streamed: bool
    events: int
    client_ip: str
    relay_key: str | None
    user_agent: str | None
    usage: dict[str, int] | UnsetType = UNSET  # only when the provider reported it
    error: str | UnsetType = UNSET  # only for failures


_encode_line = msgspec.json.Encoder().encode
_NAME = itemgetter(0)


def _tenths(milliseconds: float) -> float:
    """Milliseconds to a tenth, half up (`round(x, 1)` goes through a decimal conversion: slower)."""
    return int(milliseconds * 10 + 0.5) / 10 if milliseconds >= 0 else round(milliseconds, 1)


class AccessRecord:
    __slots__ = (
        "method",
        "endpoint",
        "upstream",
        "attempts",
        "attempt_log",
        "path",
        "status",
        "bytes_in",
        "bytes_out",
        "started",
        "first_byte",
        "finished",
        "streamed",
        "events",
        "request_id",
        "client",
        "outcome",
        "model",
        "usage",
        "relay_key",
        "headers",
    )

    def __init__(self, method: str, path: str, request_id: str, client: str, started: float) -> None:
        self.method = method
        self.path = path.split("?", 1)[0][:256]
        self.endpoint = "-"
        self.upstream = "-"  # the upstream of the last attempt
        self.attempts = 0
        self.attempt_log: list[tuple[str, str]] = []  # (upstream, outcome) of each attempt
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = started
        self.first_byte: float | None = None
        self.finished = started
        self.streamed = False
        self.events = 0  # server-sent events relayed
        self.request_id = request_id
        self.client = client
        self.outcome = "ok"
        self.model: str | None = None
        self.usage: dict[str, int] | None = None  # tokens by kind ("input", "output"), when the provider said
        self.relay_key: str | None = None  # the label of the relay key presented (never the key)
        self.headers: Headers = []  # the request's, for the json line's user agent (looked up only there)

    @classmethod
    def begin(
        cls, head: RequestHead, target: str, request_id: str, proxies: TrustedProxies, started: float
    ) -> AccessRecord:
        """The record of a request whose head just arrived."""
        record = cls(
            head.method.decode("ascii", "replace"), target, request_id, proxies.client_ip(head.client[0], head.headers), started
        )
        record.headers = head.headers
        return record

    def attempt_answered(self, upstream: str, outcome: str) -> None:
        self.attempt_log.append((upstream, outcome))

    def attempt_failed(self, upstream: str, reason: str) -> None:
        """An attempt failed; it may be the one already recorded as answered (its body failed)."""
        if len(self.attempt_log) >= self.attempts and self.attempt_log:
            self.attempt_log[-1] = (upstream, reason)
        else:
            self.attempt_log.append((upstream, reason))

    def line(self) -> str:
        """The text line (the same fields as always, in the same order: tools parse it; the json
        line carries the newer ones)."""
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

    def user_agent(self) -> str | None:
        headers = self.headers
        names = list(map(_NAME, headers))  # (found by C code)
        if b"user-agent" not in names:
            return None
        return headers[names.index(b"user-agent")][1].decode("latin-1")[:512]

    def json_line(self, ts: str, logger: str, pid: int) -> AccessLine:
        return AccessLine(
            ts,
            "info",
            logger,
            pid,
            f"{self.method} {self.path} {self.status}",
            self.request_id,
            self.method,
            self.path,
            self.endpoint,
            self.upstream,
            self.attempts,
            self.model,
            self.status,
            self.bytes_in,
            self.bytes_out,
            _tenths((self.finished - self.started) * 1000),
            None if self.first_byte is None else _tenths((self.first_byte - self.started) * 1000),
            self.streamed,
            self.events,
            self.client,
            self.relay_key,
            self.user_agent(),
            UNSET if self.usage is None else self.usage,
            UNSET if self.outcome in OK_OUTCOMES else self.outcome,
        )

    def fields(self) -> dict[str, Any]:
        """The json line's fields (for a line that goes through `logging`)."""
        entry: dict[str, Any] = msgspec.to_builtins(self.json_line("", "", 0))
        for key in _BASE_KEYS:
            del entry[key]
        return entry

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
    direct = logs.access_lines()
    if direct is not None:  # (the usual case: straight to the access sink, no LogRecord)
        sink, lines = direct
        if logs.log_format() == "json":
            sink.offer(_encode_line(record.json_line(lines.json_ts(), lines.logger, lines.pid)) + b"\n", "access")
        else:
            sink.offer(lines.text(record.line()), "access")
    elif logs.log_format() == "json":
        log.info("%s %s %d", record.method, record.path, record.status, extra={"fields": record.fields()})
    else:
        log.info("%s", record.line())
