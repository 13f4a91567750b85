"""The admin listener's routes: `GET /metrics`, `/health`, `/status`, `/usage`, `POST /reload`, `/restart`.

Served by the supervisor itself (see `admin_http` for the server), so it answers while workers roll,
crash or drain. With `server.admin.auth_keys`, every route asks for `Authorization: Bearer <key>`
(compared in constant time with every configured key; 401 otherwise), before anything else is
looked at. An unknown path is 404, a known one with another method 405 (with `Allow`).

`POST /reload` and `POST /restart` do what SIGHUP and SIGUSR2 do, through the same jobs (so the
status file and `llmrelay reload` / `restart` see them too), and answer once the action has
finished: 200 with its outcome when it succeeded, 500 when it failed (a rejected config, a
successor that did not start), 503 when the supervisor is stopping. `/metrics` is 404 when
`[server.metrics] enabled = false`.

`GET /usage` (`?by=key|model|endpoint|upstream`) shows the usage accounting of the store the
supervisor hands over (`usage`: a function, since a reload may move the accounts between memory and
Redis); a `by` it does not know is 400, a store that cannot be read 503.

`follow` takes each applied config: the keys are resolved (in a thread: a key may be a
`$(command)`; one that does not resolve is logged and matches nothing) and the listener moves when
the address changed (`enabled = false` closes it).
"""

from __future__ import annotations

import hmac
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from llmrelay.config.resolved import RelayConfig
from llmrelay.config.schema import AdminSection
from llmrelay.config.secrets import SecretError, resolve_secret
from llmrelay.limits.store import StoreUnavailable, UsageStore
from supervisor.admin_http import (
    Address,
    AdminListener,
    AdminRequest,
    AdminResponse,
    error_response,
    json_response,
)
from supervisor.admin_views import AdminViews
from supervisor.metrics import exposition
from supervisor.slots import SlotTable
from supervisor.status import ActionStatus, StatusFile
from supervisor.usage import DIMENSIONS, CountingSince, UsageTable, usage_document

log = logging.getLogger("supervisor")

STOP_CHECK = 1.0  # how often a waiting POST looks whether a stop began


@dataclass(frozen=True)
class AdminActions:
    """What POST /reload and /restart start (in the supervisor: `Reloads.request`, `Arbiter.handle_usr2`)."""

    reload: Callable[[], None]
    restart: Callable[[], None]


def resolve_admin_keys(section: AdminSection) -> list[bytes]:
    """The admin keys' values (`$ENV`, `$(command)` resolved); those that fail are logged and left out."""
    keys: list[bytes] = []
    for index, value in enumerate(section.auth_keys):
        try:
            keys.append(resolve_secret(value).encode())
        except SecretError as exc:
            log.error("server.admin.auth_keys[%d]: %s; that key is refused", index, exc)
    return keys


def _fixed(store: UsageStore) -> Callable[[], UsageStore]:
    return lambda: store


class Admin:
    def __init__(
        self, views: AdminViews, table: SlotTable, status: StatusFile, usage: Callable[[], UsageStore] | None = None
    ) -> None:
        self.views = views
        self.table = table
        self.status = status
        # the store `/usage` reads, asked on every request (without one: an empty table)
        self.usage: Callable[[], UsageStore] = usage if usage is not None else _fixed(UsageTable())
        self.listener = AdminListener(self.handle, status.admin_bound)
        self._auth_required = False
        self._keys: list[bytes] = []
        self._actions: AdminActions | None = None
        self._routes: dict[str, tuple[str, Callable[[AdminRequest], Awaitable[AdminResponse]]]] = {
            "/metrics": ("GET", self.get_metrics),
            "/health": ("GET", self.get_health),
            "/status": ("GET", self.get_status),
            "/usage": ("GET", self.get_usage),
            "/reload": ("POST", self.post_reload),
            "/restart": ("POST", self.post_restart),
        }

    async def follow(self, config: RelayConfig) -> None:
        section = config.server.admin
        keys = await trio.to_thread.run_sync(resolve_admin_keys, section, abandon_on_cancel=True)
        self._auth_required, self._keys = bool(section.auth_keys), keys
        self.listener.follow(Address(section.host, section.port) if section.enabled else None)

    async def run(self, actions: AdminActions) -> None:
        """Serve until cancelled (the supervisor's exit)."""
        self._actions = actions
        await self.listener.run()

    # -- requests ---------------------------------------------------------------------------------
    def authorized(self, request: AdminRequest) -> bool:
        if not self._auth_required:
            return True
        scheme, _, given = (request.header(b"authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        token = given.strip().encode("latin-1")
        matched = False
        for key in self._keys:  # every key compared, whatever matched before
            matched |= hmac.compare_digest(token, key)
        return matched

    async def handle(self, request: AdminRequest) -> AdminResponse:
        if not self.authorized(request):
            return error_response(401, "a valid admin key is required", [(b"www-authenticate", b'Bearer realm="llmrelay-admin"')])
        route = self._routes.get(request.path)
        if route is None:
            return error_response(404, "no such admin route")
        method, handler = route
        if request.method != method:
            return error_response(405, f"{request.path} takes {method}", [(b"allow", method.encode())])
        return await handler(request)

    async def get_metrics(self, request: AdminRequest) -> AdminResponse:
        if not self.table.config.server.metrics.enabled:
            return error_response(404, "metrics are disabled ([server.metrics] enabled = false)")
        body, content_type = exposition(self.views.totals, self.views.live_state(), request.header(b"accept") or "")
        return AdminResponse(200, body, content_type)

    async def get_health(self, request: AdminRequest) -> AdminResponse:
        target = request.path + ("?" + request.query if request.query else "")
        code, payload = self.views.health(target)
        return json_response(code, payload)

    async def get_status(self, request: AdminRequest) -> AdminResponse:
        return json_response(200, self.views.status_document())

    async def get_usage(self, request: AdminRequest) -> AdminResponse:
        asked = urllib.parse.parse_qs(request.query, keep_blank_values=True).get("by", [])
        if len(asked) > 1 or (asked and asked[0] not in DIMENSIONS):
            return error_response(400, "by must be one of: " + ", ".join(DIMENSIONS))
        dimension = asked[0] if asked else None
        store = self.usage()
        try:
            rows = await store.rows()
        except StoreUnavailable as exc:
            return error_response(503, f"the usage store cannot be read: {exc}")
        since = store.since if isinstance(store, CountingSince) else self.views.started
        return json_response(200, usage_document(rows, dimension, since))

    async def post_reload(self, request: AdminRequest) -> AdminResponse:
        assert self._actions is not None
        log.info("reload requested on the admin listener")
        return await self._run_action("reload", self.status.reload, self._actions.reload, "applied")

    async def post_restart(self, request: AdminRequest) -> AdminResponse:
        assert self._actions is not None
        log.info("rolling replacement requested on the admin listener")
        return await self._run_action("restart", self.status.restart, self._actions.restart, "done")

    async def _run_action(self, name: str, action: ActionStatus, start: Callable[[], None], success: str) -> AdminResponse:
        if self.table.stopping:
            return error_response(503, "the supervisor is stopping")
        start()
        number = action.requested
        while action.finished < number:
            if self.table.stopping:
                return error_response(503, f"the supervisor began to stop before the {name} finished")
            with trio.move_on_after(STOP_CHECK):
                await self.status.wait_finished(action, number)
        ok = action.outcome == success
        body = {
            "action": name,
            "ok": ok,
            "outcome": action.outcome,
            "generation": action.generation,
            "summary": action.summary,
            "errors": action.errors,
        }
        return json_response(200 if ok else 500, body)
