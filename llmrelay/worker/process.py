"""A worker: accept loops over the inherited sockets, one task per connection, a control-pipe loop.

The worker receives its listening sockets as inherited file descriptors (the supervisor binds them,
one SO_REUSEPORT socket per slot, and keeps them open), and its config as the first message on the
control pipe. It answers `Ready`, sends a `Heartbeat` every few seconds, switches config generations
on `Config`, and on `Drain`, or when the pipe closes because the supervisor is gone, stops accepting,
lets in-flight requests finish within the deadline, and exits.

Its metrics (`observe.recorder`) are recorded as requests end and sent as a `MetricsDelta` at most
once a second, and once more after the drain, before `Stopped`. SIGUSR1 reopens its log files.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time

import trio

from llmrelay import __version__
from llmrelay.config.resolved import RelayConfig
from llmrelay.control import (
    EXIT_BOOT_FAILED,
    EXIT_OK,
    Config,
    ConfigApplied,
    ConfigRejected,
    ControlChannel,
    ControlMessage,
    Drain,
    FrameError,
    HealthTable,
    KeyUpdate,
    LeaseGrant,
    LeaseRecall,
    Heartbeat,
    Ready,
    Stopped,
    WorkerInfo,
    WorkerStats,
)
from llmrelay.proto.messages import Headers
from llmrelay.server.connection import ConnectionServer, ListenerRuntime, Serving
from llmrelay.server.listener import Acceptor
from llmrelay.server.state import ServerState
from llmrelay.config.schema import ListenSection
from llmrelay.io.timers import TimerWheel, wheel
from llmrelay.io.tls import server_context
from llmrelay.config.schema import ServerSection
from llmrelay.logs import LogSetupError, configure_logging, dropped_lines, reopen_log_files
from llmrelay.observe import catalog
from llmrelay.observe.recorder import MetricsRecorder
from llmrelay.worker.accounts import Accounts
from llmrelay.worker.health import health_view
from llmrelay.worker.memory import rss_bytes, settle_garbage_collector
from llmrelay.relay.handler import Relay
from llmrelay.relay.observer import UpstreamObserver
from llmrelay.relay.runtime import RelayRuntime
from llmrelay.relay.streams import ResponseRegistry

log = logging.getLogger("llmrelay.worker")

CUT_GRACE = 2.0  # seconds after the drain deadline: time for cut responses to send their error events
METRICS_INTERVAL = 1.0  # at most one MetricsDelta a second


class Worker:
    def __init__(self, control: trio.SocketStream, listen_fds: list[int], slot: int) -> None:
        self._control = ControlChannel(control)
        self._listen_fds = listen_fds
        self.slot = slot
        self.state = ServerState()
        self.observer = UpstreamObserver()
        self.responses = ResponseRegistry()
        self.recorder = MetricsRecorder()
        self.accounts = Accounts()  # limits (leases from the supervisor) and usage accounting
        self.accounts.attach(self._send)
        self.listener_connections: dict[str, int] = {}  # open client connections by listener address
        self._log_settings: tuple[object, ...] | None = None
        self._started = time.monotonic()
        self._runtime: RelayRuntime | None = None
        self._relay: Relay | None = None
        self._table: HealthTable | None = None
        self._serving: Serving | None = None
        self._listeners: list[ListenerRuntime] = []  # in the order of the listening descriptors
        self._wheel = TimerWheel()  # replaced by the run's own wheel once trio runs
        self._connections = ConnectionServer(self.state, lambda: self._wheel)
        self._early: list[ControlMessage] = []  # read with the first config, handled once serving

    # -- control pipe -----------------------------------------------------------------------------
    async def _send(self, message: object) -> None:
        await self._control.send(message)  # False: the supervisor is gone; the read loop notices and drains

    async def _receive(self) -> list[ControlMessage] | None:
        return await self._control.receive()

    async def _first_config(self) -> Config | None:
        """The newest config sent before the worker serves (a reload may follow the first at once)."""
        while True:
            messages = await self._receive()
            if messages is None:
                return None
            configs = [message for message in messages if isinstance(message, Config)]
            if configs:
                self._early = [message for message in messages if not isinstance(message, Config)]
                return configs[-1]

    # -- config and health ----------------------------------------------------------------------
    async def _apply_config(self, message: Config) -> bool:
        """Serve `message` from now on, or report why not and keep the generation in service.

        Building a runtime opens files the config names (CA bundles): a file that was readable when the
        supervisor validated the config may not be here. Whatever goes wrong is reported over the pipe
        (the supervisor rolls a reload back), never a reason to die in a loop.
        """
        try:
            runtime = RelayRuntime(message.config, message.generation)
            listeners = self._listeners_for(message.config)
        except Exception as exc:
            error = _describe(exc)
            log.error("cannot apply config generation %d: %s", message.generation, error)
            await self._send(ConfigRejected(generation=message.generation, error=error))
            return False
        previous = self._runtime
        runtime.apply_health(self._table, time.time())  # (a table of an older generation: names that stayed)
        self._runtime = runtime
        self._listeners = listeners
        self.responses.keepalive_interval = message.config.server.drain_keepalive_interval
        self.recorder.configure(message.config.server.metrics)
        self.accounts.admissions.configure(message.config.limits)
        self._configure_logs(message.config.server)
        if self._relay is None:
            self._relay = Relay(
                runtime, self.health, self.observer, self.responses, self.recorder, self.accounts.admissions, self.accounts.usage
            )
        else:
            self._relay.runtime = runtime
        self._serving = Serving(self._relay, message.config.client, message.config.server.http2)
        if previous is not None:
            await previous.retire()
        log.info("serving config generation %d (%d endpoints)", message.generation, len(runtime.endpoints))
        await self._send(ConfigApplied(generation=message.generation))
        return True

    def _configure_logs(self, server: ServerSection) -> None:
        """The config's log format and files (again when a reload changes them)."""
        settings = (server.log_level, server.log_format, server.access_log_file, server.error_log_file)
        if settings == self._log_settings:
            return
        try:
            configure_logging(server.log_level, server)
        except LogSetupError as exc:
            log.error("%s; logging where it did", exc)
            return
        self._log_settings = settings

    def _listeners_for(self, config: RelayConfig) -> list[ListenerRuntime]:
        """The listeners of `config` with their TLS contexts (certificates and keys read again: a
        reload renews them). A config whose listeners are not this worker's sockets (a reload that
        moves them, before this worker is replaced) keeps the listeners it has."""
        if self._listeners and [(l.config.host, l.config.port) for l in self._listeners] != [
            (l.host, l.port) for l in config.listeners
        ]:
            return self._listeners
        http2 = config.server.http2.enabled
        return [ListenerRuntime(l, None if l.tls is None else server_context(l.tls, http2)) for l in config.listeners]

    def _apply_health(self, table: HealthTable) -> None:
        self._table = table
        if self._runtime is not None:
            self._runtime.apply_health(table, time.time())
        self.observer.shared_view(
            {
                (endpoint, upstream)
                for endpoint, shared in table.endpoints.items()
                for upstream, health in shared.upstreams.items()
                if health.consecutive_failures or health.state == "ejected"
            }
        )

    def _apply_key_update(self, message: KeyUpdate) -> None:
        """A refreshable key's command ran in the supervisor: take a new value (this generation's), and
        wake the requests that asked."""
        if message.changed and self._runtime is not None:
            self._runtime.refreshed_key(message, time.time())
        self.observer.key_updated(message.endpoint, message.upstream, message.key)

    def _own_info(self) -> WorkerInfo:
        stats = self.stats()
        return WorkerInfo(
            pid=os.getpid(),
            slot=self.slot,
            state="draining" if self.state.draining else "serving",
            uptime=stats.uptime,
            connections=stats.connections,
            in_flight=stats.requests_in_flight,
            requests_total=stats.requests_total,
            version=__version__,
            generation=stats.generation,
        )

    def health(self, target: str = "/health") -> tuple[int, dict[str, object], Headers]:
        """`GET /health`: the shared view (see `health`), its status code, and who answered."""
        code, payload = health_view(self._runtime, self._table, self._own_info, target)
        headers = [
            (b"cache-control", b"no-store"),
            (b"x-llmrelay-worker", str(os.getpid()).encode()),
            (b"x-llmrelay-worker-state", b"draining" if self.state.draining else b"serving"),
        ]
        return code, payload, headers

    def stats(self) -> WorkerStats:
        return WorkerStats(
            connections=self.state.connections,
            requests_in_flight=self.state.requests_in_flight,
            requests_total=self.state.requests_total,
            generation=self._runtime.generation if self._runtime else 0,
            rss_bytes=rss_bytes(),
            uptime=round(time.monotonic() - self._started, 3),
            draining=self.state.draining,
        )

    # -- serving ------------------------------------------------------------------------------------
    async def _serve_connection(self, sock: socket.socket, index: int) -> None:
        assert self._serving is not None
        listeners = self._listeners
        listener = listeners[index] if index < len(listeners) else ListenerRuntime(_PLAIN, None)
        address = listener.config.address
        counts = self.listener_connections
        counts[address] = counts.get(address, 0) + 1
        try:
            await self._connections.serve(sock, listener, self._serving)
        finally:
            counts[address] -= 1

    # -- metrics ------------------------------------------------------------------------------------
    def _gauges(self) -> list[tuple[str, tuple[str, ...], float]]:
        gauges: list[tuple[str, tuple[str, ...], float]] = [(catalog.IN_FLIGHT.name, (), self.state.requests_in_flight)]
        for address, count in self.listener_connections.items():
            gauges.append((catalog.CONNECTIONS.name, (address,), count))
        if self._relay is not None:
            for pair, count in self._relay.upstream_in_flight.items():
                gauges.append((catalog.UPSTREAM_IN_FLIGHT.name, pair, count))
        return gauges

    async def _send_metrics(self) -> None:
        delta = self.recorder.take_delta(os.getpid(), self._gauges(), dropped_lines(), self.accounts.admissions.refusals)
        if delta is not None:
            await self._send(delta)

    async def _metrics_loop(self) -> None:
        while True:
            await trio.sleep(METRICS_INTERVAL)
            await self._send_metrics()

    async def _heartbeat_loop(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            await self._send(Heartbeat(pid=os.getpid(), stats=self.stats()))

    async def _report_upstream_events(self) -> None:
        async for event in self.observer.events:
            await self._send(event)

    async def run(self) -> int:
        first = await self._first_config()
        if first is None:
            log.error("control pipe closed before a config arrived")
            return EXIT_BOOT_FAILED
        if not await self._apply_config(first):
            return EXIT_BOOT_FAILED
        settle_garbage_collector()
        server = first.config.server
        acceptor = Acceptor(self._serve_connection, server.max_connections)
        listeners = [socket.socket(fileno=fd) for fd in self._listen_fds]
        for listener in listeners:
            listener.setblocking(False)
        self._wheel = wheel()
        cut = 0
        async with trio.open_nursery() as connections:
            self.state.watchers = connections
            async with trio.open_nursery() as background:
                accept_scope = trio.CancelScope()

                async def accept_all() -> None:
                    with accept_scope:
                        async with trio.open_nursery() as accepters:
                            for index, listener in enumerate(listeners):
                                accepters.start_soon(acceptor.accept_loop, listener, connections, index)

                drain_requests, drain_wanted = trio.open_memory_channel[Drain](2)
                background.start_soon(accept_all)
                background.start_soon(self._heartbeat_loop, server.heartbeat_interval)
                background.start_soon(self._metrics_loop)
                background.start_soon(self.accounts.run)
                background.start_soon(self._report_upstream_events)
                background.start_soon(self._control_loop, drain_requests)
                background.start_soon(self._signal_loop, drain_requests)
                await self._send(Ready(pid=os.getpid(), version=__version__))
                log.info("worker slot %d ready (pid %d)", self.slot, os.getpid())
                drain = await drain_wanted.receive()
                accept_scope.cancel()
                for index, listener in enumerate(listeners):
                    acceptor.sweep(listener, connections, index)
                    trio.lowlevel.notify_closing(listener)
                    listener.close()
                self.state.start_draining(drain.close_idle)
                background.start_soon(self.responses.keepalive_loop)
                log.info(
                    "draining: %d connections, %d requests in flight, deadline %g s",
                    self.state.connections,
                    self.state.requests_in_flight,
                    drain.timeout,
                )
                with trio.move_on_after(drain.timeout) as deadline:
                    await self.state.wait_all_closed()
                if deadline.cancelled_caught:
                    cut = self.responses.cut_all()
                    log.warning("drain deadline passed: cutting %d responses in flight", cut)
                    self.state.start_draining(close_idle=True)
                    with trio.move_on_after(CUT_GRACE):
                        await self.state.wait_all_closed()
                    connections.cancel_scope.cancel()
                background.cancel_scope.cancel()
        if self._runtime is not None:
            await self._runtime.aclose()
        await self.accounts.final()  # leases given back, the last corrections and usage
        await self._send_metrics()  # what the last requests added
        await self._send(Stopped(pid=os.getpid(), cut=cut))
        log.info("worker slot %d stopped", self.slot)
        return EXIT_OK

    async def _signal_loop(self, drain_requests: trio.MemorySendChannel[Drain]) -> None:
        """SIGTERM sent to the worker itself (a process-group kill, an operator) drains it too;
        SIGUSR1 reopens the log files (after logrotate renamed them)."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    reopen_log_files()
                    continue
                log.info("received SIGTERM: draining")
                timeout = self._runtime.config.server.drain_timeout if self._runtime else 0.0
                await drain_requests.send(Drain(timeout=timeout, close_idle=True))
                return

    async def _control_loop(self, drain_requests: trio.MemorySendChannel[Drain]) -> None:
        """Handle supervisor messages; pass on a Drain, or make one when the pipe closes."""
        while True:
            try:
                messages, self._early = self._early or await self._receive(), []
            except FrameError as exc:
                log.error("control pipe: %s; draining", exc)
                messages = None
            if messages is None:
                log.warning("control pipe closed (supervisor gone): draining")
                timeout = self._runtime.config.server.drain_timeout if self._runtime else 0.0
                await drain_requests.send(Drain(timeout=timeout, close_idle=True))
                return
            for message in messages:
                if isinstance(message, Drain):
                    await drain_requests.send(message)
                elif isinstance(message, Config):
                    await self._apply_config(message)
                elif isinstance(message, HealthTable):
                    self._apply_health(message)
                elif isinstance(message, LeaseGrant):
                    self.accounts.admissions.granted(message)
                elif isinstance(message, LeaseRecall):
                    await self.accounts.recall(message)
                elif isinstance(message, KeyUpdate):
                    self._apply_key_update(message)


_PLAIN = ListenSection(port=0)  # (a descriptor the config does not describe: served as plain HTTP)


def _describe(exc: BaseException) -> str:
    """One line for the log and the supervisor: the exception's type and message, cut short."""
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"[:500]
