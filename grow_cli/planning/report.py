"""Presenting a Plan: rich tables for people, extra derived facts for `--json`.

Everything shown is either a field of the Plan or derived from its stages here (the FLOPs under
the other conventions, memory advice), so a plan read back from its file prints the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rich import box
from rich.console import Console
from rich.table import Table

from grow_cli.planning.budget import progressive_budgets
from grow_cli.flops import CONVENTIONS, flops_per_token
from grow_cli.planning.hardware import GPUSpec, gpu_spec
from grow_cli.planning.laws import get_law
from grow_cli.planning.hyperparams import HyperparamRule
from grow_cli.planning.memory import smallest_fitting_layout
from grow_cli.layout import Layout
from grow_cli.planning.planfile import Plan, StagePlan
from grow_cli.shape import PARAMS_DEFINITION, TP_FRIENDLY
from grow_cli.units import format_count

_FLOP_UNITS = (("Z", 1e21), ("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9))

NONEMBEDDING_LABEL = "non-emb.\nparams"
TOTAL_LABEL = "total\nparams"
PARAMS_NOTE = (
    "non-emb. params: without the embedding and output layers (what a stage's name states); "
    "total params: all of them, the count published model sizes such as Llama-3-8B's quote; "
    f"both {PARAMS_DEFINITION} (memory counts the padded tensors)"
)

CONVENTION_TITLES = {
    "reference": "6·N·D, N = the size name's count",
    "6nd-total": "6·N·D, N = all parameters",
    "megatron": "Megatron-LM formula, causal attention",
    "palm": "6·N + 12·L·H·d·s (PaLM / MFU)",
}


def flop_unit(value: float) -> tuple[str, float]:
    """The SI prefix a column of FLOPs up to `value` reads best in (ZFLOPs for the reference)."""
    for prefix, scale in _FLOP_UNITS:
        if value >= scale:
            return prefix, scale
    return "", 1.0


@dataclass(frozen=True)
class MemoryAdvice:
    """A stage whose estimate exceeds the GPU, and the smallest layout that would fit."""

    stage: str
    memory_gib: float
    capacity_gib: float
    suggested_layout: Layout | None
    suggested_memory_gib: float | None

    def message(self, gpu: GPUSpec, layout: Layout) -> str:
        text = (
            f"{self.stage} needs ~{self.memory_gib:.1f} GiB per GPU at TP={layout.tp} PP={layout.pp} "
            f"DP={layout.dp}, more than the {self.capacity_gib:.1f} GiB usable of an {gpu.description}"
        )
        if self.suggested_layout is None:
            return text + "; no layout up to 4096 GPUs fits: lower --micro-batch or --seq-len"
        s = self.suggested_layout
        return text + (
            f"; it fits on {s.world_size} GPUs as --tp {s.tp} --pp {s.pp} --dp {s.dp} "
            f"(~{self.suggested_memory_gib:.0f} GiB)"
        )


def _gpu(plan: Plan) -> GPUSpec:
    return gpu_spec(plan.inputs.gpu)


def memory_advice(plan: Plan) -> list[MemoryAdvice]:
    """Stages that do not fit the planned GPU, each with the smallest layout that does."""
    gpu = _gpu(plan)
    advice = []
    for stage in plan.stages:
        if stage.memory_per_gpu_gb is None or stage.memory_per_gpu_gb <= gpu.usable_gib:
            continue
        fit = smallest_fitting_layout(stage.shape, gpu.usable_gib, stage.micro_batch, stage.global_batch)
        advice.append(
            MemoryAdvice(
                stage=stage.name,
                memory_gib=stage.memory_per_gpu_gb,
                capacity_gib=gpu.usable_gib,
                suggested_layout=fit[0] if fit else None,
                suggested_memory_gib=fit[1].total_gib if fit else None,
            )
        )
    return advice


@dataclass(frozen=True)
class ConventionSummary:
    """The series under one FLOPs convention: per-stage FLOPs/token and the series totals."""

    convention: str
    flops_per_token: list[float]
    ratio_to_plan: list[float]  # this convention's FLOPs/token ÷ the plan's convention's
    flops_independent: float
    flops_progressive: float
    saving_fraction: float


def convention_summaries(plan: Plan) -> list[ConventionSummary]:
    """Re-run the budget rule under every convention, on the plan's shapes and token budgets."""
    names = [s.name for s in plan.stages]
    scratch = [s.tokens_scratch for s in plan.stages]
    per_convention = {
        c: [flops_per_token(c, s.shape, s.nominal_params, s.layout.tp) for s in plan.stages] for c in CONVENTIONS
    }
    own = per_convention[plan.flops_convention]
    summaries = []
    for convention, per_token in per_convention.items():
        budgets = progressive_budgets(names, per_token, scratch)
        independent = sum(b.flops_scratch for b in budgets)
        summaries.append(
            ConventionSummary(
                convention=convention,
                flops_per_token=per_token,
                ratio_to_plan=[a / b for a, b in zip(per_token, own)],
                flops_independent=independent,
                flops_progressive=budgets[-1].flops_cumulative,
                saving_fraction=1 - budgets[-1].flops_cumulative / independent,
            )
        )
    return summaries


def tp_sizes(stage: StagePlan) -> list[int]:
    """The tensor-parallel sizes a stage's shape runs at, up to one node's 8 (or the planned TP)."""
    return stage.shape.feasible_tp(limit=max(TP_FRIENDLY, stage.layout.tp))


def plan_json(plan: Plan) -> dict:
    """Plan.to_dict() plus a `report` block of derived facts (TP sizes, conventions, memory advice)."""
    data = plan.to_dict()
    data["report"] = {
        "tp_sizes": {s.name: tp_sizes(s) for s in plan.stages},
        "conventions": [asdict(c) for c in convention_summaries(plan)],
        "memory_warnings": [asdict(a) for a in memory_advice(plan)],
        "gpu": asdict(_gpu(plan)),
    }
    return data


def _lr(value: float) -> str:
    """1.5e-3 rather than 0.0015: LRs are compared by exponent."""
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _amount(value: float) -> str:
    """Thousands separators for big figures, two significant digits for small ones."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.2g}"


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)


def render(plan: Plan, console: Console, warnings: Console) -> None:
    """Print the shapes, budget and training tables, the totals and the conventions table on
    `console`, and the memory warnings on `warnings` (stderr: a pipe or log of the tables still
    shows them, and they do not pass for part of the result)."""
    totals, gpu, layout = plan.totals, _gpu(plan), plan.stages[0].layout
    prefix, scale = flop_unit(max(s.flops_scratch for s in plan.stages))
    unit = f"{prefix}FLOPs"

    def flops(value: float) -> str:
        return f"{value / scale:.3g}"

    models = _table(
        f"Series {' → '.join(s.name for s in plan.stages)}: shapes (head dim {plan.stages[-1].shape.head_dim}, "
        f"vocab {plan.stages[-1].shape.vocab}, {'tied' if plan.stages[-1].shape.tied_embeddings else 'untied'} embeddings)"
    )
    # a stage's name is its nominal size, close to the non-embedding count; published model sizes
    # (Llama-3-8B's "8B") are totals, embeddings included: both are labelled so they are not mixed up
    for column in ("stage", "grows\nfrom", "hidden", "ffn", "layers", "heads", "kv\ngroups", "runs at\nTP", NONEMBEDDING_LABEL, TOTAL_LABEL):
        models.add_column(column, justify="left" if column in ("stage", "grows\nfrom") else "right")
    for s in plan.stages:
        shape = s.shape
        models.add_row(
            s.name,
            s.init_from or "scratch",
            str(shape.hidden),
            str(shape.ffn),
            str(shape.layers),
            str(shape.heads),
            str(shape.kv_groups),
            ",".join(str(t) for t in tp_sizes(s)),
            format_count(s.params_nonembedding),
            format_count(s.params_total),
        )
    console.print(models)
    console.print(PARAMS_NOTE)

    budget = _table(
        f"Budget: {totals.tokens_per_param:.3g} tokens/param; FLOPs {plan.flops_convention} = "
        f"{CONVENTION_TITLES.get(plan.flops_convention, plan.flops_convention)}"
    )
    for column in ("stage", "tokens\nscratch", "tokens\ntrained", f"{unit}\nscratch", f"{unit}\ntrained", f"{unit}\ncumulative"):
        budget.add_column(column, justify="left" if column == "stage" else "right")
    if totals.corpus_tokens:
        budget.add_column("of which\nre-read", justify="right")
    for s in plan.stages:
        row = [
            s.name,
            format_count(s.tokens_scratch),
            format_count(s.tokens_incremental),
            flops(s.flops_scratch),
            flops(s.flops_incremental),
            flops(s.flops_cumulative),
        ]
        if totals.corpus_tokens:
            row.append(format_count(s.repeated_tokens or 0))
        budget.add_row(*row)
    console.print(budget)

    training = _table(
        f"Training: batches of {plan.stages[0].shape.seq_len}-token sequences "
        f"(micro {plan.stages[0].micro_batch}), TP={layout.tp} PP={layout.pp} DP={layout.dp}, "
        f"{gpu.name.upper()} at {plan.inputs.mfu:.0%} MFU"
    )
    days = f"days on\n{layout.world_size} GPU{'s' if layout.world_size > 1 else ''}"
    for column in ("stage", "batch\n(seqs)", "tokens\nper step", "LR", "min LR", "warmup", "iters", "loss\n(law)", "GPU-\nhours", days, "GiB per\nGPU"):
        training.add_column(column, justify="left" if column == "stage" else "right")
    for s in plan.stages:
        memory = "" if s.memory_per_gpu_gb is None else f"{s.memory_per_gpu_gb:.1f}"
        if s.memory_per_gpu_gb is not None and s.memory_per_gpu_gb > gpu.usable_gib:
            memory = f"[bold red]{memory} ![/bold red]"
        training.add_row(
            s.name,
            f"{s.global_batch:,}",
            format_count(s.tokens_per_iter),
            _lr(s.lr),
            _lr(s.min_lr),
            f"{s.warmup_iters:,}",
            f"{s.train_iters:,}",
            "-" if s.loss_outside_fit else f"{s.predicted_loss:.3f}",
            "" if s.gpu_hours is None else _amount(s.gpu_hours),
            "" if s.gpu_hours is None else _amount(s.gpu_hours / s.layout.world_size / 24),
            memory,
        )
    console.print(training)
    outside = [s.name for s in plan.stages if s.loss_outside_fit]
    if outside:
        law = get_law(plan.inputs.law)
        console.print(
            f"loss (law) of {', '.join(outside)}: outside the fitted range of {law.name} "
            f"(from {format_count(law.min_params)} params and {format_count(law.min_tokens)} tokens, below ln V)"
        )

    lines = [
        f"FLOPs ({plan.flops_convention}): every size from scratch {flops(totals.flops_independent)} {unit}, "
        f"grown series {flops(totals.flops_progressive)} {unit}: "
        f"[bold green]{totals.saving_fraction:.1%} saved[/bold green]",
        f"Tokens: grown series {format_count(totals.tokens_progressive)} vs "
        f"{format_count(totals.tokens_largest_scratch)} for {plan.stages[-1].name} alone "
        f"({totals.tokens_progressive / totals.tokens_largest_scratch - 1:+.0%})",
        f"GPU-hours ({gpu.name.upper()}, Megatron-counted FLOPs): grown series "
        f"{_amount(totals.gpu_hours_progressive)} vs {_amount(totals.gpu_hours_independent)} from scratch",
    ]
    if totals.corpus_tokens:
        lines.append(
            f"Fixed data: a {format_count(totals.corpus_tokens)}-token corpus; "
            f"{format_count(totals.repeated_tokens)} tokens are read a second time"
            + (f" (in {', '.join(s.name for s in plan.stages if s.repeated_tokens)})" if totals.repeated_tokens else "")
        )
    lines.append(
        f"Scaling law {plan.inputs.law}: the compute of {plan.stages[-1].name} from scratch is best spent on "
        f"{format_count(totals.law_optimal_params)} params (all, embeddings included) x {format_count(totals.law_optimal_tokens)} tokens"
    )
    rule = HyperparamRule.of([s.name for s in plan.stages], plan.inputs.global_batch, plan.inputs.lr_ladder)
    lines.append(rule.describe(plan.stages[0].micro_batch, layout.dp))
    for line in lines:
        console.print(line)

    conventions = _table("GFLOPs per training token by convention (ratio to the plan's)")
    conventions.add_column("convention")
    for s in plan.stages:
        conventions.add_column(s.name, justify="right")
    conventions.add_column("saving", justify="right")
    for c in convention_summaries(plan):
        conventions.add_row(
            c.convention + (" *" if c.convention == plan.flops_convention else ""),
            *(f"{f / 1e9:.3g} ({r:.2f})" for f, r in zip(c.flops_per_token, c.ratio_to_plan)),
            f"{c.saving_fraction:.1%}",
        )
    console.print(conventions)

    for advice in memory_advice(plan):
        warnings.print(f"[bold red]warning:[/bold red] {advice.message(gpu, layout)}")
