"""`grow pretrain` (train one stage) and `grow slurm` (an sbatch script that runs it).

Both commands take the run's options (`PretrainOptions`); `grow slurm` adds the allocation's
(`SlurmOptions`), validates the run for it (nodes x GPUs, CUDA) and writes a script whose
srun/torchrun line runs `grow pretrain` with the run's options. torch and megatron are imported
inside the command bodies only.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer
from typer.core import TyperCommand

from grow_cli.errors import GrowError
from grow_cli.options import argv_of, command_from, flags_of
from grow_cli.training.options import PretrainOptions, ReportOptions, SlurmOptions

PRETRAIN_HELP = (
    "Train one stage of a series (from scratch, or from an expanded checkpoint with --init) on "
    "megatron-core. Run it directly for one process, or under torchrun for TP x PP x DP "
    "processes. If --out already holds this run's checkpoints, it resumes from the latest one."
)
SLURM_HELP = (
    "Write an sbatch script that runs `grow pretrain` with these options on NODES x GPUS "
    "(srun + torchrun, pre-emption checkpoint and requeue), after checking them; --submit "
    "submits it."
)


@command_from(PretrainOptions, ReportOptions)
def pretrain_command(options: PretrainOptions, report: ReportOptions) -> None:
    _train(options, report.as_json)


@command_from(PretrainOptions, SlurmOptions, ReportOptions)
def slurm_command(options: PretrainOptions, slurm: SlurmOptions, report: ReportOptions) -> None:
    _write_slurm(options, slurm, report.as_json)


class _PretrainCommand(TyperCommand):
    """`grow pretrain` parsing that names the command a SLURM option belongs to.

    Typer already rejects them (they are not declared here); this only says where they go.
    """

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        slurm_flags = {flag for pair in flags_of(SlurmOptions).values() for flag in pair if flag}
        given = [arg.split("=", 1)[0] for arg in args if arg.split("=", 1)[0] in slurm_flags]
        if given:
            raise GrowError(f"{', '.join(given)}: SLURM options belong to `grow slurm`; `grow pretrain` trains here and now")
        return super().parse_args(ctx, args)


def _train(options: PretrainOptions, as_json: bool) -> None:
    from grow_cli.runtime.env import is_main
    from grow_cli.training.config import resolve_config
    from grow_cli.training.loop import pretrain

    config = resolve_config(options)
    summary = pretrain(config)
    if not is_main():
        return
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        _print_summary(summary)


def _print_summary(summary) -> None:
    from grow_cli.console import stdout_console
    from rich.table import Table

    from grow_cli.units import format_count

    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    table = Table(title=f"grow pretrain: {summary.status} at iteration {summary.iteration}/{summary.train_iters}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("run directory", summary.out),
        ("checkpoint", summary.checkpoint or "-"),
        ("tokens", f"{format_count(summary.tokens)} ({summary.consumed_samples:,} sequences)"),
        (f"model FLOPs ({summary.flops_convention})", f"{summary.flops:.3e}"),
        ("train loss (last interval)", fmt(summary.loss, ".4f")),
        ("validation loss", fmt(summary.valid_loss, ".4f")),
        ("training time", f"{summary.train_seconds:.1f} s"),
        ("throughput", f"{fmt(summary.tokens_per_s_average, ',.0f')} tokens/s on {summary.world_size} x {summary.device} "
                       f"(last interval {fmt(summary.tokens_per_s, ',.0f')})"),
        ("model TFLOP/s per device", fmt(summary.tflops_per_gpu, ".3g")),
        ("MFU", "-" if summary.mfu is None else f"{100 * summary.mfu:.1f}%"),
        ("layout", summary.layout.describe()),
    ]
    for name, value in rows:
        table.add_row(name, value)
    stdout_console().print(table)


def options_to_argv(options: PretrainOptions) -> list[str]:
    """`grow pretrain ...` arguments reproducing `options` (paths made absolute for the job)."""
    return ["pretrain", *argv_of(options, frozenset({"data", "out", "plan", "init"}))]


def _write_slurm(options: PretrainOptions, slurm: SlurmOptions, as_json: bool) -> None:
    from grow_cli.checkpoint.rundir import check_run_directory
    from grow_cli.runtime.device import CUDA
    from grow_cli.training.config import resolve_config
    from grow_cli.training.slurm import check_sbatch, render_sbatch, submit as sbatch_submit, write_script

    job = slurm.job(options.out)
    if slurm.submit:
        check_sbatch()
    config = resolve_config(options, world_size=job.world_size, device=CUDA, here=False)
    resume = check_run_directory(config)
    job = replace(job, job_name=f"grow-{config.model.name}")
    path = Path(slurm.script).expanduser().resolve() if slurm.script else config.out / "pretrain.sbatch"
    config.out.mkdir(parents=True, exist_ok=True)  # SLURM does not create the --output directory
    write_script(path, render_sbatch(job, options_to_argv(options)), slurm.force)
    answer = sbatch_submit(path) if slurm.submit else None
    layout = config.parallel.layout
    result = {
        "script": str(path),
        "submitted": answer,
        "nodes": job.nodes,
        "gpus": job.world_size,
        "layout": layout.to_dict(),
        "train_iters": config.batch.train_iters,
        "resumes_from": str(resume) if resume else None,
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"wrote {path}: {job.nodes} node(s) x {job.gpus_per_node} GPUs, {layout.describe()}, "
        f"{config.batch.train_iters} iterations" + (f", resuming from {resume.name}" if resume else "")
    )
    typer.echo(answer or f"submit it with: sbatch {path}")


PRETRAIN_EPILOG = (
    "Examples:\n\n"
    "  grow pretrain --plan plan.yaml --stage 1 --data data/fwe --out runs/1B\n\n"
    "  torchrun --nproc-per-node 8 -m grow_cli pretrain --plan plan.yaml --stage 2 --init ckpt/2B-init "
    "--data data/fwe --out runs/2B --tp 2\n\n"
    "  grow pretrain --size 2M --seq-len 128 --iters 100 --global-batch 8 --data data/shk --out runs/tiny\n\n"
    "See docs/training.md and docs/launch.md."
)
SLURM_EPILOG = (
    "Example:\n\n"
    "  grow slurm --plan plan.yaml --stage 2 --init ckpt/2B-init --data /shared/fwe --out /shared/runs/2B "
    "--nodes 4 --gpus-per-node 8 --tp 2 --time 24:00:00 --setup 'source venv/bin/activate' --submit\n\n"
    "See docs/launch.md."
)


def register(app: typer.Typer) -> None:
    """Add `grow pretrain` and `grow slurm` (the run's options shared, SLURM's on slurm only)."""
    app.command("pretrain", cls=_PretrainCommand, help=PRETRAIN_HELP, epilog=PRETRAIN_EPILOG, no_args_is_help=True)(pretrain_command)
    app.command("slurm", help=SLURM_HELP, epilog=SLURM_EPILOG, no_args_is_help=True)(slurm_command)
