"""Rate limits and budgets: the counters' arithmetic and the leases through which workers admit
requests without asking the supervisor for each one (sans-IO; the trio glue lives in the worker and
the supervisor)."""
