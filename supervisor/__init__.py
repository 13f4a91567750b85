"""The control plane of llmrelay: listening sockets, worker processes, signals, drains.

It imports `llmrelay.config` and `llmrelay.control`; nothing in the data plane imports it.
"""

from supervisor.arbiter import Supervisor, run

__all__ = ["Supervisor", "run"]
