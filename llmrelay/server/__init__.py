"""The worker's server side, trio glue over the sans-IO protocols: the accept loop (`listener`), the
protocol picker (`picker`), one driver per protocol (`h1`), the drain state shared by a worker's
connections (`state`), and the `Exchange` interface the relay is served through (`exchange`)."""
