"""Training FLOPs per token under the conventions people quote.

Published numbers for "the compute of training this model" differ by up to ~40% for a 1B model
depending on what is counted, so every FLOP figure grow prints names its convention:

- `reference`: 6·N per token with N the size NAME's nominal count (8B -> 8e9). The accounting
  of the progressive-growth method (spec §1); reproduces its 0.24/0.96/3.84/15.36 ZFLOPs.
- `6nd-total`: 6·N per token with N every parameter of the built model (padded vocabulary,
  input embedding and output layer included) — the plain Kaplan/Chinchilla rule.
- `megatron`: Megatron-LM's `num_floating_point_operations` for a dense GQA SwiGLU model with
  causal attention (its form since March 2025) and the TP-padded vocabulary: what Megatron-LM
  logs as throughput, hence what `--mfu` is measured against.
- `palm`: PaLM's MFU accounting (Chowdhery et al. 2022, appendix B), 6·N + 12·L·H·d·s with N
  the matmul weights (all but the input embedding lookup and the norm gains) and attention
  counted non-causally: exactly the matmul FLOPs a dense implementation executes.

Each is forward + backward (3 x the forward's 2 FLOPs per multiply-add). This is the shape's own
accounting (like its parameter counts), so it sits next to `grow_cli.shape`: the planner budgets
with it and training measures throughput and MFU with it, neither through the other.
"""

from __future__ import annotations

from grow_cli.errors import GrowError
from grow_cli.shape import ModelShape

CONVENTIONS = ("reference", "6nd-total", "megatron", "palm")


def check_convention(name: str) -> str:
    """Return `name` if it is a known convention, else raise a GrowError listing them."""
    if name not in CONVENTIONS:
        raise GrowError(f"unknown FLOPs convention {name!r}; choose one of {', '.join(CONVENTIONS)}")
    return name


def matmul_params(shape: ModelShape, tp: int = 1) -> int:
    """Weights that take part in a matrix multiply for every token.

    The projections, the MLP and the output layer (tied or not); not the input embedding (a
    gather) nor the RMSNorm gains (elementwise, ~1e-4 of the parameters).
    """
    norms = shape.layers * 2 * shape.hidden + shape.hidden
    return shape.param_counts().nonembedding - norms + shape.padded_vocab(tp) * shape.hidden


def attention_flops_per_token(shape: ModelShape, causal: bool) -> float:
    """Score (QK^T) and mix (AV) FLOPs per token for forward + backward over all layers.

    Forward: 2 matmuls x 2 FLOPs x s x H·d per layer; backward twice that. A causal mask halves
    the useful work, which Megatron counts and PaLM does not.
    """
    full = 12.0 * shape.layers * shape.heads * shape.head_dim * shape.seq_len
    return full / 2 if causal else full


def nonembedding_flops_per_token(shape: ModelShape) -> float:
    """Training FLOPs per token without the vocabulary: DeepSeek LLM's M (Bi et al. 2024, §3.1).

    6·L·[h·(H·d + 2·G·d) + H·d·h] (q, k, v, o) + 6·L·3·h·f (SwiGLU) + 6·L·H·d·s (causal
    attention); for their MHA shapes (f = 8h/3) it is their 72·L·h² + 6·L·h·s. The compute
    C = M·D their batch-size and learning-rate laws are fitted in.
    """
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_groups * shape.head_dim
    projections = 6.0 * shape.layers * (h * (q + 2 * kv) + q * h)
    mlp = 6.0 * shape.layers * 3 * h * shape.ffn
    return projections + mlp + attention_flops_per_token(shape, causal=True)


def megatron_flops_per_token(shape: ModelShape, tp: int = 1) -> float:
    """Megatron-LM's per-token training FLOPs for a dense Llama-style model.

    The non-embedding FLOPs (projections, SwiGLU, causal attention) + 6·h·V_pad (logits).
    RMSNorm, rotary and the softmax are not counted, as in Megatron-LM.
    """
    return nonembedding_flops_per_token(shape) + 6.0 * shape.hidden * shape.padded_vocab(tp)


def flops_per_token(convention: str, shape: ModelShape, nominal_params: float, tp: int = 1) -> float:
    """Training FLOPs per token of `shape` (named `nominal_params`) under `convention`."""
    check_convention(convention)
    if convention == "reference":
        return 6.0 * nominal_params
    if convention == "6nd-total":
        return 6.0 * shape.padded(tp).param_counts().total
    if convention == "megatron":
        return megatron_flops_per_token(shape, tp)
    # palm
    return 6.0 * matmul_params(shape, tp) + attention_flops_per_token(shape, causal=False)
