"""Entry point of a worker process: `python -m llmrelay.worker --control-fd N --listen-fd M ...`."""

from llmrelay.worker.process import main

if __name__ == "__main__":
    raise SystemExit(main())
