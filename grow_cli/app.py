"""The `grow` command line: one subcommand per job, each defined next to the code it drives.

Every `cli.py` imported here keeps torch and megatron out of its module scope, so `grow --help`
and `grow plan` start instantly; heavy imports happen inside the command that needs them.
"""

from __future__ import annotations

import os
import sys

import typer

from grow_cli.errors import GrowError, user_path_error

app = typer.Typer(
    name="grow",
    help=(
        "Build a series of language models (say 1B, 2B, 4B, 8B) for the price of training the "
        "largest: train the smallest, expand it into the next size, keep training, repeat.\n\n"
        "Typical flow: grow plan -> grow data prepare -> grow pretrain -> grow expand -> "
        "grow pretrain -> grow eval, or all of it at once: grow series."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

@app.callback()
def _global_options(
    verify_checksums: bool = typer.Option(
        True,
        "--verify-checksums/--no-verify-checksums",
        help="Check every checkpoint read against the content hashes recorded when it was written.",
    ),
) -> None:
    """Options for every command; they reach torchrun's workers through the environment."""
    from grow_cli.checkpoint.integrity import VERIFY_ENV

    if not verify_checksums:
        os.environ[VERIFY_ENV] = "0"


# ---- subcommands, in the order data flows: plan -> data -> pretrain -> expand -> eval -> export ----
from grow_cli.data.cli import app as data_app  # noqa: E402
from grow_cli.distill.cli import register as register_distill  # noqa: E402
from grow_cli.evaluation.cli import EPILOG as EVAL_EPILOG, eval_command  # noqa: E402
from grow_cli.expansion.cli import expand_command  # noqa: E402
from grow_cli.interop.cli import register as register_interop  # noqa: E402
from grow_cli.planning.cli import plan_command  # noqa: E402
from grow_cli.series.cli import EPILOG as SERIES_EPILOG, HELP as SERIES_HELP, series_command  # noqa: E402
from grow_cli.training.cli import register as register_training  # noqa: E402

app.command("plan")(plan_command)
app.add_typer(data_app, name="data")
register_training(app)  # pretrain, slurm
app.command("expand")(expand_command)
app.command("eval", epilog=EVAL_EPILOG)(eval_command)
register_distill(app)  # distill
register_interop(app)  # export, import, megatron-args
app.command("series", help=SERIES_HELP, epilog=SERIES_EPILOG, no_args_is_help=True)(series_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2.

    So does an OSError on a path the user gave (read-only or full disk, permissions): the
    command cannot fix it, the user can. An OSError on the installation's own files is a bug
    and keeps its traceback. `argv` (default: the command line) lets `grow series` run a step's
    command inside its own process, exactly as `grow ARGV...` would run it; like any click
    program this ends in SystemExit with the exit status."""
    _quiet_library_warnings()
    try:
        app(args=argv)
    except GrowError as error:
        _exit_with(str(error), error.exit_code)
    except OSError as error:
        line = user_path_error(error, installed=(sys.prefix, os.path.dirname(__file__)))
        if line is None:
            raise
        _exit_with(line, GrowError.exit_code)


def _exit_with(message: str, code: int) -> None:
    if _rank() == 0:
        typer.echo(f"error: {message}", err=True)
    sys.exit(code)


# Log lines that say nothing about the user's run, as (logger, start of the message): torch finding
# a CUDA toolkit but no GPU (a CUDA build of torch on a login node or a CPU bench; megatron-core
# imports `torch.utils.cpp_extension` at import from 0.17 on), and megatron-core 0.19's notices to
# its own developers (GPTModel's successor, its async saver, DDP's parameter layout).
_QUIET_LOG_LINES = (
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
    ("megatron.core.models.gpt.gpt_model", "GPTModel IS DEPRECATED"),
    ("megatron.core.dist_checkpointing.strategies.torch", "MCore's async save is deprecated"),
    ("megatron.core.distributed.distributed_data_parallel", "DistributedDataParallel: full_param_layout not provided"),
)


_quieted = False


def _quiet_library_warnings() -> None:
    """Warnings that say nothing about the user's run: megatron announcing its torch fallbacks
    when Transformer Engine/Apex are absent (expected on CPU), a deprecation megatron raises
    about its own default, its access to a non-leaf `.grad`, torch deprecations inside
    megatron's own collectives, and the log lines above."""
    import logging
    import warnings

    global _quieted
    if _quieted:  # a series runs many commands in one process: one set of filters is enough
        return
    _quieted = True
    for name, start in _QUIET_LOG_LINES:
        logging.getLogger(name).addFilter(lambda record, start=start: not record.getMessage().startswith(start))
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
