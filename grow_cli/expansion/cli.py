"""`grow expand`: grow a trained torch_dist checkpoint into the next model size.

No torch or megatron at module scope (`grow --help` stays instant): the command imports the
engine when it runs.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from grow_cli.errors import GrowError
from grow_cli.runtime import env
from grow_cli.units import format_bytes


# Held-out tokens `--verify` evaluates: the smallest count whose loss jump (AKI + stack) was within
# 0.005 nats of the whole validation split's and had a standard error under 0.005
# (bench/verify_tokens.py, docs/benchmarks.md: 32K tokens missed by 0.011, 64K by 0.0003).
DEFAULT_VERIFY_TOKENS = 65536


class Width(str, Enum):
    aki = "aki"
    fpi = "fpi"
    iso = "iso"


class Depth(str, Enum):
    stack = "stack"
    identity = "identity"


def expand_command(
    source: Path = typer.Argument(..., help="Source checkpoint (torch_dist, saved at any TP/PP), a pretrain run directory / its `latest` file (newest checkpoint), or a Megatron-LM save directory (its tracker)."),
    to: Optional[str] = typer.Option(None, "--to", help="Target size: a preset (1B, 2B, 4B, 8B) or any size such as 600M."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Plan file from `grow plan --out`; the target is one of its stages."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Plan stage (index or name); default: the stage after the source's."),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="Target hidden size (overrides --to/--plan)."),
    ffn: Optional[int] = typer.Option(None, "--ffn", help="Target FFN size."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Target number of layers."),
    heads: Optional[int] = typer.Option(None, "--heads", help="Target attention heads (head dim is kept)."),
    kv_groups: Optional[int] = typer.Option(None, "--kv-groups", help="Target KV groups (GQA)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output checkpoint directory (written atomically)."),
    width: Width = typer.Option(Width.aki, "--width", help="aki: bert2BERT AKI (reference, breaks symmetry); fpi: plain duplication; iso: exact isometric duplication."),
    depth: Depth = typer.Option(Depth.stack, "--depth", help="stack: bert2BERT stacking; identity: new layers with zero output projections (exact)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the index maps and noise: same seed, same bytes."),
    noise: float = typer.Option(0.0, "--noise", help="Zero-sum noise on duplicated units' reader columns (relative to the weights' RMS); keeps the function, breaks symmetry. fpi/iso only."),
    verify: bool = typer.Option(False, "--verify", help="Run both models on held-out tokens; print both losses, their difference with its standard error, and max |delta logit|."),
    verify_tokens: Optional[int] = typer.Option(None, "--verify-tokens", help=f"Held-out tokens --verify evaluates, in micro-batches (default {DEFAULT_VERIFY_TOKENS:,}: the smallest count that measured AKI's loss jump to within 0.005 nats, docs/benchmarks.md); fewer are used, and said, when the text holds fewer."),
    data: Optional[str] = typer.Option(None, "--data", help="Prepared data prefix whose validation split --verify uses (default: the shipped corpus)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the tensor mapping and the bytes to read/write; write nothing."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    vocab: Optional[int] = typer.Option(None, "--vocab", help="Vocabulary size of a Megatron-LM source whose args do not tell it (tokenizer before padding)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout."),
) -> None:
    """Grow a checkpoint into a larger shape (width and depth), streaming layer by layer.

    The output loads in `grow pretrain`, in plain megatron-core at any TP/PP and in Megatron-LM (`pretrain_gpt.py --load OUT`; flags: `grow megatron-args OUT`). The source may be a Megatron-LM save directory (its tracker and args are read; --vocab for tokenizers its args do not size). Optimizer state is not carried: the expanded model starts at iteration 0 with a fresh optimizer. `--width iso --depth identity` is exactly function-preserving; `aki` + `stack` (the default) is the reference method (bert2BERT). Run under torchrun to split the work over several processes.

    Examples:\n
      grow expand ckpt/1B --to 2B --out ckpt/2B-init\n
      grow expand ckpt/1B --plan plan.yaml --stage 2 --out ckpt/2B-init --verify\n
      grow expand ckpt/1B --to 2B --width iso --depth identity --noise 0.01 --out ckpt/2B-exact\n
      grow expand ckpt/1B --to 2B --dry-run
    """
    from grow_cli.expansion.recipe import ExpandOptions
    from grow_cli.expansion.target import TargetRequest, resolve_target

    options = ExpandOptions(width=width.value, depth=depth.value, seed=seed, noise=noise)
    request = TargetRequest(
        to=to, plan=str(plan) if plan else None, stage=stage,
        hidden=hidden, ffn=ffn, layers=layers, heads=heads, kv_groups=kv_groups,
    )
    if data is not None and not verify:
        raise GrowError("--data only selects the --verify batch; add --verify or drop --data")
    if verify_tokens is not None and not verify:
        raise GrowError("--verify-tokens only sizes the --verify batch; add --verify or drop --verify-tokens")
    if verify_tokens is not None and verify_tokens < 1:
        raise GrowError(f"--verify-tokens must be at least 1 (got {verify_tokens})")
    if dry_run:
        _dry_run(source, out, request, options, force, as_json, vocab)
        return
    if out is None:
        raise GrowError("pass --out DIR for the expanded checkpoint (or --dry-run to only see the plan)")
    from grow_cli.expansion.engine import open_source

    _, info = open_source(source, vocab=vocab)
    target, label = resolve_target(info.shape, request, info.stage)
    _run(source, out, target, label, str(plan) if plan else None, options, force, verify, data, verify_tokens or DEFAULT_VERIFY_TOKENS, as_json, vocab)


def _dry_run(source: Path, out: Optional[Path], request, options, force: bool, as_json: bool, vocab: Optional[int]) -> None:
    from grow_cli.expansion.engine import check_paths, open_source, planned_reads
    from grow_cli.expansion.recipe import ExpansionRecipe
    from grow_cli.expansion.target import resolve_target

    reader, info = open_source(source, vocab=vocab)
    target, _ = resolve_target(info.shape, request, info.stage)
    if out is not None:
        check_paths(reader.path, out, force)
    plan = ExpansionRecipe.for_checkpoint(reader, info.shape, target, options)
    bytes_read = 0
    for read in planned_reads(plan, env.world_size()):
        shape = reader.shape(read.key)
        if read.layer is None:
            bytes_read += reader.stored_bytes(read.key)
        else:
            bytes_read += reader.stored_bytes(read.key, (read.layer,) + (0,) * (len(shape) - 1), (1, *shape[1:]))
    bytes_written = plan.bytes_written()
    mappings = plan.mappings()
    if not env.is_main():  # under torchrun: one report
        return
    if as_json:
        typer.echo(json.dumps({
            "source": str(source), "output": str(out) if out else None,
            "source_shape": info.shape.to_dict(), "target_shape": plan.target.to_dict(),
            "width": options.width, "depth": options.depth, "seed": options.seed, "noise": options.noise,
            "exact": options.exact, "bytes_read": bytes_read, "bytes_written": bytes_written,
            "depth_map": list(plan.maps.depth.source), "identity_layers": list(plan.maps.depth.zero_output),
            "tensors": [
                {"key": m.key, "shape": list(m.shape), "dtype": m.dtype, "source_shape": list(m.source_shape), "operator": m.operator}
                for m in mappings
            ],
        }, indent=2))
        return
    from grow_cli.console import stdout_console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"grow expand --dry-run: {info.shape.describe()} -> {plan.target.describe()}")
    for column in ("target tensor", "source shape", "target shape", "dtype", "operator"):
        table.add_column(column, overflow="fold")
    for m in mappings:
        table.add_row(m.key, str(list(m.source_shape)), str(list(m.shape)), m.dtype, escape(m.operator))
    console = stdout_console()
    console.print(table)
    console.print(
        f"would read {format_bytes(bytes_read)} from {source} (re-reads included) and write {format_bytes(bytes_written)}"
        + (f" to {out}" if out else "") + f"; exact: {'yes' if options.exact else 'no'}; nothing written"
    )


def _run(source, out, target, label, plan_path, options, force, verify, data, verify_tokens, as_json, vocab) -> None:
    import torch

    from grow_cli.expansion.engine import expand_checkpoint
    from grow_cli.runtime.distributed import init_distributed, shutdown

    distributed = env.world_size() > 1
    if distributed or verify:
        init_distributed()
    is_main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    try:
        result = _expand_with_progress(expand_checkpoint, source, out, target, label, plan_path, options, force, is_main and not as_json, vocab)
        check = None
        if verify:
            from grow_cli.expansion.verify import held_out_tokens, verify_expansion

            seq_len = min(target.seq_len, 256)
            check = verify_expansion(source, out, held_out_tokens(result.source.shape, data, verify_tokens, seq_len=seq_len, seed=options.seed))
    finally:
        if distributed or verify:
            shutdown()
    if is_main:
        _report(result, check, as_json)


def _expand_with_progress(expand_checkpoint, source, out, target, label, plan_path, options, force, show: bool, vocab):
    from grow_cli.console import progress_bar

    if not show:
        return expand_checkpoint(source, out, target, options, stage=label, plan=plan_path, force=force, vocab=vocab)
    with progress_bar("[bold]expand[/] {task.description}") as progress:
        task = progress.add_task("", total=None)

        def on_piece(piece, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, description=piece.key)

        return expand_checkpoint(source, out, target, options, stage=label, plan=plan_path, force=force, on_piece=on_piece, vocab=vocab)


def _report(result, check, as_json: bool) -> None:
    from grow_cli.interop.megatron import megatron_launch
    from grow_cli.shape import PARAMS_DEFINITION

    src, dst = result.source.shape, result.target.shape
    try:
        megatron = megatron_launch(result.output).to_json()
    except GrowError as error:  # e.g. rows Megatron-LM cannot pad to at TP=1: the output stands
        megatron = {"load": None, "flags": None, "notes": [str(error)]}
    summary = {
        "output": str(result.output),
        "source_shape": src.to_dict(),
        "target_shape": dst.to_dict(),
        "params_source": src.param_counts().total,
        "params_target": dst.param_counts().total,
        "params_definition": PARAMS_DEFINITION,
        "width": result.options.width, "depth": result.options.depth,
        "seed": result.options.seed, "noise": result.options.noise, "exact": result.options.exact,
        "checkpoint_id": result.target.checkpoint_id, "stage": result.target.stage,
        "bytes_read": result.bytes_read, "bytes_written": result.bytes_written,
        "pieces": result.pieces, "ranks": result.ranks, "seconds": round(result.seconds, 3),
        "notes": result.notes,
        "megatron_lm": megatron,
    }
    if check is not None:
        summary["verify"] = check.to_json()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from grow_cli.console import stdout_console
    from rich.table import Table

    from grow_cli.units import format_count

    table = Table(title=f"grow expand -> {result.output}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("source", f"{src.describe()}, {format_count(summary['params_source'])} params")
    table.add_row("target", f"{dst.describe()}, {format_count(summary['params_target'])} params")
    table.add_row("params", f"all of them, {PARAMS_DEFINITION}")
    table.add_row("method", f"width {result.options.width}, depth {result.options.depth}, seed {result.options.seed}"
                  + (f", noise {result.options.noise:g}" if result.options.noise else "")
                  + (" (exactly function-preserving)" if result.options.exact else ""))
    table.add_row("I/O", f"read {format_bytes(result.bytes_read)}, wrote {format_bytes(result.bytes_written)} in {result.pieces} pieces "
                  f"on {result.ranks} rank(s), {result.seconds:.1f} s")
    table.add_row("lineage", f"iteration 0, stage {result.target.stage}, id {result.target.checkpoint_id[:12]}")
    if check is not None:
        stderr = "n/a (one sequence)" if check.delta_loss_stderr is None else f"{check.delta_loss_stderr:.4f}"
        table.add_row("verify", f"{check.tokens:,} tokens ({check.sequences}x{check.seq_len}) from {check.held_out}")
        if check.shortfall:
            table.add_row("verify tokens", check.shortfall)
        table.add_row("loss", f"source {check.loss_source:.4f} -> expanded {check.loss_target:.4f}: "
                      f"delta {check.delta_loss:+.4f} (standard error {stderr})")
        table.add_row("max |dlogit|", f"{check.max_abs_dlogit:.3g} (max |logit| {check.max_abs_logit:.3g}, "
                      f"relative {check.relative_dlogit:.2g}; first {check.dlogit_tokens:,} tokens)")
    table.add_row("Megatron-LM", f"pretrain_gpt.py --load {megatron['load']} (all flags: grow megatron-args {result.output})"
                  if megatron["load"] else "; ".join(megatron["notes"]))
    console = stdout_console()
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
