"""`python -m llmrelay` is the `llmrelay` command."""

from llmrelay.cli import main

main()
