"""HTTP/1.1, sans-IO: field syntax (`fields`), the one body framing (`framing`), the strict request
head parser (`head_guard`), the server connection state machine (`server`) and the client side
(`client`)."""
