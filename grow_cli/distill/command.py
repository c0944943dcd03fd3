"""`grow distill` below the CLI: resolve, train with the distillation objective, report.

The training is `grow pretrain`'s loop (`training.loop.pretrain`) with `DistillObjective` and a
`distill` lineage step naming the teacher, so resume, checkpoints, metrics, signals and the
torchrun/SLURM launch are pretraining's own. When the run completes, the before/after report is
measured (`grow_cli.distill.report`); a pre-empted or --exit-interval run reports on its resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from grow_cli.distill.options import DistillOptions
from grow_cli.training.options import PretrainOptions

if TYPE_CHECKING:  # torch-importing modules, loaded inside run_distill
    from grow_cli.checkpoint.metadata import LineageStep
    from grow_cli.distill.config import DistillSettings
    from grow_cli.distill.report import DistillReport
    from grow_cli.training.config import TrainConfig
    from grow_cli.training.loop import TrainSummary


@dataclass(frozen=True)
class DistillResult:
    summary: TrainSummary
    report: DistillReport | None  # None: the run did not complete (pre-empted, --exit-interval)

    def to_json(self) -> dict:
        return {"train": self.summary.to_json(), "report": self.report.to_json() if self.report else None}


def lineage_step(config: TrainConfig, settings: DistillSettings) -> LineageStep:
    """The `distill` step: the teacher is its source."""
    from grow_cli.checkpoint.metadata import DistillDetails, LineageStep

    details = DistillDetails(
        data=config.data, train_iters=config.batch.train_iters, global_batch=config.batch.global_batch,
        tokens=config.batch.train_iters * config.tokens_per_iter, lr=config.optimizer.lr,
        min_lr=config.optimizer.min_lr, seed=config.seed, lam=settings.lam, gamma=settings.gamma,
        direction=settings.direction,
    )
    return LineageStep(op="distill", source=settings.teacher, source_id=settings.teacher_id, details=details)


def run_distill(options: DistillOptions, run: PretrainOptions) -> DistillResult:
    """Collective across the launch; every rank returns (the report only on rank 0)."""
    from grow_cli.distill.config import resolve_distill
    from grow_cli.distill.objective import DistillObjective
    from grow_cli.distill.report import measure
    from grow_cli.training.loop import pretrain

    from grow_cli.runtime.distributed import init_distributed, shutdown

    config, settings = resolve_distill(options, run)
    layout = config.parallel.layout
    init_distributed(layout.tp, layout.pp, seed=config.seed)  # one process group for training and report
    try:
        summary = pretrain(config, DistillObjective(config, settings), lineage_step(config, settings))
        report = measure(config, settings, summary.checkpoint) if summary.status == "completed" else None
    finally:
        shutdown()
    return DistillResult(summary, report)
