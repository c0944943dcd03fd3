"""Turn a validated request into a Plan: shapes, budgets, learning rates, cost and memory.

This is the one place the pieces meet; each number comes from the module that owns its formula
(series, budget, flops, lr, laws, hardware, memory), and the result is the plan-file dataclass
other commands read.
"""

from __future__ import annotations

from dataclasses import asdict

from grow_cli.errors import GrowError
from grow_cli.planning.budget import fixed_corpus_use, progressive_budgets
from grow_cli.flops import check_convention, flops_per_token, megatron_flops_per_token, nonembedding_flops_per_token
from grow_cli.planning.attention import KVGroupsRule
from grow_cli.planning.hardware import check_mfu, gpu_spec
from grow_cli.planning.hyperparams import HyperparamRule
from grow_cli.planning.laws import get_law
from grow_cli.planning.lr import LRLadder
from grow_cli.planning.memory import check_batch, estimate_memory
from grow_cli.planning.planfile import Plan, PlanRequest, PlanTotals, StagePlan, iterations_for
from grow_cli.planning.series import resolve_series


def check_request(request: PlanRequest) -> None:
    """Reject impossible inputs with one-line errors before any arithmetic."""
    if not request.sizes:
        raise GrowError("the series is empty; give --max or --sizes")
    if request.tokens_per_param <= 0:
        raise GrowError(f"tokens per parameter must be positive, got {request.tokens_per_param}")
    check_convention(request.flops_convention)
    check_mfu(request.mfu)
    gpu_spec(request.gpu)
    get_law(request.law)
    if request.lr_ladder is not None:
        LRLadder.parse(request.lr_ladder)
    KVGroupsRule.parse(request.kv_groups)
    if request.seq_len <= 0 or request.vocab <= 0:
        raise GrowError(f"--seq-len ({request.seq_len}) and --vocab ({request.vocab}) must be positive")
    for name in ("tp", "pp", "dp"):
        if getattr(request.layout, name) < 1:
            raise GrowError(f"--{name} must be at least 1, got {getattr(request.layout, name)}")
    if request.global_batch is not None:
        check_batch(request.global_batch, request.micro_batch, request.layout.dp)


def build_plan(request: PlanRequest) -> Plan:
    """The full series plan for `request` (validated first: user mistakes raise GrowError)."""
    check_request(request)
    layout = request.layout
    members = resolve_series(
        list(request.sizes),
        tp=layout.tp,
        pp=layout.pp,
        vocab=request.vocab,
        seq_len=request.seq_len,
        tied=request.tied,
        auto_shapes=request.auto_shapes,
        kv_groups=request.kv_groups,
    )
    names = [m.name for m in members]
    per_token = [flops_per_token(request.flops_convention, m.shape, m.nominal, layout.tp) for m in members]
    scratch_tokens = [request.tokens_per_param * m.nominal for m in members]
    budgets = progressive_budgets(names, per_token, scratch_tokens)
    corpus = scratch_tokens[-1] if request.fixed_data else None
    data_use = fixed_corpus_use([b.tokens_incremental for b in budgets], corpus) if corpus else None
    rule = HyperparamRule.of(names, request.global_batch, request.lr_ladder)
    computes = [nonembedding_flops_per_token(m.shape) * d for m, d in zip(members, scratch_tokens)]
    chosen = rule.stages([m.nominal for m in members], computes, request.seq_len, request.micro_batch, layout.dp)
    law, gpu = get_law(request.law), gpu_spec(request.gpu)

    stages, hours_scratch = [], []
    for i, (member, budget, hyper) in enumerate(zip(members, budgets, chosen)):
        counts = member.shape.param_counts()
        lr, global_batch = hyper.lr, hyper.global_batch
        iters = iterations_for(budget.tokens_incremental, global_batch, member.shape.seq_len)
        hardware_flops_per_token = megatron_flops_per_token(member.shape, layout.tp)
        hours_scratch.append(gpu.hours(hardware_flops_per_token * budget.tokens_scratch, request.mfu))
        memory = estimate_memory(member.shape, layout, request.micro_batch, global_batch)
        predicted = law.predicts(counts.total, budget.tokens_scratch, member.shape.vocab)
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
                global_batch=global_batch,
                micro_batch=request.micro_batch,
                layout=layout,
                init_from=names[i - 1] if i else None,
                predicted_loss=law.loss(counts.total, budget.tokens_scratch) if predicted else None,
                loss_outside_fit=not predicted,
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
        inputs=request,
        totals=totals,
        flops_convention=request.flops_convention,
    )
