"""The budget rule, the series, the LR ladder and the reference plan of spec §1."""

from __future__ import annotations

import math

import pytest

from grow_cli.errors import GrowError
from grow_cli.planning.budget import fixed_corpus_use, progressive_budgets
from grow_cli.flops import CONVENTIONS
from grow_cli.planning.lr import LRLadder, ScheduleRule
from grow_cli.growth_rules import growth_problems
from grow_cli.layout import Layout
from grow_cli.planning.planfile import Plan, PlanRequest, PlanTotals, load_plan, save_plan
from grow_cli.planning.planner import build_plan
from grow_cli.planning.series import series_sizes, tokens_per_param
from grow_cli.shape import PRESETS, ModelShape, nearest_shape_for_tp

REFERENCE = PlanRequest(sizes=("1B", "2B", "4B", "8B"), tokens_per_param=40.0)


def test_reference_plan_reproduces_spec_section_1():
    plan = build_plan(REFERENCE)
    assert [s.name for s in plan.stages] == ["1B", "2B", "4B", "8B"]
    assert [s.shape for s in plan.stages] == [PRESETS[n] for n in ("1B", "2B", "4B", "8B")]
    assert [s.flops_scratch for s in plan.stages] == pytest.approx([0.24e21, 0.96e21, 3.84e21, 15.36e21], rel=1e-12)
    assert [s.tokens_scratch for s in plan.stages] == pytest.approx([40e9, 80e9, 160e9, 320e9], rel=1e-12)
    assert [s.tokens_incremental for s in plan.stages] == pytest.approx([40e9, 60e9, 120e9, 240e9], rel=1e-12)
    assert [s.lr for s in plan.stages] == [1.5e-3, 1.1e-3, 7e-4, 3e-4]
    assert [s.init_from for s in plan.stages] == [None, "1B", "2B", "4B"]
    totals = plan.totals
    assert totals.flops_independent == pytest.approx(20.4e21, rel=1e-12)
    assert totals.flops_progressive == pytest.approx(15.36e21, rel=1e-12)
    assert totals.saving_fraction == pytest.approx(1 - 15.36 / 20.4, rel=1e-12)  # "about 25%"
    assert totals.tokens_progressive == pytest.approx(460e9, rel=1e-12)
    assert totals.tokens_largest_scratch == pytest.approx(320e9, rel=1e-12)


def test_reference_fixed_data_repeats_only_in_the_last_stage():
    plan = build_plan(PlanRequest(sizes=REFERENCE.sizes, tokens_per_param=40.0, fixed_data=True))
    assert [s.unique_tokens for s in plan.stages] == pytest.approx([40e9, 60e9, 120e9, 100e9], rel=1e-12)
    assert [s.repeated_tokens for s in plan.stages] == pytest.approx([0, 0, 0, 140e9], abs=1e-3)
    assert plan.totals.corpus_tokens == pytest.approx(320e9)
    assert plan.totals.repeated_tokens == pytest.approx(460e9 - 320e9)


SERIES = [
    ("1B", "2B", "4B", "8B"),
    ("2M", "4M", "8M"),
    ("1B", "1.5B", "6B"),
    ("125M", "350M", "760M", "1.3B", "2.7B"),
    ("8B",),
]


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("sizes", SERIES, ids=lambda s: "-".join(s))
def test_series_costs_exactly_the_largest_models_scratch_flops(convention, sizes):
    plan = build_plan(PlanRequest(sizes=sizes, tokens_per_param=20.0, flops_convention=convention, auto_shapes=True))
    stages = plan.stages
    spent = 0.0
    for stage in stages:
        # every prefix of the series costs that stage's scratch budget (spec §1 step 2)
        spent += stage.flops_per_token * stage.tokens_incremental
        assert spent == pytest.approx(stage.flops_scratch, rel=1e-12)
        assert stage.flops_cumulative == pytest.approx(stage.flops_scratch, rel=1e-12)
        assert stage.tokens_incremental > 0
    assert sum(s.flops_incremental for s in stages) == pytest.approx(stages[-1].flops_scratch, rel=1e-12)
    assert plan.totals.flops_progressive == pytest.approx(stages[-1].flops_scratch, rel=1e-12)
    assert plan.totals.flops_independent == pytest.approx(sum(s.flops_scratch for s in stages), rel=1e-12)


def test_reference_convention_closed_form():
    # with f = 6N and D = k·N: ΔD_{i+1} = k·(N_{i+1}² − N_i²)/N_{i+1}
    sizes = [1e9, 3e9, 5e9]
    k = 37.0
    budgets = progressive_budgets(["a", "b", "c"], [6 * n for n in sizes], [k * n for n in sizes])
    assert budgets[0].tokens_incremental == pytest.approx(k * sizes[0])
    for (small, big), budget in zip(zip(sizes, sizes[1:]), budgets[1:]):
        assert budget.tokens_incremental == pytest.approx(k * (big**2 - small**2) / big, rel=1e-12)


def test_a_stage_with_no_budget_left_is_refused():
    with pytest.raises(GrowError, match="space the sizes further apart"):
        progressive_budgets(["a", "b"], [10.0, 10.0], [100.0, 90.0])


def test_fixed_corpus_reads_front_to_back_then_repeats():
    uses = fixed_corpus_use([3.0, 4.0, 5.0], corpus_tokens=10.0)
    assert [(u.unique, u.repeated) for u in uses] == [(3.0, 0.0), (4.0, 0.0), (3.0, 2.0)]
    assert sum(u.unique for u in uses) == 10.0


def test_series_sizes():
    assert series_sizes(max_size="8B") == ["1B", "2B", "4B", "8B"]
    assert series_sizes(max_size="7B", stages=3) == ["1.75B", "3.5B", "7B"]
    assert series_sizes(max_size="8B", min_size="1B", stages=3) == ["1B", "2.83B", "8B"]
    assert series_sizes(max_size="8B", min_size="500M") == ["500M", "1B", "2B", "4B", "8B"]
    assert series_sizes(max_size="9B", factor="3x", stages=3) == ["1B", "3B", "9B"]
    assert series_sizes(sizes="1b, 2B,4000M") == ["1B", "2B", "4B"]
    assert series_sizes(max_size="8B", stages=1) == ["8B"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sizes="2B,1B"), "strictly increase"),
        (dict(sizes="1B,1000M"), "strictly increase"),
        (dict(sizes="1B", max_size="8B"), "drop --max"),
        (dict(max_size="8X"), "cannot read --max size"),
        (dict(max_size="8B", min_size="1B", factor="3"), "whole steps"),
        (dict(max_size="8B", min_size="1B", stages=3, factor="2"), "over-determine"),
        (dict(max_size="8B", factor="1"), "more than 1"),
        (dict(max_size="1B", min_size="8B"), "larger than --max"),
        (dict(), "--max 8B"),
    ],
)
def test_series_sizes_rejects(kwargs, message):
    with pytest.raises(GrowError, match=message):
        series_sizes(**kwargs)


def test_tokens_per_param():
    assert tokens_per_param(8e9) == 20.0
    assert tokens_per_param(8e9, chinchilla="2x") == 40.0
    assert tokens_per_param(8e9, per_param=100) == 100.0
    assert tokens_per_param(8e9, tokens="320B") == 40.0
    with pytest.raises(GrowError, match="give one of them"):
        tokens_per_param(8e9, chinchilla="2x", tokens="1T")
    with pytest.raises(GrowError, match="cannot read --chinchilla"):
        tokens_per_param(8e9, chinchilla="abc")


def test_lr_ladder():
    sizes = [1e9, 2e9, 4e9, 8e9]
    assert LRLadder.parse("reference").rates(sizes) == [1.5e-3, 1.1e-3, 7e-4, 3e-4]
    # log-log interpolation: the geometric mean size gets the geometric mean rate; clamped outside
    assert LRLadder.parse("reference").rates([math.sqrt(2e9 * 4e9)])[0] == pytest.approx(math.sqrt(1.1e-3 * 7e-4))
    assert LRLadder.parse("reference").rates([1e8, 7e10]) == [1.5e-3, 3e-4]
    assert LRLadder.parse("3e-4").rates(sizes) == [3e-4] * 4
    ranged = LRLadder.parse("1.5e-3:3e-4").rates(sizes)
    assert ranged[0] == pytest.approx(1.5e-3) and ranged[-1] == pytest.approx(3e-4)
    assert ranged[1] == pytest.approx(1.5e-3 * 0.2 ** (1 / 3))  # a third of the way in log size
    for bad in ("fast", "2", "1e-3:x"):
        with pytest.raises(GrowError, match="lr-ladder"):
            LRLadder.parse(bad).rates(sizes)


def test_schedule_rule():
    rule = ScheduleRule(min_lr_ratio=0.1, warmup_fraction=0.01, warmup_min=100)
    assert rule.warmup_iters(457_764) == 4578
    assert rule.warmup_iters(5_000) == 100
    assert rule.warmup_iters(120) == 60  # never more than half the stage
    plan = build_plan(REFERENCE)
    for stage in plan.stages:
        assert stage.min_lr == pytest.approx(stage.lr / 10)
        assert stage.train_iters == math.ceil(stage.tokens_incremental / (512 * 1024))
        assert stage.train_iters * 512 * 1024 >= stage.tokens_incremental


def test_growth_problems():
    heads = dict(hidden=4096, ffn=14336, layers=32, head_dim=128)
    assert growth_problems(PRESETS["4B"], PRESETS["8B"]) == []
    assert "hidden shrinks" in growth_problems(PRESETS["8B"], PRESETS["4B"])[0]
    assert any("head_dim" in p for p in growth_problems(PRESETS["1B"], PRESETS["2B"].with_(head_dim=64, heads=40, kv_groups=40)))
    # growth-math: 25H/5KV -> 32H/8KV needs 10 groups; 32H/16KV works
    source = ModelShape(hidden=3200, ffn=11200, layers=27, heads=25, kv_groups=5, head_dim=128)
    assert "needs at least 10 KV groups" in growth_problems(source, ModelShape(heads=32, kv_groups=8, **heads))[0]
    assert growth_problems(source, ModelShape(heads=32, kv_groups=16, **heads)) == []


def test_plan_layout_is_checked_and_auto_shapes_fit_it():
    with pytest.raises(GrowError) as error:
        build_plan(PlanRequest(sizes=REFERENCE.sizes, tokens_per_param=40.0, layout=Layout(tp=2)))
    assert "4B cannot run at TP=2" in str(error.value) and "--auto-shapes" in str(error.value)
    # presets that fit are kept; the 4B becomes the shape the error message suggested
    plan = build_plan(PlanRequest(sizes=REFERENCE.sizes, tokens_per_param=40.0, layout=Layout(tp=2), auto_shapes=True))
    assert [s.shape for s in plan.stages] == [PRESETS["1B"], PRESETS["2B"], nearest_shape_for_tp(PRESETS["4B"], 2), PRESETS["8B"]]
    assert nearest_shape_for_tp(PRESETS["4B"], 2).describe() in str(error.value)
    plan = build_plan(PlanRequest(sizes=REFERENCE.sizes, tokens_per_param=40.0, layout=Layout(tp=2, pp=2), auto_shapes=True))
    for stage in plan.stages:
        assert stage.shape.layout_problems(tp=2, pp=2) == []
        assert stage.layout == Layout(tp=2, pp=2)
        assert abs(stage.params_nonembedding / stage.nominal_params - 1) < 0.1  # the 1B preset is 1.09B
    for source, target in zip(plan.stages, plan.stages[1:]):
        assert growth_problems(source.shape, target.shape) == []


def test_plan_inputs_and_totals_are_typed_and_round_trip(tmp_path):
    request = PlanRequest(sizes=REFERENCE.sizes, tokens_per_param=40.0, layout=Layout(tp=1, pp=1, dp=8), fixed_data=True)
    plan = build_plan(request)
    assert plan.inputs == request and isinstance(plan.totals, PlanTotals)
    save_plan(plan, tmp_path / "plan.yaml")
    again = load_plan(tmp_path / "plan.yaml")
    assert again.inputs == request and again.totals == plan.totals and again.stages == plan.stages
    with pytest.raises(GrowError, match="incomplete grow plan file"):
        Plan.from_dict({k: v for k, v in plan.to_dict().items() if k != "totals"})
