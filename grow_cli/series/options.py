"""The options of `grow series`, declared once (flag, help, default).

`PlanArgument` and `SeriesOptions` decide what the series is (its identity, recorded in DIR/series.json: a re-run
with different values is refused), `LaunchOptions` how and where its steps run (free to change
between re-runs: a series started on this node may be finished under torchrun).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Optional

import typer

from grow_cli.options import option

SERIES = "Series"
RUNS = "Training runs"
EVAL = "Evaluation"
LAUNCH = "Launch"

DEFAULT_WIDTH = "aki"  # the reference method's operators (bert2BERT AKI width, stacked depth)
DEFAULT_DEPTH = "stack"


@dataclass(frozen=True)
class PlanArgument:
    """The series' plan: the one positional argument."""

    plan: Annotated[str, typer.Argument(help="Plan file written by `grow plan --out`.", show_default=False)]


@dataclass(frozen=True, kw_only=True)
class SeriesOptions:
    """What the series is besides its plan: the data, the operators, the baselines, the runs."""

    data: Annotated[str, option("--data", "Prepared data prefix (`grow data prepare --out PREFIX`).", SERIES)]
    out: Annotated[str, option("--out", "Series directory: series.json, runs/, init/, scratch/, logs/, report/.", SERIES)]
    width: Annotated[str, option("--width", "Width growth operator of `grow expand`: aki, fpi or iso.", SERIES)] = DEFAULT_WIDTH
    depth: Annotated[str, option("--depth", "Depth growth operator of `grow expand`: stack or identity.", SERIES)] = DEFAULT_DEPTH
    with_scratch: Annotated[
        bool, option("--with-scratch", "Also train sizes 2..n from scratch at their scratch budgets (the baselines).", SERIES)
    ] = False
    scratch_lr: Annotated[
        Optional[float],
        option("--scratch-lr", "Peak learning rate of the from-scratch baselines (default: the plan's rate for the size, 3e-4 for 8B on the reference ladder).", SERIES),
    ] = None
    seed: Annotated[int, option("--seed", "Seed of initialisation and data order of every run.", RUNS)] = 1234
    log_interval: Annotated[int, option("--log-interval", "Log every N steps.", RUNS)] = 10
    eval_interval: Annotated[int, option("--eval-interval", "Validate every N steps (and at the end).", RUNS)] = 1000
    eval_iters: Annotated[int, option("--eval-iters", "Global batches of validation data per validation.", RUNS)] = 10
    save_interval: Annotated[int, option("--save-interval", "Checkpoint every N steps (and at the end).", RUNS)] = 1000
    eval_data: Annotated[
        Optional[str], option("--eval-data", "Prepared prefix whose validation split the final evaluation uses (default --data).", EVAL)
    ] = None
    eval_tokens: Annotated[
        Optional[int], option("--eval-tokens", "Evaluate at most this many validation tokens per member.", EVAL)
    ] = None
    eval_tasks: Annotated[
        Optional[str], option("--eval-tasks", "Zero-shot tasks of `grow eval --tasks` (needs --task-data).", EVAL)
    ] = None
    task_data: Annotated[Optional[str], option("--task-data", "Directory of local task files (`grow eval --task-data`).", EVAL)] = None

    def identity(self) -> dict:
        """The recorded options (everything here but --out decides the checkpoints or the report)."""
        return {key: value for key, value in asdict(self).items() if key != "out"}


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    """How the steps run; not part of the series' identity."""

    nproc_per_node: Annotated[
        int, option("--nproc-per-node", "Processes for the training and evaluation steps (torchrun when > 1).", LAUNCH)
    ] = 1
    isolate: Annotated[
        bool,
        option("--isolate", "Run every step as its own `grow` process, as --dry-run prints it (without it, steps on one process "
               "per node run inside this one, saving each step's 4-5 s of importing torch and megatron-core; the results are the same).", LAUNCH),
    ] = False
    slurm: Annotated[bool, option("--slurm", "Write one sbatch job per step into DIR/slurm/, chained with --dependency=afterok.", LAUNCH)] = False
    submit: Annotated[bool, option("--submit", "With --slurm: submit the chain with sbatch.", LAUNCH)] = False
    nodes: Annotated[int, option("--nodes", "With --slurm: nodes per training job.", LAUNCH)] = 1
    gpus_per_node: Annotated[int, option("--gpus-per-node", "With --slurm: GPUs per node.", LAUNCH)] = 8
    time: Annotated[Optional[str], option("--time", "With --slurm: time limit of each job, e.g. 24:00:00.", LAUNCH)] = None
    partition: Annotated[Optional[str], option("--partition", "With --slurm: partition.", LAUNCH)] = None
    account: Annotated[Optional[str], option("--account", "With --slurm: account.", LAUNCH)] = None
    setup: Annotated[Optional[list[str]], option("--setup", "With --slurm: shell line before srun (repeatable).", LAUNCH)] = None
    dry_run: Annotated[bool, option("--dry-run", "List the steps, their state and their commands; run nothing.", LAUNCH)] = False
    as_json: Annotated[bool, option("--json", "Print the series' state (or --dry-run's steps) as JSON on stdout.", LAUNCH)] = False
    force: Annotated[
        bool, option("--force", "Start over when DIR holds a series with other options or another plan (replaces its outputs).", LAUNCH)
    ] = False
