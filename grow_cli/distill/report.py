"""Before and after: the teacher checkpoint and the distilled one measured by `grow eval`'s code.

Both are loaded as evaluation models and run through `grow eval`'s validation pass
(`evaluation.runner.evaluate_checkpoint`) on the first `report_tokens` tokens of the data's
validation split: C_model, the per-layer movement d_l, the final layer's movement, the validation
loss and the per-layer logit-lens loss, each before and after, plus `grow eval`'s movement and
lens figures with both models on them. Every rank of the launch evaluates (a DP replica repeats
its TP group's work on a few thousand tokens); rank 0 writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from grow_cli.distill.config import DistillSettings
from grow_cli.training.config import TrainConfig

REPORT_FILE = "distill_report.json"
PLOTS_DIR = "distill_plots"


@dataclass(frozen=True)
class Measures:
    """One model's side of the report."""

    checkpoint: str
    convergence: float  # C_model
    movement: list[float]  # d_l per layer
    final_movement: float  # d of the last layer
    valid_loss: float  # the model's own output (= the last state's lens) on the validation tokens
    lens_loss: list[float]  # per state: -1 = embedding, then each layer

    @classmethod
    def of(cls, report) -> "Measures":
        geometry = report.geometry
        return cls(
            checkpoint=report.checkpoint,
            convergence=geometry.convergence,
            movement=geometry.movement,
            final_movement=geometry.movement[-1],
            valid_loss=report.perplexity.loss,
            lens_loss=[row.loss for row in report.lens],
        )


@dataclass(frozen=True)
class DistillReport:
    before: Measures
    after: Measures
    tokens: int  # validation tokens the perplexity saw (the geometry: up to report_tokens)
    plots: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"before": asdict(self.before), "after": asdict(self.after), "tokens": self.tokens, "plots": list(self.plots)}


def measure(config: TrainConfig, settings: DistillSettings, distilled: str) -> DistillReport | None:
    """Evaluate teacher and `distilled` at the run's TP in the launch's process group (collective);
    write the JSON and figures into the run directory. Rank 0 alone gets the report back."""
    import torch

    from grow_cli.checkpoint.atomic import atomic_directory, write_json_atomic
    from grow_cli.dtypes import torch_dtype
    from grow_cli.evaluation.forward import load_eval_model
    from grow_cli.evaluation.plots import plot_lens, plot_movement
    from grow_cli.evaluation.runner import RunSettings, evaluate_checkpoint
    from grow_cli.evaluation.text import load_prepared_valid
    from grow_cli.runtime.distributed import init_distributed

    text = load_prepared_valid(config.data, settings.report_tokens)
    run_settings = RunSettings(diag_tokens=settings.report_tokens)
    runtime = init_distributed(tp=config.parallel.layout.tp, seed=config.seed)
    reports = []
    for path, when in ((settings.teacher, "before"), (distilled, "after")):
        model = load_eval_model(path, runtime, torch_dtype(config.model.dtype), tokenizer_vocab=config.shape.vocab)
        report = evaluate_checkpoint(model, text.tokenizer, text, [], [], run_settings)
        reports.append(replace(report, method=f"{report.method}, {when} distill"))
        del model
        if runtime.policy.cuda:
            torch.cuda.empty_cache()
    with atomic_directory(config.out / PLOTS_DIR, force=True, what="plots directory") as directory:
        if runtime.is_main:
            plot_movement(reports, directory / "movement.png")
            plot_lens(reports, directory / "lens.png")
    if not runtime.is_main:
        return None
    plots = tuple(str(config.out / PLOTS_DIR / name) for name in ("movement.png", "lens.png"))
    result = DistillReport(Measures.of(reports[0]), Measures.of(reports[1]), reports[1].perplexity.tokens, plots)
    write_json_atomic(config.out / REPORT_FILE, result.to_json())
    return result
