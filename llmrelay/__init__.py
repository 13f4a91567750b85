"""llmrelay: a production relay for LLM provider APIs.

The data plane (config, protocol adapters, routing, credentials, upstream pools, the relay and the
worker process) lives in this package; the control plane lives in the sibling package `supervisor`.
"""

__version__ = "0.1.0"
