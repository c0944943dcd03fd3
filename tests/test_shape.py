"""ModelShape against megatron-core itself, the spec's table, and the TP rules Megatron enforces."""

from __future__ import annotations

import math

import pytest

from grow_cli.errors import GrowError
from grow_cli.shape import PRESETS, ModelShape, auto_shape, nearest_shape_for_tp, resolve_shape

TINY_SHAPES = {
    "mha-untied": ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=4, head_dim=16, vocab=1000, seq_len=32),
    "gqa-untied": ModelShape(hidden=64, ffn=176, layers=3, heads=8, kv_groups=2, head_dim=8, vocab=1000, seq_len=32),
    "mha-tied": ModelShape(
        hidden=96, ffn=256, layers=2, heads=3, kv_groups=3, head_dim=32, vocab=777, seq_len=16, tied_embeddings=True
    ),
    "gqa-tied-wide-heads": ModelShape(
        hidden=48, ffn=128, layers=2, heads=4, kv_groups=1, head_dim=16, vocab=500, seq_len=16, tied_embeddings=True
    ),
}



@pytest.mark.parametrize("key", sorted(TINY_SHAPES))
def test_param_counts_match_megatron_gpt_model(megatron_runtime, key):
    from grow_cli.layout import Layout
    from grow_cli.runtime.model import build_gpt_model

    shape = TINY_SHAPES[key]
    model = build_gpt_model(shape, Layout(), attention="local")
    vocab = shape.padded_vocab(1)
    counts = shape.padded(1).param_counts()  # the built model's tensors, padding rows included
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == counts.total
    embedding = sum(p.numel() for name, p in params.items() if "word_embeddings" in name or "output_layer" in name)
    assert embedding == counts.embedding
    assert counts.total - counts.embedding == counts.nonembedding
    per_layer = sum(p.numel() for name, p in params.items() if ".layers.0." in name)
    assert per_layer == shape.layer_params()
    assert vocab % 1024 == 0 and vocab - 1024 < shape.vocab <= vocab  # padded to 128 x 8
    # the model's size leaves the padding rows out: one row per token of the tokenizer
    size = shape.param_counts()
    assert size.nonembedding == counts.nonembedding
    assert size.embedding == shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2)
    assert counts.total - size.total == (vocab - shape.vocab) * shape.hidden * (1 if shape.tied_embeddings else 2)


def test_preset_counts_match_the_spec_table():
    # spec §1: non-embedding parameters of the reference series, to three significant digits
    expected = {"1B": 1.09e9, "2B": 2.09e9, "4B": 4.01e9, "8B": 8.03e9}
    for name, value in expected.items():
        count = PRESETS[name].param_counts().nonembedding
        assert float(f"{count:.3g}") == value, name
        # the closed form: L·(4h·(H·d) + 3hf + 2h) + h for multi-head attention
        s = PRESETS[name]
        assert count == s.layers * (4 * s.hidden * s.heads * s.head_dim + 3 * s.hidden * s.ffn + 2 * s.hidden) + s.hidden


def test_preset_shapes_are_the_spec_table():
    table = {"1B": (2048, 7168, 18, 16), "2B": (2560, 8960, 22, 20), "4B": (3200, 11200, 27, 25), "8B": (4096, 14336, 33, 32)}
    for name, (h, f, layers, heads) in table.items():
        s = PRESETS[name]
        assert (s.hidden, s.ffn, s.layers, s.heads, s.kv_groups, s.head_dim) == (h, f, layers, heads, heads, 128)


@pytest.mark.parametrize("exponent", [6 + k / 4 for k in range(25)])
def test_auto_shape_lands_near_the_requested_size(exponent):
    n = 10**exponent
    shape = auto_shape(n)
    error = abs(shape.param_counts().nonembedding / n - 1)
    # below 100M one layer is a large share of the model: depth granularity bounds the error
    assert error < (0.03 if n >= 1e8 else 0.08), shape.describe()
    assert shape.hidden % shape.head_dim == 0 and shape.heads == shape.hidden // shape.head_dim
    assert shape.layout_problems() == []


def test_auto_shape_respects_tp_pp_and_head_dim():
    for tp in (2, 4, 8):
        shape = auto_shape(3e9, tp=tp, pp=4, head_dim=128)
        assert shape.layout_problems(tp=tp, pp=4) == []
        assert shape.layers % 4 == 0 and shape.head_dim == 128
        assert abs(shape.param_counts().nonembedding / 3e9 - 1) < 0.1


def test_4b_runs_only_at_tp_1_or_5():
    four = PRESETS["4B"]
    assert four.feasible_tp(limit=8) == [1, 5]
    assert PRESETS["8B"].feasible_tp(limit=8) == [1, 2, 4, 8]
    assert PRESETS["2B"].feasible_tp(limit=8) == [1, 2, 4, 5]
    with pytest.raises(GrowError) as error:
        four.check_layout(tp=2, name="4B")
    message = str(error.value)
    assert "25 heads are not divisible by TP=2" in message and "Feasible TP: 1, 5" in message
    assert "\n" not in message


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_suggested_shape_fits_the_tp_and_the_size(tp):
    four = PRESETS["4B"]
    near = nearest_shape_for_tp(four, tp)
    assert near.layout_problems(tp=tp) == []
    assert abs(math.log(near.param_counts().nonembedding / four.param_counts().nonembedding)) < 0.03
    with pytest.raises(GrowError) as error:
        four.check_layout(tp=tp, name="4B")
    assert near.describe() in str(error.value)


def test_gqa_suggestion_keeps_grouped_attention():
    shape = ModelShape(hidden=1536, ffn=5376, layers=16, heads=12, kv_groups=3, head_dim=128)
    near = nearest_shape_for_tp(shape, 4)
    assert near.layout_problems(tp=4) == []
    assert near.kv_groups < near.heads


def test_resolve_shape_prefers_presets_unless_told():
    assert resolve_shape("4B")[2] == PRESETS["4B"]
    name, nominal, shape = resolve_shape("4b", tp=2, use_presets=False)
    assert (name, nominal) == ("4B", 4e9) and shape.layout_problems(tp=2) == []
    assert resolve_shape("350M")[0] == "350M"


def test_gqa_groups_needed_for_growth():
    from grow_cli.growth_rules import gqa_groups_needed

    source = ModelShape(hidden=3200, ffn=11200, layers=27, heads=25, kv_groups=5, head_dim=128)
    assert gqa_groups_needed(source, heads=32, kv_groups=8) == 10  # growth-math: infeasible
    assert gqa_groups_needed(source, heads=32, kv_groups=16) == 15  # <= 16: feasible
    assert gqa_groups_needed(PRESETS["4B"], heads=32, kv_groups=32) == 25  # MHA always fits
    assert gqa_groups_needed(source, heads=50, kv_groups=5) == 5  # wider groups hold a source group
