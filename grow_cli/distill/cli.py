"""`grow distill CKPT --data PREFIX --out DIR`: self-distillation (spec §2). torch and megatron are
imported inside the command body only."""

from __future__ import annotations

import json

import typer

from grow_cli.distill.options import RUN_OPTIONS, DistillOptions
from grow_cli.options import command_from
from grow_cli.training.options import PretrainOptions, ReportOptions

HELP = (
    "Self-distillation for hidden-state convergence (spec §2): train the checkpoint so that every layer's "
    "logit lens matches the frozen original's output (L1) and hidden states move little from layer to layer "
    "(L2), L = L1 + λ·L2 with depth weights softmax(γ·l). It is `grow pretrain`'s loop (resume, checkpoints, "
    "metrics, torchrun/SLURM) with this loss; at the end it reports C_model, per-layer movement, validation "
    "loss and per-layer lens loss before and after, as `grow eval` measures them."
)
EPILOG = (
    "Examples:\n\n"
    "  grow distill runs/1B --data data/fwe --out runs/1B-distill\n\n"
    "  torchrun --nproc-per-node 8 -m grow_cli distill runs/8B --data data/fwe --out runs/8B-distill --tp 2\n\n"
    "See docs/distill.md."
)


@command_from(DistillOptions, RUN_OPTIONS, ReportOptions)
def distill_command(options: DistillOptions, run: PretrainOptions, report: ReportOptions) -> None:
    from grow_cli.distill.command import run_distill
    from grow_cli.runtime.env import is_main

    result = run_distill(options, run)
    if not is_main():
        return
    if report.as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print(result)


def _print(result) -> None:
    from rich.console import Console
    from rich.table import Table

    summary = result.summary
    console = Console()
    console.print(f"grow distill: {summary.status} at iteration {summary.iteration}/{summary.train_iters}, "
                  f"checkpoint {summary.checkpoint}")
    if result.report is None:
        console.print("no before/after report: the run did not complete (run the same command again to resume)")
        return
    before, after = result.report.before, result.report.after
    table = Table(title="before -> after (grow eval's measures on the validation split)")
    for column in ("", "before", "after"):
        table.add_column(column)
    rows = [
        ("C_model", before.convergence, after.convergence),
        ("final-layer movement", before.final_movement, after.final_movement),
        ("validation loss", before.valid_loss, after.valid_loss),
    ]
    for name, was, now in rows:
        table.add_row(name, f"{was:.4f}", f"{now:.4f}")
    for layer, (was, now) in enumerate(zip(before.movement, after.movement)):
        table.add_row(f"movement d_{layer}", f"{was:.4f}", f"{now:.4f}")
    for index, (was, now) in enumerate(zip(before.lens_loss, after.lens_loss)):
        table.add_row(f"lens loss, state {index - 1}", f"{was:.4f}", f"{now:.4f}")
    console.print(table)
    console.print("figures: " + ", ".join(result.report.plots))


def register(app: typer.Typer) -> None:
    app.command("distill", help=HELP, epilog=EPILOG, no_args_is_help=True)(distill_command)
