"""h2's server-side connection as the relay runs it: its configuration, and the two places where
h2's own behaviour is changed (see `ServerState`). `connection` wraps it with the relay's rules."""

from __future__ import annotations

from typing import Any

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from hyperframe.frame import GoAwayFrame


class ServerState(H2Connection):
    """h2's connection, with two changes:

    - it remembers how the last 1,024 streams closed (to tell a late frame on a closed stream from a
      protocol error) instead of 65,536: megabytes per long-lived connection;
    - a client's graceful GOAWAY leaves it open while streams the client opened are still being
      answered. That GOAWAY only says the client opens no more streams (its last-stream-id is about
      streams a server would push), but h2 would refuse to send anything after it.
    """

    MAX_CLOSED_STREAMS = 1024

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Any], list[ev.Event]]:
        result = super()._receive_goaway_frame(frame)
        if frame.error_code == 0 and any(stream.open for stream in self.streams.values()):
            self.state_machine.state = ConnectionState.SERVER_OPEN
        return result


def server_configuration() -> H2Configuration:
    # Inbound fields are checked by `request_head` in one pass (h2's checks would make a malformed
    # request a connection error, and cost a generator chain per field); outbound fields are built
    # clean by `response_fields`.
    return H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        split_outbound_cookies=False,
    )
