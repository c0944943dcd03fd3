"""What `grow plan` picks beyond the reference series: TP-friendly shapes, GQA, batch and LR per stage."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_grow

from grow_cli.errors import GrowError
from grow_cli.growth_rules import gqa_growable
from grow_cli.layout import Layout
from grow_cli.planning.hyperparams import deepseek_batch_tokens, deepseek_lr
from grow_cli.planning.planfile import PlanRequest
from grow_cli.planning.planner import build_plan
from grow_cli.shape import PRESETS, ModelShape, auto_shape

SERIES_70B = ("8.75B", "17.5B", "35B", "70B")  # grow plan --max 70B
REFERENCE = ("1B", "2B", "4B", "8B")


def _plan(sizes=SERIES_70B, **changes):
    return build_plan(PlanRequest(sizes=sizes, tokens_per_param=20.0, **changes))


def _runs_at(shape: ModelShape, tp: int) -> bool:
    """Megatron's rules, restated: heads and FFN split over TP, KV groups and TP divide one another."""
    groups = shape.kv_groups
    return shape.heads % tp == 0 and shape.ffn % tp == 0 and (groups % tp == 0 or tp % groups == 0)


def test_a_70b_series_runs_at_every_tp_of_a_node_and_tp_does_not_change_it():
    plan = _plan()
    for stage in plan.stages:
        assert all(_runs_at(stage.shape, tp) for tp in (1, 2, 4, 8)), stage.shape.describe()
        assert stage.shape.heads % 8 == 0 and stage.shape.kv_groups % 8 == 0
    # the shape no longer depends on the TP the plan was made for
    at_tp8 = _plan(layout=Layout(tp=8, dp=8))
    assert [s.shape for s in at_tp8.stages] == [s.shape for s in plan.stages]
    at_tp16 = _plan(layout=Layout(tp=16))
    assert all(_runs_at(s.shape, 16) for s in at_tp16.stages)


@pytest.mark.parametrize("n", [1e9, 2.5e9, 13e9, 34e9, 180e9])
def test_auto_shapes_from_1b_divide_by_8(n):
    for groups in (None, 8):
        shape = auto_shape(n, kv_groups=groups, head_dim=128)
        assert shape.heads % 8 == 0 and shape.ffn % (64 * 8) == 0, shape.describe()
        assert abs(shape.param_counts().nonembedding / n - 1) < 0.03


def test_kv_groups_auto_is_8_from_7b_and_every_stage_grows_exactly():
    plan = _plan()
    assert [s.shape.kv_groups for s in plan.stages] == [8, 8, 8, 8]
    for source, target in zip(plan.stages, plan.stages[1:]):
        s, t = source.shape, target.shape
        assert gqa_growable(s, t.heads, t.kv_groups)
        # the rule by hand: each source group's H/G heads fit in ceil(r/r') target groups of H'/G'
        assert s.kv_groups * math.ceil((s.heads // s.kv_groups) / (t.heads // t.kv_groups)) <= t.kv_groups
    # a series that starts small: stages with at most 8 heads keep one group per head
    small = _plan(sizes=("50M", "800M", "7B"))
    for source, target in zip(small.stages, small.stages[1:]):
        assert gqa_growable(source.shape, target.shape.heads, target.shape.kv_groups)
    assert small.stages[-1].shape.kv_groups == 8
    assert all(s.shape.kv_groups == min(8, s.shape.heads) for s in small.stages)


def test_kv_groups_below_7b_mha_and_explicit_counts():
    assert all(s.shape.kv_groups == s.shape.heads for s in _plan(sizes=("1B", "1.5B", "6B")).stages)
    assert all(s.shape.kv_groups == s.shape.heads for s in _plan(kv_groups="mha").stages)
    four = _plan(kv_groups="4")
    assert [s.shape.kv_groups for s in four.stages] == [4, 4, 4, 4]
    # the reference series stays multi-head; elsewhere a preset whose heads split into 8 gets 8 groups
    assert all(s.shape.kv_groups == s.shape.heads for s in _plan(sizes=REFERENCE).stages)
    wide = _plan(sizes=("1B", "2.89B", "8.37B", "24.2B", "70B"))  # --min 1B --max 70B --stages 5
    assert wide.stages[0].shape == PRESETS["1B"].with_(kv_groups=8)
    assert [s.shape.kv_groups for s in wide.stages] == [8] * 5
    # the 2B's 20 and the 4B's 25 heads do not split into 8 groups, so they stay multi-head, and
    # the stages after them too: an MHA stage of H heads grows only into H groups or more
    sixteen = _plan(sizes=("2B", "4B", "8B", "16B"))
    assert [s.shape for s in sixteen.stages[:3]] == [PRESETS[n] for n in ("2B", "4B", "8B")]
    assert sixteen.stages[3].shape.kv_groups == sixteen.stages[3].shape.heads
    # an explicit count regroups presets; the 2B's 20 heads do not split into 8 groups
    with pytest.raises(GrowError, match="20 heads cannot be split into 8 KV groups.*--auto-shapes"):
        _plan(sizes=REFERENCE, kv_groups="8")
    regrouped = _plan(sizes=("1B", "8B"), kv_groups="8")
    assert [s.shape for s in regrouped.stages] == [PRESETS["1B"].with_(kv_groups=8), PRESETS["8B"].with_(kv_groups=8)]
    with pytest.raises(GrowError, match="cannot read --kv-groups"):
        _plan(kv_groups="some")


def test_nonembedding_flops_are_deepseeks_m():
    from grow_cli.flops import megatron_flops_per_token, nonembedding_flops_per_token

    # DeepSeek LLM 7B: 30 layers of 4096, FFN 8h/3, MHA; M = 72·L·h² + 6·L·h·s (their §3.1)
    shape = ModelShape(hidden=4096, ffn=4096 * 8 // 3, layers=30, heads=32, kv_groups=32, head_dim=128, seq_len=4096)
    closed = 72 * 30 * 4096**2 + 6 * 30 * 4096 * 4096
    assert nonembedding_flops_per_token(shape) == pytest.approx(closed, rel=1e-3)  # 8h/3 rounds down
    vocab = shape.padded_vocab(1)
    assert megatron_flops_per_token(shape) == nonembedding_flops_per_token(shape) + 6 * 4096 * vocab


def test_deepseek_laws_reproduce_the_papers_own_choices():
    """DeepSeek LLM trained its 7B (2T tokens) at 2304 x 4096 tokens and LR 4.2e-4, its 67B
    (95 layers of 8192) at 4608 x 4096 and 3.2e-4: the laws land near what they picked."""
    m7 = 72 * 30 * 4096**2 + 6 * 30 * 4096 * 4096
    m67 = 72 * 95 * 8192**2 + 6 * 95 * 8192 * 4096
    assert deepseek_batch_tokens(m7 * 2e12) == pytest.approx(2304 * 4096, rel=0.05)
    assert deepseek_lr(m7 * 2e12) == pytest.approx(4.2e-4, rel=0.03)
    assert deepseek_batch_tokens(m67 * 2e12) == pytest.approx(4608 * 4096, rel=0.1)
    assert deepseek_lr(m67 * 2e12) == pytest.approx(3.2e-4, rel=0.03)


def test_batch_and_lr_per_stage_follow_the_published_formula():
    plan = _plan(layout=Layout(tp=8, dp=24), micro_batch=2)
    unit = 192  # lcm(64, micro 2 x DP 24)
    for stage in plan.stages:
        s = stage.shape
        # C = M·D, M computed here from the parameter count: 6 per matmul weight + causal attention
        matmul = s.param_counts().nonembedding - (2 * s.layers + 1) * s.hidden
        compute = (6 * matmul + 6 * s.layers * s.heads * s.head_dim * s.seq_len) * stage.tokens_scratch
        assert compute == pytest.approx(stage.flops_scratch / stage.nominal_params * s.param_counts().nonembedding, rel=0.02)
        tokens = 0.2920 * compute**0.3271
        assert stage.global_batch % unit == 0
        assert abs(stage.global_batch - tokens / s.seq_len) <= unit / 2
        assert stage.lr == float(f"{0.3118 * compute ** -0.1250:.4g}")
        assert stage.train_iters == math.ceil(stage.tokens_incremental / (stage.global_batch * s.seq_len))
    rates = [s.lr for s in plan.stages]
    assert all(a > b for a, b in zip(rates, rates[1:]))  # no clamp at 3e-4 from 17.5B up any more
    # a 70B step is millions of tokens, not 0.5M: far fewer iterations than 2M
    assert plan.stages[-1].tokens_per_iter > 4e6 and plan.stages[-1].train_iters < 200_000


def test_pinned_batch_or_ladder_wins_and_the_reference_recipe_stays():
    pinned = _plan(global_batch=1024)
    assert [s.global_batch for s in pinned.stages] == [1024] * 4
    assert [s.lr for s in pinned.stages] == [s.lr for s in _plan().stages]  # the LR still follows the law
    laddered = _plan(lr_ladder="1.5e-4")
    assert [s.lr for s in laddered.stages] == [1.5e-4] * 4
    assert [s.global_batch for s in laddered.stages] == [s.global_batch for s in _plan().stages]
    reference = build_plan(PlanRequest(sizes=REFERENCE, tokens_per_param=40.0))
    assert [s.global_batch for s in reference.stages] == [512] * 4
    assert [s.lr for s in reference.stages] == [1.5e-3, 1.1e-3, 7e-4, 3e-4]
    assert [s.shape for s in reference.stages] == [PRESETS[n] for n in REFERENCE]


def test_cli_shows_tp_sizes_and_per_stage_batches(monkeypatch):
    proc = run_grow(["plan", "--max", "70B", "--json"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["report"]["tp_sizes"] == {s["name"]: [1, 2, 4, 8] for s in data["stages"]}
    assert data["inputs"]["global_batch"] is None and data["inputs"]["kv_groups"] == "auto"
    assert len({s["global_batch"] for s in data["stages"]}) == 4
    reference = json.loads(run_grow(["plan", "--max", "8B", "--json"]).stdout)
    assert reference["report"]["tp_sizes"] == {"1B": [1, 2, 4, 8], "2B": [1, 2, 4, 5], "4B": [1, 5], "8B": [1, 2, 4, 8]}
    monkeypatch.setenv("COLUMNS", "200")  # rich's width off a terminal
    table = run_grow(["plan", "--max", "70B", "--gpus", "64", "--tp", "8"])
    assert table.returncode == 0, table.stderr
    assert "runs at" in table.stdout and "1,2,4,8" in table.stdout and "DeepSeek LLM" in table.stdout
