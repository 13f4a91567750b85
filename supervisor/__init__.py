"""The control plane of llmrelay: listening sockets, worker processes, signals, drains, and the
operator's side (the admin listener, the aggregated metrics, the status overview).

`main.run` is the entry point (`llmrelay serve`); `main` names the parts and the nurseries that own
their tasks. It imports `llmrelay.config` and `llmrelay.control`, and for the admin listener
`llmrelay.observe.catalog`, `llmrelay.proto.h1` and the workers' `/health` view; nothing in the data
plane imports it.
"""

from supervisor.main import run

__all__ = ["run"]
