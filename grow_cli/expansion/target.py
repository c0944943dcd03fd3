"""The target shape of an expansion: from a size name, a plan stage or explicit flags, checked.

Only the architecture's sizes come from the request; everything that is not grown (vocabulary,
head dim, tied embeddings, RoPE base, norm epsilon) comes from the source checkpoint, and a
request that would change one of them is refused instead of silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from grow_cli.errors import GrowError
from grow_cli.growth_rules import GROWN_FIELDS, check_growth
from grow_cli.shape import PRESETS, ModelShape, auto_shape, resolve_shape
from grow_cli.units import parse_count, size_name


@dataclass(frozen=True)
class TargetRequest:
    """What the user asked for: a size (`--to`), a plan stage, and/or explicit fields."""

    to: str | None = None
    plan: str | None = None
    stage: str | None = None
    hidden: int | None = None
    ffn: int | None = None
    layers: int | None = None
    heads: int | None = None
    kv_groups: int | None = None

    def overrides(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in GROWN_FIELDS if getattr(self, name) is not None}


def _from_size(source: ModelShape, to: str) -> ModelShape:
    """A preset, else an auto shape with the source's head dim (heads grow as whole heads)."""
    nominal = parse_count(to, "target size")
    if size_name(nominal) in PRESETS:
        return resolve_shape(to, vocab=source.vocab, seq_len=source.seq_len, tied_embeddings=source.tied_embeddings)[2]
    multi_head = source.kv_groups == source.heads
    return auto_shape(
        nominal,
        kv_groups=None if multi_head else source.kv_groups,
        vocab=source.vocab,
        seq_len=source.seq_len,
        tied_embeddings=source.tied_embeddings,
        head_dim=source.head_dim,
    )


def _from_plan(source: ModelShape, plan_path: str, stage: str | None, source_stage: str | None):
    from grow_cli.planning.planfile import load_plan

    plan = load_plan(plan_path)
    if stage is None:
        if source_stage is None:
            raise GrowError(f"the source records no plan stage; pass --stage N to pick one of {plan_path}'s stages")
        current = plan.stage(source_stage)
        if current.index >= len(plan.stages):
            raise GrowError(f"the source is stage {current.name}, the last of {plan_path}: there is nothing to grow into")
        stage_plan = plan.stages[current.index]  # indices are 1-based: this is the next stage
    else:
        stage_plan = plan.stage(stage)
    planned = stage_plan.shape
    for name in ("vocab", "head_dim", "tied_embeddings"):
        if getattr(planned, name) != getattr(source, name):
            raise GrowError(
                f"plan stage {stage_plan.name} has {name}={getattr(planned, name)} but the source has "
                f"{getattr(source, name)}; expansion keeps {name} (re-plan with the source's value)"
            )
    return planned, stage_plan.name


def resolve_target(source: ModelShape, request: TargetRequest, source_stage: str | None = None) -> tuple[ModelShape, str | None]:
    """(target shape, plan stage name or size name) for `request`, checked against `source`."""
    if request.to and request.plan:
        raise GrowError("pass either --to or --plan/--stage, not both")
    if request.stage and not request.plan:
        raise GrowError("--stage needs --plan PLAN.yaml")
    label: str | None = None
    if request.plan:
        base, label = _from_plan(source, request.plan, request.stage, source_stage)
    elif request.to:
        base, label = _from_size(source, request.to), size_name(parse_count(request.to, "target size"))
    elif request.overrides():
        base = source
    else:
        raise GrowError("say what to grow into: --to SIZE (e.g. 2B), --plan PLAN --stage N, or --hidden/--ffn/--layers/--heads/--kv-groups")
    target = ModelShape(
        **{name: request.overrides().get(name, getattr(base, name)) for name in GROWN_FIELDS},
        head_dim=base.head_dim,
        vocab=source.vocab,
        seq_len=base.seq_len,
        tied_embeddings=source.tied_embeddings,
        norm_eps=source.norm_eps,
        rope_theta=source.rope_theta,
        rope_scaling=source.rope_scaling,
    )
    check_growth(source, target)
    return target, label
