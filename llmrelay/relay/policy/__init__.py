"""Request policy per endpoint: CORS and the processors (`[[endpoints.NAME.processors]]`).

What a plugin (entry point group `llmrelay.processors`) uses: `ProcessorRequest` and `Refused`.
"""

from llmrelay.relay.policy.request import ProcessorRequest, Refused

__all__ = ["ProcessorRequest", "Refused"]
