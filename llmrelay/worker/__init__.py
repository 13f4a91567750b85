"""The worker process: serves the listening sockets it was handed, on the config it was sent."""
