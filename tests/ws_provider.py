"""A WebSocket provider for tests: a real `websockets` server in a thread that echoes what it gets.

* text and binary messages come back as they were; pings are answered (by the library);
* a text message `close:CODE:REASON` makes the server close with that code and reason;
* every upgrade request it saw is recorded (path and headers, names lower-cased), so a test can check
  that the relay key never arrived and the provider key did;
* `refuse(status, body)` makes it answer upgrades with that status and a JSON body instead;
* with `tls=True` it serves wss:// with a trustme certificate for 127.0.0.1 and localhost
  (`ca_path` is the CA's PEM file);
* `closed` counts the connections that ended (on its side), so a test can see an idle tunnel cut.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve


@dataclass
class SeenUpgrade:
    path: str
    headers: list[tuple[str, str]]
    peer: tuple[str, int]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class WebSocketProvider:
    def __init__(self, tls: bool = False, workdir: Path | None = None) -> None:
        self.upgrades: list[SeenUpgrade] = []
        self.closed = 0
        self.open = 0
        self._refusal: tuple[int, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self.ca_path: Path | None = None
        context = None
        if tls:
            assert workdir is not None, "a TLS provider needs a directory for its CA file"
            ca = trustme.CA()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
            self.ca_path = workdir / f"ws-provider-ca-{id(self)}.pem"
            ca.cert_pem.write_to_path(str(self.ca_path))
        self.tls = tls
        self._server: Server = serve(
            self._handle,
            "127.0.0.1",
            0,
            ssl=context,
            process_request=self._process_request,
            select_subprotocol=self._subprotocol,
            max_size=None,
            ping_interval=None,
            compression="deflate",
        )
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- life -------------------------------------------------------------------------------------
    def __enter__(self) -> WebSocketProvider:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._thread.join(5)

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # -- behaviour --------------------------------------------------------------------------------
    def refuse(self, status: int | None, body: dict[str, Any] | None = None) -> None:
        """Answer every upgrade with `status` and `body` (None: accept again)."""
        self._refusal = None if status is None else (status, body or {"error": {"message": "refused"}})

    def last(self) -> SeenUpgrade:
        assert self.upgrades, "the provider saw no upgrade"
        return self.upgrades[-1]

    def wait_closed(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.closed >= count:
                return True
            time.sleep(0.02)
        return False

    # -- the server's callbacks -------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        headers = [(name.lower(), value) for name, value in request.headers.raw_items()]
        peer = connection.remote_address
        with self._lock:
            self.upgrades.append(SeenUpgrade(request.path, headers, (str(peer[0]), int(peer[1]))))
        if self._refusal is None:
            return None
        status, body = self._refusal
        payload = json.dumps(body).encode()
        reasons = {401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests", 500: "Internal Server Error"}
        response_headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return Response(status, reasons.get(status, "Refused"), response_headers, payload)

    @staticmethod
    def _subprotocol(connection: ServerConnection, offered: Any) -> Any:
        return "chat" if "chat" in offered else None

    def _handle(self, connection: ServerConnection) -> None:
        with self._lock:
            self.open += 1
        try:
            for message in connection:
                if isinstance(message, str) and message.startswith("close:"):
                    _, code, reason = message.split(":", 2)
                    connection.close(int(code), reason)
                    return
                connection.send(message)
        except Exception:  # noqa: BLE001 - a cut connection ends the handler; the test looks at `closed`
            pass
        finally:
            with self._lock:
                self.open -= 1
                self.closed += 1
