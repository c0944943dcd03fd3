"""`grow pretrain` (train one stage) and `grow slurm` (an sbatch script that runs it).

Both commands take the same options: `grow slurm` validates them for the allocation it will get
(nodes x GPUs, CUDA) and writes a script whose srun/torchrun line runs `grow pretrain` with them.
torch and megatron are imported inside the command bodies only.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Optional

import typer

from grow_cli.errors import GrowError

_MODEL = "Model (a plan stage, or --size / shape flags)"
_RUN = "Data, output and length"
_OPT = "Optimisation"
_PAR = "Parallelism and precision"
_LOG = "Logging and checkpoints"
_SLURM = "SLURM (grow slurm only)"

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


def pretrain_command(
    ctx: typer.Context,
    plan: Optional[str] = typer.Option(None, "--plan", help="Plan file written by `grow plan --out`.", rich_help_panel=_MODEL),
    stage: Optional[str] = typer.Option(None, "--stage", help="Plan stage: number (1, 2...) or name (2B).", rich_help_panel=_MODEL),
    size: Optional[str] = typer.Option(None, "--size", help="Without a plan: model size, e.g. 2M or 1B (preset or auto-shaped).", rich_help_panel=_MODEL),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="Without a plan: hidden size.", rich_help_panel=_MODEL),
    ffn: Optional[int] = typer.Option(None, "--ffn", help="Without a plan: FFN size.", rich_help_panel=_MODEL),
    layers: Optional[int] = typer.Option(None, "--layers", help="Without a plan: number of layers.", rich_help_panel=_MODEL),
    heads: Optional[int] = typer.Option(None, "--heads", help="Without a plan: attention heads.", rich_help_panel=_MODEL),
    kv_groups: Optional[int] = typer.Option(None, "--kv-groups", help="KV groups (GQA); default: one per head.", rich_help_panel=_MODEL),
    head_dim: Optional[int] = typer.Option(None, "--head-dim", help="Head dimension; default hidden / heads.", rich_help_panel=_MODEL),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length (default: the plan's, else 1024).", rich_help_panel=_MODEL),
    init: Optional[str] = typer.Option(
        None, "--init", help="Start from this checkpoint's weights (e.g. `grow expand` output); fresh optimizer and schedule.", rich_help_panel=_MODEL
    ),
    data: str = typer.Option(..., "--data", help="Prepared data prefix (`grow data prepare --out PREFIX`).", rich_help_panel=_RUN),
    out: str = typer.Option(..., "--out", help="Run directory: checkpoints, metrics.jsonl, tensorboard/.", rich_help_panel=_RUN),
    iters: Optional[int] = typer.Option(None, "--iters", help="Optimizer steps (default: the plan stage's token budget).", rich_help_panel=_RUN),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="Token budget instead of --iters, e.g. 20B.", rich_help_panel=_RUN),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume from --out's latest checkpoint; --no-resume refuses a directory that has one.", rich_help_panel=_RUN),
    seed: int = typer.Option(1234, "--seed", help="Seed of initialisation and data order.", rich_help_panel=_RUN),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default: the plan's, else 3e-4).", rich_help_panel=_OPT),
    min_lr: Optional[float] = typer.Option(None, "--min-lr", help="Final learning rate of the cosine decay (default lr/10).", rich_help_panel=_OPT),
    warmup_iters: Optional[int] = typer.Option(None, "--warmup-iters", help="Linear warmup steps (default: the plan's, else 1%).", rich_help_panel=_OPT),
    global_batch: Optional[int] = typer.Option(None, "--global-batch", help="Sequences per optimizer step (default: the plan's, else 32).", rich_help_panel=_OPT),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", help="Sequences per forward pass per GPU (default: the plan's, else 1).", rich_help_panel=_OPT),
    weight_decay: float = typer.Option(0.1, "--weight-decay", help="AdamW weight decay (not on norms).", rich_help_panel=_OPT),
    clip_grad: float = typer.Option(1.0, "--clip-grad", help="Gradient-norm clipping threshold.", rich_help_panel=_OPT),
    tp: Optional[int] = typer.Option(None, "--tp", help="Tensor-parallel size (default: the plan's, else 1).", rich_help_panel=_PAR),
    pp: Optional[int] = typer.Option(None, "--pp", help="Pipeline-parallel size (default: the plan's, else 1).", rich_help_panel=_PAR),
    attention: str = typer.Option("sdpa", "--attention", help="Core attention: sdpa, te (Transformer Engine) or local.", rich_help_panel=_PAR),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16 or fp32 (default: bf16 on CUDA, fp32 on CPU).", rich_help_panel=_PAR),
    sequence_parallel: Optional[bool] = typer.Option(
        None, "--sequence-parallel/--no-sequence-parallel", help="Megatron sequence parallelism (default: on when TP > 1 on GPU).", rich_help_panel=_PAR
    ),
    distributed_optimizer: bool = typer.Option(
        True, "--distributed-optimizer/--no-distributed-optimizer", help="Shard optimizer state over DP ranks (ZeRO-1).", rich_help_panel=_PAR
    ),
    recompute: str = typer.Option("none", "--recompute", help="Activation recomputation: none, selective or full.", rich_help_panel=_PAR),
    peak_tflops: Optional[float] = typer.Option(None, "--peak-tflops", help="Peak dense TFLOP/s per device for MFU (default: known GPUs).", rich_help_panel=_PAR),
    log_interval: int = typer.Option(10, "--log-interval", help="Log every N steps.", rich_help_panel=_LOG),
    eval_interval: int = typer.Option(1000, "--eval-interval", help="Validate every N steps (and at the end).", rich_help_panel=_LOG),
    eval_iters: int = typer.Option(10, "--eval-iters", help="Global batches of validation data per validation.", rich_help_panel=_LOG),
    save_interval: int = typer.Option(1000, "--save-interval", help="Checkpoint every N steps (and at the end).", rich_help_panel=_LOG),
    keep_last: int = typer.Option(2, "--keep-last", help="Checkpoints to keep (the newest is never deleted).", rich_help_panel=_LOG),
    exit_interval: Optional[int] = typer.Option(None, "--exit-interval", help="Checkpoint and stop when the iteration is a multiple of N.", rich_help_panel=_LOG),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or log lines (metrics files are still written).", rich_help_panel=_LOG),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout.", rich_help_panel=_LOG),
    nodes: int = typer.Option(1, "--nodes", help="Nodes to allocate.", rich_help_panel=_SLURM),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node", help="GPUs (processes) per node.", rich_help_panel=_SLURM),
    time_limit: Optional[str] = typer.Option(None, "--time", help="Job time limit, e.g. 24:00:00.", rich_help_panel=_SLURM),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition.", rich_help_panel=_SLURM),
    account: Optional[str] = typer.Option(None, "--account", help="SLURM account.", rich_help_panel=_SLURM),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task", help="CPUs per node task.", rich_help_panel=_SLURM),
    signal_lead: int = typer.Option(120, "--signal-lead", help="Seconds before the time limit at which to checkpoint and requeue.", rich_help_panel=_SLURM),
    setup: Optional[list[str]] = typer.Option(None, "--setup", help="Shell line to run before srun (repeatable), e.g. 'source venv/bin/activate'.", rich_help_panel=_SLURM),
    script: Optional[str] = typer.Option(None, "--script", help="Where to write the script (default OUT/pretrain.sbatch).", rich_help_panel=_SLURM),
    submit: bool = typer.Option(False, "--submit", help="Submit the script with sbatch.", rich_help_panel=_SLURM),
    force: bool = typer.Option(False, "--force", help="Replace an existing script.", rich_help_panel=_SLURM),
) -> None:
    from grow_cli.training.config import PretrainOptions

    options = PretrainOptions(
        data=data, out=out, plan=plan, stage=stage, size=size, hidden=hidden, ffn=ffn, layers=layers, heads=heads,
        kv_groups=kv_groups, head_dim=head_dim, seq_len=seq_len, tp=tp, pp=pp, iters=iters, tokens=tokens, lr=lr,
        min_lr=min_lr, warmup_iters=warmup_iters, weight_decay=weight_decay, clip_grad=clip_grad,
        global_batch=global_batch, micro_batch=micro_batch, init=init, resume=resume, attention=attention, dtype=dtype,
        seed=seed, log_interval=log_interval, eval_interval=eval_interval, eval_iters=eval_iters,
        save_interval=save_interval, keep_last=keep_last, exit_interval=exit_interval,
        sequence_parallel=sequence_parallel, distributed_optimizer=distributed_optimizer, recompute=recompute,
        peak_tflops=peak_tflops, quiet=quiet,
    )
    if ctx.info_name == "slurm":
        from grow_cli.training.slurm import SlurmJob

        job = SlurmJob(
            nodes=nodes, gpus_per_node=gpus_per_node, out=Path(out).expanduser().resolve(), time=time_limit, partition=partition, account=account,
            cpus_per_task=cpus_per_task, signal_lead_s=signal_lead, setup=tuple(setup or ()),
        )
        _write_slurm(options, job, script, submit, force, as_json)
        return
    slurm_only = {"--submit": submit, "--script": script, "--setup": setup, "--time": time_limit, "--partition": partition,
                  "--account": account}
    given = [flag for flag, value in slurm_only.items() if value]
    if given:
        raise GrowError(f"{', '.join(given)} belong to `grow slurm`; `grow pretrain` trains here and now")
    _train(options, as_json)


def _train(options, as_json: bool) -> None:
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
    from rich.console import Console
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
        ("throughput", f"{fmt(summary.tokens_per_s, ',.0f')} tokens/s on {summary.world_size} x {summary.device}"),
        ("model TFLOP/s per device", fmt(summary.tflops_per_gpu, ".3g")),
        ("MFU", "-" if summary.mfu is None else f"{100 * summary.mfu:.1f}%"),
        ("layout", f"TP={summary.layout['tp']} PP={summary.layout['pp']} DP={summary.layout['dp']}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def options_to_argv(options) -> list[str]:
    """`grow pretrain ...` arguments reproducing `options` (paths made absolute for the job)."""
    from grow_cli.training.config import PretrainOptions

    defaults = PretrainOptions(data="", out="")
    paths = {"data", "out", "plan", "init"}
    argv = ["pretrain"]
    for f in fields(PretrainOptions):
        value = getattr(options, f.name)
        if value is None or (value == getattr(defaults, f.name) and f.name not in ("data", "out")):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
            continue
        if f.name in paths:
            value = str(Path(value).expanduser().resolve())
        argv += [flag, str(value)]
    return argv


def _write_slurm(options, job, script: str | None, submit: bool, force: bool, as_json: bool) -> None:
    from grow_cli.training.checkpointing import check_run_directory
    from grow_cli.training.config import resolve_config
    from grow_cli.training.slurm import check_sbatch, render_sbatch, submit as sbatch_submit, write_script

    if submit:
        check_sbatch()
    config = resolve_config(options, world_size=job.world_size, cuda=True, here=False)
    resume = check_run_directory(config)
    job = replace(job, job_name=f"grow-{config.model.name}")
    path = Path(script).expanduser().resolve() if script else config.out / "pretrain.sbatch"
    config.out.mkdir(parents=True, exist_ok=True)  # SLURM does not create the --output directory
    write_script(path, render_sbatch(job, options_to_argv(options)), force)
    answer = sbatch_submit(path) if submit else None
    result = {
        "script": str(path),
        "submitted": answer,
        "nodes": job.nodes,
        "gpus": job.world_size,
        "layout": {"tp": config.parallel.tp, "pp": config.parallel.pp, "dp": config.parallel.dp},
        "train_iters": config.batch.train_iters,
        "resumes_from": str(resume) if resume else None,
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"wrote {path}: {job.nodes} node(s) x {job.gpus_per_node} GPUs, TP={config.parallel.tp} PP={config.parallel.pp} "
        f"DP={config.parallel.dp}, {config.batch.train_iters} iterations"
        + (f", resuming from {resume.name}" if resume else "")
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
    """Add `grow pretrain` and `grow slurm` (one option set, two behaviours) to the app."""
    app.command("pretrain", help=PRETRAIN_HELP, epilog=PRETRAIN_EPILOG, no_args_is_help=True)(pretrain_command)
    app.command("slurm", help=SLURM_HELP, epilog=SLURM_EPILOG, no_args_is_help=True)(pretrain_command)
