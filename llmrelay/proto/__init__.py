"""Protocols, sans-IO: bytes in, events and bytes out; no trio, no sockets.

`messages` holds what every protocol shares (a request head, the response phases); `errors` the
exceptions that carry the status a client gets; `h1/` the HTTP/1.1 server and client state machines
with their one framing. HTTP/2 and WebSocket land beside `h1/`.
"""
