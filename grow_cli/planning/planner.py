"""Turn a validated request into a Plan: shapes, budgets, learning rates, cost and memory.

This is the one place the pieces meet; each number comes from the module that owns its formula
(series, budget, flops, lr, laws, hardware, memory), and the result is the plan-file dataclass
other commands read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from grow_cli.errors import GrowError
from grow_cli.planning.budget import fixed_corpus_use, progressive_budgets
from grow_cli.planning.flops import check_convention, flops_per_token, megatron_flops_per_token
from grow_cli.planning.hardware import PLANNED_MFU, check_mfu, gpu_spec
from grow_cli.planning.laws import get_law
from grow_cli.planning.lr import LRLadder, ScheduleRule
from grow_cli.planning.memory import check_batch, estimate_memory
from grow_cli.layout import Layout
from grow_cli.planning.planfile import Plan, StagePlan, iterations_for
from grow_cli.planning.series import resolve_series
from grow_cli.shape import DEFAULT_SEQ_LEN, GPT2_VOCAB


@dataclass(frozen=True)
class PlanRequest:
    """Everything `grow plan` decides from; stored in the plan file as its `inputs`."""

    sizes: tuple[str, ...]  # canonical names, smallest first
    tokens_per_param: float  # scratch tokens per nominal parameter, every stage
    seq_len: int = DEFAULT_SEQ_LEN
    vocab: int = GPT2_VOCAB
    tied: bool = False
    auto_shapes: bool = False
    layout: Layout = field(default_factory=Layout)
    gpu: str = "h100"
    mfu: float = PLANNED_MFU
    global_batch: int = 512  # sequences per optimizer step
    micro_batch: int = 1
    law: str = "besiroglu2024"
    lr_ladder: str = "reference"
    schedule: ScheduleRule = field(default_factory=ScheduleRule)
    fixed_data: bool = False
    flops_convention: str = "reference"

    def validate(self) -> None:
        """Reject impossible inputs with one-line errors before any arithmetic."""
        if not self.sizes:
            raise GrowError("the series is empty; give --max or --sizes")
        if self.tokens_per_param <= 0:
            raise GrowError(f"tokens per parameter must be positive, got {self.tokens_per_param}")
        check_convention(self.flops_convention)
        check_mfu(self.mfu)
        gpu_spec(self.gpu)
        get_law(self.law)
        LRLadder.parse(self.lr_ladder)
        if self.seq_len <= 0 or self.vocab <= 0:
            raise GrowError(f"--seq-len ({self.seq_len}) and --vocab ({self.vocab}) must be positive")
        for name in ("tp", "pp", "dp"):
            if getattr(self.layout, name) < 1:
                raise GrowError(f"--{name} must be at least 1, got {getattr(self.layout, name)}")
        check_batch(self.global_batch, self.micro_batch, self.layout.dp)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["sizes"] = list(self.sizes)
        return data


@dataclass(frozen=True)
class PlanTotals:
    """Series-level numbers (FLOPs in the plan's convention); stored as the plan's `totals`."""

    flops_independent: float  # every size trained from scratch
    flops_progressive: float  # the grown series (= the largest size's scratch FLOPs)
    saving_fraction: float  # 1 - progressive / independent
    tokens_progressive: float  # tokens the grown series trains on, all stages
    tokens_largest_scratch: float  # tokens of the largest model alone
    tokens_independent: float
    gpu_hours_progressive: float  # Megatron-convention FLOPs at the planned MFU
    gpu_hours_independent: float
    tokens_per_param: float
    corpus_tokens: float | None  # --fixed-data: unique tokens available to the whole series
    repeated_tokens: float | None  # --fixed-data: tokens read a second (or later) time
    law_optimal_params: float  # compute-optimal size for the largest model's 6·N_total·D compute
    law_optimal_tokens: float


def build_plan(request: PlanRequest) -> Plan:
    """The full series plan for `request` (validated first: user mistakes raise GrowError)."""
    request.validate()
    layout = request.layout
    members = resolve_series(
        list(request.sizes),
        tp=layout.tp,
        pp=layout.pp,
        vocab=request.vocab,
        seq_len=request.seq_len,
        tied=request.tied,
        auto_shapes=request.auto_shapes,
    )
    names = [m.name for m in members]
    per_token = [flops_per_token(request.flops_convention, m.shape, m.nominal, layout.tp) for m in members]
    scratch_tokens = [request.tokens_per_param * m.nominal for m in members]
    budgets = progressive_budgets(names, per_token, scratch_tokens)
    corpus = scratch_tokens[-1] if request.fixed_data else None
    data_use = fixed_corpus_use([b.tokens_incremental for b in budgets], corpus) if corpus else None
    # four significant digits: what an LR in a config file looks like, without float dust
    rates = [float(f"{r:.4g}") for r in LRLadder.parse(request.lr_ladder).rates([m.nominal for m in members])]
    law, gpu = get_law(request.law), gpu_spec(request.gpu)

    stages, hours_scratch = [], []
    for i, (member, budget, lr) in enumerate(zip(members, budgets, rates)):
        counts = member.shape.param_counts(member.shape.padded_vocab(layout.tp))
        iters = iterations_for(budget.tokens_incremental, request.global_batch, member.shape.seq_len)
        hardware_flops_per_token = megatron_flops_per_token(member.shape, layout.tp)
        hours_scratch.append(gpu.hours(hardware_flops_per_token * budget.tokens_scratch, request.mfu))
        memory = estimate_memory(member.shape, layout, request.micro_batch, request.global_batch)
        stages.append(
            StagePlan(
                index=i + 1,
                name=member.name,
                nominal_params=member.nominal,
                shape=member.shape,
                params_total=counts.total,
                params_nonembedding=counts.nonembedding,
                **asdict(budget),  # tokens and FLOPs: scratch, incremental, cumulative, per token
                lr=lr,
                min_lr=float(f"{lr * request.schedule.min_lr_ratio:.4g}"),
                warmup_iters=request.schedule.warmup_iters(iters),
                train_iters=iters,
                global_batch=request.global_batch,
                micro_batch=request.micro_batch,
                layout=layout,
                init_from=names[i - 1] if i else None,
                predicted_loss=law.loss(counts.total, budget.tokens_scratch),
                gpu_hours=gpu.hours(hardware_flops_per_token * budget.tokens_incremental, request.mfu),
                memory_per_gpu_gb=memory.total_gib,
                unique_tokens=data_use[i].unique if data_use else None,
                repeated_tokens=data_use[i].repeated if data_use else None,
            )
        )

    last = stages[-1]
    independent = sum(b.flops_scratch for b in budgets)
    optimal_params, optimal_tokens = law.compute_optimal(6 * last.params_total * last.tokens_scratch)
    totals = PlanTotals(
        flops_independent=independent,
        flops_progressive=budgets[-1].flops_cumulative,
        saving_fraction=1 - budgets[-1].flops_cumulative / independent,
        tokens_progressive=budgets[-1].tokens_cumulative,
        tokens_largest_scratch=last.tokens_scratch,
        tokens_independent=sum(scratch_tokens),
        gpu_hours_progressive=sum(s.gpu_hours for s in stages),
        gpu_hours_independent=sum(hours_scratch),
        tokens_per_param=request.tokens_per_param,
        corpus_tokens=corpus,
        repeated_tokens=sum(u.repeated for u in data_use) if data_use else None,
        law_optimal_params=optimal_params,
        law_optimal_tokens=optimal_tokens,
    )
    return Plan(
        stages=stages,
        inputs=request.to_dict(),
        totals=asdict(totals),
        flops_convention=request.flops_convention,
    )
