"""The steps of a series, decided from the plan and the options alone (no I/O).

For a plan of stages 1..n: `pretrain-<1>`, then for every later stage `expand-<i>` (the previous
stage's final checkpoint grown into stage i's shape) and `pretrain-<i>` (from the expanded weights,
on the data after everything its lineage read); with `--with-scratch`, `scratch-<i>` for stages
2..n (random weights, the stage's scratch budget, the scratch LR, from the start of the data); then
`eval` of every member. Each step is a `grow` command line and the path it produces, so the same
list drives the local runner, `--dry-run` and the SLURM chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grow_cli.planning.planfile import Plan, StagePlan
from grow_cli.series.options import SeriesOptions

PRETRAIN, EXPAND, SCRATCH, EVAL = "pretrain", "expand", "scratch", "eval"
TRAINING = (PRETRAIN, SCRATCH)


@dataclass(frozen=True)
class SeriesLayout:
    """Where a series directory keeps each output."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "series.json"

    def run(self, stage: str) -> Path:
        return self.root / "runs" / stage

    def init(self, stage: str) -> Path:
        return self.root / "init" / stage

    def scratch(self, stage: str) -> Path:
        return self.root / "scratch" / stage

    def log(self, step: str) -> Path:
        return self.root / "logs" / f"{step}.log"

    @property
    def eval_file(self) -> Path:
        return self.root / "eval.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    def outputs(self) -> list[Path]:
        """Everything a series writes besides its state file (what --force replaces)."""
        return [self.root / name for name in ("runs", "init", "scratch", "logs", "report", "slurm")] + [self.eval_file]


@dataclass(frozen=True)
class Step:
    """One command of the series and what it produces."""

    name: str  # "pretrain-2M"
    kind: str  # PRETRAIN, EXPAND, SCRATCH or EVAL
    stage: str | None  # the plan stage it trains or grows into (None: eval)
    argv: tuple[str, ...]  # `grow` arguments
    output: Path  # the run directory, checkpoint directory or eval file
    after: tuple[str, ...] = ()  # the steps whose outputs it reads
    parallel: bool = True  # may run under torchrun (expand runs as one process)

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "stage": self.stage, "command": ["grow", *self.argv],
                "output": str(self.output), "after": list(self.after)}


def _run_flags(options: SeriesOptions) -> list[str]:
    return [
        "--seed", str(options.seed), "--log-interval", str(options.log_interval),
        "--eval-interval", str(options.eval_interval), "--eval-iters", str(options.eval_iters),
        "--save-interval", str(options.save_interval), "--quiet",
    ]


def _pretrain(stage: StagePlan, plan_path: str, options: SeriesOptions, layout: SeriesLayout, previous: str | None) -> Step:
    argv = ["pretrain", "--plan", plan_path, "--stage", str(stage.index), "--data", options.data,
            "--out", str(layout.run(stage.name)), *_run_flags(options)]
    after: tuple[str, ...] = ()
    if previous is not None:
        argv += ["--init", str(layout.init(stage.name))]
        after = (f"{EXPAND}-{stage.name}",)
    return Step(f"{PRETRAIN}-{stage.name}", PRETRAIN, stage.name, tuple(argv), layout.run(stage.name), after)


def _expand(stage: StagePlan, previous: StagePlan, plan_path: str, options: SeriesOptions, layout: SeriesLayout) -> Step:
    argv = ["expand", str(layout.run(previous.name)), "--plan", plan_path, "--stage", str(stage.index),
            "--out", str(layout.init(stage.name)), "--width", options.width, "--depth", options.depth,
            "--seed", str(options.seed)]
    return Step(f"{EXPAND}-{stage.name}", EXPAND, stage.name, tuple(argv), layout.init(stage.name),
                (f"{PRETRAIN}-{previous.name}",), parallel=False)


def _scratch(stage: StagePlan, plan_path: str, options: SeriesOptions, layout: SeriesLayout) -> Step:
    """Without --scratch-lr the plan's LR and schedule of the size: the reference trains its 8B
    baseline at 3e-4, the ladder's rate for 8B."""
    argv = ["pretrain", "--plan", plan_path, "--stage", str(stage.index), "--from-scratch", "--data", options.data,
            "--out", str(layout.scratch(stage.name)), "--tokens", str(round(stage.tokens_scratch)), *_run_flags(options)]
    if options.scratch_lr is not None:
        argv += ["--lr", f"{options.scratch_lr:g}", "--min-lr", f"{options.scratch_lr / 10:g}"]
    return Step(f"{SCRATCH}-{stage.name}", SCRATCH, stage.name, tuple(argv), layout.scratch(stage.name))


def _eval(members: list[Step], options: SeriesOptions, layout: SeriesLayout) -> Step:
    argv = ["eval", *(str(step.output) for step in members), "--data", options.eval_data or options.data,
            "--no-layers", "--json"]
    if options.eval_tokens is not None:
        argv += ["--max-tokens", str(options.eval_tokens)]
    if options.eval_tasks:
        argv += ["--tasks", options.eval_tasks]
    if options.task_data:
        argv += ["--task-data", options.task_data]
    return Step(EVAL, EVAL, None, tuple(argv), layout.eval_file, tuple(step.name for step in members))


def series_steps(plan: Plan, plan_path: str, options: SeriesOptions, layout: SeriesLayout) -> list[Step]:
    """Every step in the order the local runner executes them (each after the ones it reads)."""
    steps: list[Step] = []
    previous: StagePlan | None = None
    for stage in plan.stages:
        if previous is not None:
            steps.append(_expand(stage, previous, plan_path, options, layout))
        steps.append(_pretrain(stage, plan_path, options, layout, previous.name if previous else None))
        previous = stage
    if options.with_scratch:
        steps += [_scratch(stage, plan_path, options, layout) for stage in plan.stages[1:]]
    members = [step for step in steps if step.kind in TRAINING]
    steps.append(_eval(members, options, layout))
    return steps
