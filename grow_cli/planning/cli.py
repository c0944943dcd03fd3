"""`grow plan`: the series, its shapes, token and FLOP budgets, learning rates, cost and memory.

Pure arithmetic: no torch, no megatron, so it answers instantly on a laptop. The plan file it
writes (`--out`) is what `grow pretrain`, `grow expand` and `grow eval` read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from grow_cli.errors import GrowError
from grow_cli.planning.hardware import PLANNED_MFU

PLOT_FORMATS = (".png", ".pdf", ".svg")


def _layout(tp: int, pp: int, dp: Optional[int], gpus: Optional[int]):
    """TP/PP from their flags; DP from --dp, or from --gpus / (TP·PP), or 1."""
    from grow_cli.layout import Layout

    if tp < 1 or pp < 1:
        raise GrowError(f"--tp ({tp}) and --pp ({pp}) must be at least 1")
    if gpus is not None:
        if gpus < 1 or gpus % (tp * pp):
            raise GrowError(f"--gpus {gpus} is not a positive multiple of TP x PP = {tp * pp}")
        if dp is not None and dp * tp * pp != gpus:
            raise GrowError(f"--dp {dp} x TP {tp} x PP {pp} is not --gpus {gpus}; give --gpus or --dp, not both")
        dp = gpus // (tp * pp)
    return Layout(tp=tp, pp=pp, dp=1 if dp is None else dp)


def plan_command(
    max_size: Optional[str] = typer.Option(None, "--max", help="Largest model of the series, e.g. 8B.", rich_help_panel="Series"),
    stages: Optional[int] = typer.Option(None, "--stages", help="Number of sizes (default 4).", rich_help_panel="Series"),
    factor: Optional[str] = typer.Option(None, "--factor", help="Size ratio between stages (default 2).", rich_help_panel="Series"),
    min_size: Optional[str] = typer.Option(None, "--min", help="Smallest model; with --stages or --factor.", rich_help_panel="Series"),
    sizes: Optional[str] = typer.Option(
        None, "--sizes", help="The series explicitly, smallest first: 1B,2B,4B,8B.", rich_help_panel="Series"
    ),
    auto_shapes: bool = typer.Option(
        False,
        "--auto-shapes",
        help="Auto-shape sizes whose 1B/2B/4B/8B preset does not fit --tp/--pp (e.g. 4B's 25 heads at TP 2).",
        rich_help_panel="Series",
    ),
    kv_groups: str = typer.Option(
        "auto",
        "--kv-groups",
        help="KV groups: auto (8 groups when the largest model is at least 7B, else multi-head; presets stay), mha, or N.",
        rich_help_panel="Series",
    ),
    seq_len: int = typer.Option(1024, "--seq-len", help="Sequence length.", rich_help_panel="Series"),
    vocab: Optional[int] = typer.Option(None, "--vocab", help="Vocabulary size (default: --data's tokenizer, else GPT-2 BPE's 50257).", rich_help_panel="Series"),
    data: Optional[str] = typer.Option(None, "--data", help="Prepared data prefix (grow data prepare): the vocabulary is its tokenizer's.", rich_help_panel="Series"),
    tied: bool = typer.Option(False, "--tied", help="Tie input and output embeddings.", rich_help_panel="Series"),
    chinchilla: Optional[str] = typer.Option(
        None, "--chinchilla", help="Token budget as a multiple of 20 tokens/param, e.g. 2x (default 1x).", rich_help_panel="Budget"
    ),
    per_param: Optional[float] = typer.Option(None, "--tokens-per-param", help="Scratch tokens per parameter.", rich_help_panel="Budget"),
    tokens: Optional[str] = typer.Option(
        None, "--tokens", help="Scratch tokens of the largest model, e.g. 320B (sets tokens/param).", rich_help_panel="Budget"
    ),
    fixed_data: bool = typer.Option(
        False, "--fixed-data", help="Cap the corpus at the largest model's scratch tokens and show where it repeats.", rich_help_panel="Budget"
    ),
    flops_convention: str = typer.Option(
        "reference",
        "--flops-convention",
        help="reference (6·N_name·D) | 6nd-total (6·N_all·D) | megatron | palm. Sets the budget rule's FLOPs.",
        rich_help_panel="Budget",
    ),
    law: str = typer.Option(
        "besiroglu2024", "--law", help="Scaling law for predicted loss: besiroglu2024 | hoffmann2022.", rich_help_panel="Budget"
    ),
    lr_ladder: Optional[str] = typer.Option(
        None,
        "--lr-ladder",
        help="Peak LR per stage: reference (1B 1.5e-3 … 8B 3e-4, log-log in size), a fixed rate 3e-4, or FIRST:LAST "
        "(default: reference for the 1B-8B series, else DeepSeek LLM's law of each stage's compute).",
        rich_help_panel="Schedule",
    ),
    min_lr_ratio: float = typer.Option(0.1, "--min-lr-ratio", help="Final LR as a fraction of the peak.", rich_help_panel="Schedule"),
    warmup_fraction: float = typer.Option(0.01, "--warmup-fraction", help="Warmup as a fraction of the stage's iterations.", rich_help_panel="Schedule"),
    warmup_min: int = typer.Option(100, "--warmup-min", help="Fewest warmup iterations (at most half the stage).", rich_help_panel="Schedule"),
    global_batch: Optional[int] = typer.Option(
        None,
        "--global-batch",
        help="Sequences per optimizer step (default: 512 for the 1B-8B series, else DeepSeek LLM's law per stage).",
        rich_help_panel="Schedule",
    ),
    micro_batch: int = typer.Option(1, "--micro-batch", help="Sequences per GPU per forward pass.", rich_help_panel="Schedule"),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel size.", rich_help_panel="Hardware"),
    pp: int = typer.Option(1, "--pp", help="Pipeline-parallel size.", rich_help_panel="Hardware"),
    dp: Optional[int] = typer.Option(None, "--dp", help="Data-parallel size (default: --gpus / (TP·PP), else 1).", rich_help_panel="Hardware"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Total GPUs; sets DP = GPUs / (TP·PP).", rich_help_panel="Hardware"),
    gpu: str = typer.Option("h100", "--gpu", help="h100 | h200 | a100: peak FLOP/s and memory.", rich_help_panel="Hardware"),
    mfu: float = typer.Option(
        PLANNED_MFU, "--mfu", help="Model FLOPs utilisation as Megatron-LM reports it (default unmeasured, see docs/benchmarks.md).",
        rich_help_panel="Hardware",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the plan file (YAML) here.", rich_help_panel="Output"),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out / --plot file.", rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON instead of tables.", rich_help_panel="Output"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Save a figure (.png/.pdf/.svg): FLOPs and tokens per stage.", rich_help_panel="Output"),
    show: Optional[Path] = typer.Option(
        None, "--show", help="Print an existing plan file instead of planning (with --json / --plot).", rich_help_panel="Output"
    ),
) -> None:
    """Plan a model series grown from small to large: shapes, token and FLOP budgets, LRs, cost, memory.

    Each stage trains on what remains of its from-scratch FLOP budget after the stages before it, so the whole series costs what the largest model alone would. Details and formulas: docs/planning.md.

    Examples (the reference 1B → 2B → 4B → 8B series on one node; the same at TP 2; a CPU demo):

      grow plan --max 8B --chinchilla 2x --gpus 8 --out plan.yaml

      grow plan --max 8B --chinchilla 2x --tp 2 --gpus 16 --auto-shapes

      grow plan --sizes 2M,4M --tokens-per-param 20 --seq-len 128 --global-batch 8
    """
    from grow_cli.console import stderr_console, stdout_console

    from grow_cli.checkpoint.atomic import check_output
    from grow_cli.planning.lr import ScheduleRule
    from grow_cli.planning.planfile import load_plan, save_plan
    from grow_cli.planning.planfile import PlanRequest
    from grow_cli.planning.planner import build_plan
    from grow_cli.planning.report import plan_json, render
    from grow_cli.planning.series import series_sizes, tokens_per_param
    from grow_cli.units import parse_count

    if plot is not None and plot.suffix.lower() not in PLOT_FORMATS:
        raise GrowError(f"--plot {plot}: use a {', '.join(PLOT_FORMATS)} file name")
    for path, what in ((out, "plan file"), (plot, "plot")):
        if path is not None:
            check_output(path, force, what)
    if show is not None:
        if any(v is not None for v in (max_size, sizes, min_size, stages, factor)) or out is not None:
            raise GrowError("--show prints an existing plan; drop the planning options (--max, --sizes, ...) and --out")
        plan = load_plan(show)
    else:
        names = series_sizes(max_size=max_size, min_size=min_size, stages=stages, factor=factor, sizes=sizes)
        vocab = _vocab(vocab, data)
        request = PlanRequest(
            sizes=tuple(names),
            tokens_per_param=tokens_per_param(parse_count(names[-1]), chinchilla, per_param, tokens),
            seq_len=seq_len,
            vocab=vocab,
            tied=tied,
            auto_shapes=auto_shapes,
            kv_groups=kv_groups,
            layout=_layout(tp, pp, dp, gpus),
            gpu=gpu.lower(),
            mfu=mfu,
            global_batch=global_batch,
            micro_batch=micro_batch,
            law=law.lower(),
            lr_ladder=lr_ladder,
            schedule=ScheduleRule(min_lr_ratio=min_lr_ratio, warmup_fraction=warmup_fraction, warmup_min=warmup_min),
            fixed_data=fixed_data,
            flops_convention=flops_convention.lower(),
        )
        plan = build_plan(request)

    if out is not None:
        save_plan(plan, out)
    if plot is not None:
        from grow_cli.planning.plot import save_plot

        save_plot(plan, plot)
    if as_json:
        typer.echo(json.dumps(plan_json(plan), indent=2))
        return
    console = stdout_console()
    render(plan, console, stderr_console())
    for path, what in ((out, "plan"), (plot, "plot")):
        if path is not None:
            console.print(f"wrote {what} {path}")


def _vocab(vocab: int | None, data: str | None) -> int:
    """--vocab, or the vocabulary of --data's tokenizer (they must agree when both are given)."""
    from grow_cli.shape import GPT2_VOCAB

    if data is None:
        return GPT2_VOCAB if vocab is None else vocab
    from grow_cli.data.info import read_data_info

    info = read_data_info(data)
    if vocab is not None and vocab != info.vocab_size:
        raise GrowError(f"--vocab {vocab} but --data {data} was tokenized with vocab {info.vocab_size}; drop --vocab")
    return info.vocab_size
