"""The control plane's language: the messages supervisor and workers exchange (`messages`), and the one
channel that carries them (`channel`). Both sides import this package and nothing else of each other."""

from llmrelay.control.channel import MAX_FRAME, ControlChannel, FrameError, FrameReader, encode_frame
from llmrelay.control.messages import (
    EXIT_BOOT_FAILED,
    EXIT_OK,
    Config,
    ConfigApplied,
    ConfigRejected,
    ControlMessage,
    Drain,
    EndpointHealth,
    HealthTable,
    Heartbeat,
    Message,
    Ready,
    Stopped,
    UpstreamEvent,
    WorkerInfo,
    WorkerStats,
)

__all__ = [
    "EXIT_BOOT_FAILED",
    "EXIT_OK",
    "MAX_FRAME",
    "Config",
    "ConfigApplied",
    "ConfigRejected",
    "ControlChannel",
    "ControlMessage",
    "Drain",
    "EndpointHealth",
    "FrameError",
    "FrameReader",
    "HealthTable",
    "Heartbeat",
    "Message",
    "Ready",
    "Stopped",
    "UpstreamEvent",
    "WorkerInfo",
    "WorkerStats",
    "encode_frame",
]
