"""The `grow` command line: one subcommand per job, each defined next to the code it drives.

Every `cli.py` imported here keeps torch and megatron out of its module scope, so `grow --help`
and `grow plan` start instantly; heavy imports happen inside the command that needs them.
"""

from __future__ import annotations

import sys

import typer

from grow_cli.errors import GrowError

app = typer.Typer(
    name="grow",
    help=(
        "Build a series of language models (say 1B, 2B, 4B, 8B) for the price of training the "
        "largest: train the smallest, expand it into the next size, keep training, repeat.\n\n"
        "Typical flow: grow plan -> grow data prepare -> grow pretrain -> grow expand -> "
        "grow pretrain -> grow eval."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# ---- subcommands, in the order data flows: plan -> data -> pretrain -> expand -> eval -> export ----
from grow_cli.data.cli import app as data_app  # noqa: E402
from grow_cli.evaluation.cli import EPILOG as EVAL_EPILOG, eval_command  # noqa: E402
from grow_cli.expansion.cli import expand_command  # noqa: E402
from grow_cli.interop.cli import register as register_interop  # noqa: E402
from grow_cli.planning.cli import plan_command  # noqa: E402
from grow_cli.training.cli import register as register_training  # noqa: E402

app.command("plan")(plan_command)
app.add_typer(data_app, name="data")
register_training(app)  # pretrain, slurm
app.command("expand")(expand_command)
app.command("eval", epilog=EVAL_EPILOG)(eval_command)
register_interop(app)  # export, import, megatron-args


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    _quiet_library_warnings()
    try:
        app()
    except GrowError as error:
        rank = _rank()
        if rank == 0:
            typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)


def _quiet_library_warnings() -> None:
    """Warnings that say nothing about the user's run: megatron announcing its torch fallbacks
    when Transformer Engine/Apex are absent (expected on CPU), a deprecation megatron raises
    about its own default, its access to a non-leaf `.grad`, and torch deprecations inside
    megatron's own collectives."""
    import warnings

    for message in (
        ".*Transformer Engine and Apex are not installed.*",
        "Apex is not installed.*",
        "full scope is deprecated.*",
        "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed.*",
        "Please use DTensor instead and we are deprecating ShardedTensor.*",
    ):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch\.distributed|megatron)")


def _rank() -> int:
    from grow_cli.runtime.env import rank

    return rank()


if __name__ == "__main__":
    main()
