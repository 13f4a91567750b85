"""The control plane of llmrelay: listening sockets, worker processes, signals, drains.

`main.run` is the entry point (`llmrelay serve`); `main` names the parts and the nurseries that own
their tasks. It imports `llmrelay.config` and `llmrelay.control`; nothing in the data plane imports it.
"""

from supervisor.main import run

__all__ = ["run"]
