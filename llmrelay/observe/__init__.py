"""What the relay tells its operators: the metrics catalog both processes share (`catalog`), the
worker's recording of them, the access log and the log setup."""
