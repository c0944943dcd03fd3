"""A series of training runs: which checkpoints to evaluate and what each cost to train.

`grow pretrain --out RUN` writes `RUN/iter_XXXXXXX/` checkpoints and `RUN/metrics.jsonl`, whose
"valid" records carry the run's own cumulative model FLOPs (Megatron-LM's per-token convention)
and validation loss. A grown stage started from an expanded checkpoint, so its true cost also
includes every earlier stage: the lineage says which trained checkpoint each expansion read
(`source`, `source_iteration`), and that run's metrics say how many FLOPs had been spent by then.
Summing over the lineage puts growth and scratch curves on one compute axis (the reference
method's "loss vs FLOPs" figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grow_cli.checkpoint.metadata import CheckpointInfo
from grow_cli.checkpoint.rundir import METRICS_FILE, latest_checkpoint, read_metrics, run_directory
from grow_cli.errors import GrowError


@dataclass(frozen=True)
class RunCost:
    """Training cost of a checkpoint: FLOPs of its own run up to it, plus its ancestors' FLOPs."""

    own_flops: float
    inherited_flops: float

    @property
    def total(self) -> float:
        return self.own_flops + self.inherited_flops


def flops_at(run: Path, iteration: int) -> float | None:
    """The run's cumulative FLOPs at `iteration` (from the last record at or before it)."""
    best = None
    for record in read_metrics(run / METRICS_FILE):
        if record.get("kind") not in ("train", "valid") or record.get("iteration", -1) > iteration:
            continue
        if best is None or record["iteration"] >= best["iteration"]:
            best = record
    return None if best is None else float(best["flops"])


def training_cost(checkpoint: Path, info: CheckpointInfo) -> RunCost | None:
    """FLOPs spent to produce `checkpoint`; None when a run's metrics are not on disk."""
    run = run_directory(checkpoint)
    if run is None:
        return None
    own = flops_at(run, info.iteration)
    if own is None:
        return None
    inherited = 0.0
    for step in info.lineage:
        if step.op != "expand":
            continue
        source_run = run_directory(step.source) if step.source else None
        spent = flops_at(source_run, step.details.source_iteration) if source_run else None
        if spent is None:
            return None
        inherited += spent
    return RunCost(own_flops=own, inherited_flops=inherited)


def valid_curve(checkpoint: Path, cost: RunCost) -> tuple[list[float], list[float]]:
    """(cumulative FLOPs, validation loss) of the run that produced `checkpoint`, up to it."""
    run = run_directory(checkpoint)
    points = [(cost.inherited_flops + float(r["flops"]), float(r["loss"])) for r in read_metrics(run / METRICS_FILE, "valid")]
    limit = cost.total
    points = [p for p in points if p[0] <= limit * (1 + 1e-9)]
    return [p[0] for p in points], [p[1] for p in points]


def checkpoints_from_runs(plan_path: str, patterns: list[str]) -> list[Path]:
    """The newest checkpoint of each run `pattern.format(stage=NAME, index=I)` over the plan's
    stages; runs not (yet) on disk are skipped, none at all is an error."""
    from grow_cli.planning.planfile import load_plan

    plan = load_plan(plan_path)
    if not patterns:
        raise GrowError("--plan needs --runs PATTERN, e.g. --runs 'runs/{stage}' (one per method)")
    found = []
    for pattern in patterns:
        if "{stage}" not in pattern and "{index}" not in pattern:
            raise GrowError(f"--runs {pattern!r} names no stage: use {{stage}} (e.g. 2B) or {{index}} (1-based)")
        for stage in plan.stages:
            run = Path(pattern.format(stage=stage.name, index=stage.index))
            checkpoint = latest_checkpoint(run)
            if checkpoint is not None:
                found.append(checkpoint)
    if not found:
        raise GrowError(f"no checkpoint found in any run of {', '.join(patterns)} for the stages of {plan_path}")
    return found
