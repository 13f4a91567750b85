"""`llmrelay completion bash|zsh|fish`: the shell completion script, from click's own mechanism.

The script calls `llmrelay` back with `_LLMRELAY_COMPLETE` set, and click answers with the commands,
options and choices of the installed version, so completions never go stale after an upgrade.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_LLMRELAY_COMPLETE"


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash: eval "$(llmrelay completion bash)"            (in ~/.bashrc)
    zsh:  eval "$(llmrelay completion zsh)"             (in ~/.zshrc)
    fish: llmrelay completion fish > ~/.config/fish/completions/llmrelay.fish
    """
    shell_class = get_completion_class(shell)
    assert shell_class is not None  # (click knows the three shells of SHELLS)
    root = ctx.find_root().command
    click.echo(shell_class(root, {}, "llmrelay", COMPLETE_VAR).source())
