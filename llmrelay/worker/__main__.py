"""Entry point of a worker process: `python -m llmrelay.worker --control-fd N --listen-fd M ...`.

The supervisor starts it with the control pipe's descriptor, one listening descriptor per listener,
and its slot; the worker takes SIGINT, SIGHUP and SIGUSR1 as the supervisor's to act on.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys

import trio

from llmrelay.control import EXIT_OK
from llmrelay.logs import configure_logging
from llmrelay.worker.process import Worker


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m llmrelay.worker")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", default=[])
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


async def _amain(args: argparse.Namespace) -> int:
    control_socket = socket.socket(fileno=args.control_fd)
    control = trio.SocketStream(trio.socket.from_stdlib_socket(control_socket))
    return await Worker(control, args.listen_fd, args.slot).run()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    # Terminal signals are the supervisor's to act on; it tells the worker what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # (until the signal loop takes it: reopening the logs)
    configure_logging(args.log_level)
    try:
        return trio.run(_amain, args)
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
