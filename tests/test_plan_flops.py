"""FLOPs conventions against FLOPs counted on a real megatron-core GPTModel and Megatron-LM's formula."""

from __future__ import annotations

import pytest

from grow_cli.errors import GrowError
from grow_cli.flops import CONVENTIONS, check_convention, flops_per_token
from grow_cli.shape import PRESETS, ModelShape

SHAPES = {
    "mha": ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=4, head_dim=16, vocab=1000, seq_len=32),
    "gqa": ModelShape(hidden=64, ffn=160, layers=3, heads=8, kv_groups=2, head_dim=8, vocab=700, seq_len=24),
    "tied": ModelShape(
        hidden=48, ffn=128, layers=2, heads=3, kv_groups=3, head_dim=32, vocab=300, seq_len=16, tied_embeddings=True
    ),
}



def _measured_flops_per_token(shape: ModelShape) -> tuple[float, int]:
    """FLOPs torch executes for one forward + backward of a megatron GPTModel, per token."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from grow_cli.layout import Layout
    from grow_cli.runtime.model import build_gpt_model

    # megatron's reference ("local") attention runs the scores as (b)mm, which the counter sees
    model = build_gpt_model(shape, Layout(), attention="local")
    batch = 2
    tokens = torch.randint(0, shape.vocab, (batch, shape.seq_len))
    positions = torch.arange(shape.seq_len).unsqueeze(0).expand(batch, -1)
    with FlopCounterMode(display=False) as counter:
        model(tokens, positions, None, labels=tokens).sum().backward()
    numel = sum(p.numel() for p in model.parameters())
    return counter.get_total_flops() / (batch * shape.seq_len), numel


@pytest.mark.parametrize("key", sorted(SHAPES))
def test_conventions_match_flops_counted_on_megatron(megatron_runtime, key):
    shape = SHAPES[key]
    measured, numel = _measured_flops_per_token(shape)
    # the counter sees full (non-causal) attention score matmuls: exactly PaLM's accounting
    assert flops_per_token("palm", shape, 0) == measured
    causal_saving = 6 * shape.layers * shape.heads * shape.head_dim * shape.seq_len
    assert flops_per_token("megatron", shape, 0) == measured - causal_saving
    assert flops_per_token("6nd-total", shape, 0) == 6 * numel
    assert flops_per_token("reference", shape, 1.5e5) == 6 * 1.5e5


def _megatron_lm_formula(shape: ModelShape, tp: int) -> float:
    """Megatron-LM's num_floating_point_operations (dense, causal) per token, in its own layout.

    12·s·L·h²·[(1 + G/H + s/(2h))·(H·d/h) + (f/h)·(3/2) + V_pad/(2·L·h)] / s
    """
    h, s, layers = shape.hidden, shape.seq_len, shape.layers
    q_ratio = shape.heads * shape.head_dim / h
    attention = (1 + shape.kv_groups / shape.heads + s / h * 0.5) * q_ratio
    mlp = shape.ffn / h * 1.5
    logits = shape.padded_vocab(tp) / (2 * layers * h)
    return 12 * layers * h * h * (attention + mlp + logits)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("tp", [1, 4])
def test_megatron_convention_is_megatron_lms_formula(name, tp):
    shape = PRESETS[name]
    assert flops_per_token("megatron", shape, 0, tp) == pytest.approx(_megatron_lm_formula(shape, tp), rel=1e-12)


def test_gqa_and_seq_len_enter_where_they_should():
    base = SHAPES["mha"]
    grouped = base.with_(kv_groups=1)
    saved = 6 * base.layers * 2 * base.hidden * (base.heads - 1) * base.head_dim
    for convention in ("megatron", "palm", "6nd-total"):
        assert flops_per_token(convention, base, 0) - flops_per_token(convention, grouped, 0) == saved
    longer = base.with_(seq_len=2 * base.seq_len)
    attention = 6 * base.layers * base.heads * base.head_dim * base.seq_len
    assert flops_per_token("megatron", longer, 0) - flops_per_token("megatron", base, 0) == attention
    assert flops_per_token("palm", longer, 0) - flops_per_token("palm", base, 0) == 2 * attention
    assert flops_per_token("6nd-total", longer, 0) == flops_per_token("6nd-total", base, 0)


def test_unknown_convention_is_a_user_error():
    assert set(CONVENTIONS) == {"reference", "6nd-total", "megatron", "palm"}
    with pytest.raises(GrowError, match="choose one of reference, 6nd-total, megatron, palm"):
        check_convention("kaplan")
