"""Is a step done? Decided from its output on disk, never from the state file alone.

A finished training step is a run directory whose newest checkpoint is at the run's last
iteration, of the plan stage's shape, grown from this series' expanded checkpoint (its lineage
names that checkpoint's id) and trained on the data window after its parent's. A finished
expansion is a checkpoint of the stage's shape whose lineage names the previous stage's final
checkpoint. The evaluation is done when eval.json covers exactly the members' final checkpoints.
An output that exists but does not pass is an error naming the step: it belongs to another series
(or was changed by hand), and silently re-using it would make the report wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

from grow_cli.checkpoint.metadata import CheckpointInfo, read_common, read_info
from grow_cli.checkpoint.rundir import latest_checkpoint
from grow_cli.errors import GrowError
from grow_cli.planning.planfile import Plan
from grow_cli.series.steps import EVAL, EXPAND, PRETRAIN, SCRATCH, SeriesLayout, Step


def final_checkpoint(run: Path) -> Path | None:
    """The run's checkpoint at its last iteration; None while it is unfinished (or absent)."""
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        return None
    train = read_common(checkpoint).get("train", {})
    planned = train.get("identity", {}).get("train_iters")
    done = planned is not None and train.get("state", {}).get("iteration") == planned
    return checkpoint if done else None


def _refuse(step: Step, what: str) -> None:
    raise GrowError(f"step {step.name}: {step.output} {what}; it is not this series' output: remove it or re-run with --force")


def _check_training(step: Step, info: CheckpointInfo, plan: Plan, layout: SeriesLayout) -> None:
    stage = plan.stage(step.stage)
    if info.shape.with_(seq_len=stage.shape.seq_len) != stage.shape:
        _refuse(step, f"holds a {info.shape.describe()} model, the plan's {stage.name} is {stage.shape.describe()}")
    last = info.lineage[-1]
    consumed = last.details.data_consumed
    if step.kind == PRETRAIN and stage.index > 1:
        grown = read_info(layout.init(stage.name))
        if last.source_id != grown.checkpoint_id:
            _refuse(step, f"was not trained from {layout.init(stage.name)}")
        parent = grown.data_consumed()
        expected = parent.end % parent.wrap if parent and parent.wrap else (parent.end if parent else 0)
        if consumed is None or parent is None or consumed.start != expected:
            _refuse(step, f"did not train on the data after its parent's (expected sample {expected} first)")
    elif last.source_id is not None or (consumed is not None and consumed.start != 0):
        _refuse(step, "is not a from-scratch run from the start of the data")


def step_done(step: Step, plan: Plan, layout: SeriesLayout, members: list[Step] | None = None) -> bool:
    """Whether `step`'s output is complete and this series' own; GrowError when it is someone else's."""
    if step.kind in (PRETRAIN, SCRATCH):
        checkpoint = final_checkpoint(step.output)
        if checkpoint is None:
            return False
        _check_training(step, read_info(checkpoint), plan, layout)
        return True
    if step.kind == EXPAND:
        if not step.output.exists():
            return False
        info = read_info(step.output)
        stage = plan.stage(step.stage)
        source = final_checkpoint(layout.run(plan.previous(stage).name))
        if info.shape != stage.shape:
            _refuse(step, f"holds a {info.shape.describe()} model, the plan's {stage.name} is {stage.shape.describe()}")
        if source is None or info.lineage[-1].source_id != read_info(source).checkpoint_id:
            _refuse(step, f"was not grown from the final checkpoint of {layout.run(plan.previous(stage).name)}")
        return True
    if step.kind == EVAL:
        if not step.output.is_file():
            return False
        record = json.loads(step.output.read_text())
        evaluated = {model["checkpoint"] for model in record.get("models", [record])}
        expected = {str(final_checkpoint(member.output)) for member in members or ()}
        return evaluated == expected
    raise ValueError(step.kind)
