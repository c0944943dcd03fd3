"""Where each weight of a GPTModel lives in a torch_dist checkpoint, and how it is packed.

Global tensors do not depend on TP/PP. Per-layer tensors are stacked on a leading layer axis
(`[L, ...]`). The fused QKV rows are interleaved per KV group (`[q heads of group g; k_g; v_g]`,
each head `head_dim` rows) and SwiGLU's fc1 is `[gate; up]`. These facts are shared by expand,
export and import, so they are written down once here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from grow_cli.shape import ModelShape

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
ATTN_NORM = "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
QKV = "decoder.layers.self_attention.linear_qkv.weight"
PROJ = "decoder.layers.self_attention.linear_proj.weight"
MLP_NORM = "decoder.layers.mlp.linear_fc1.layer_norm_weight"
FC1 = "decoder.layers.mlp.linear_fc1.weight"
FC2 = "decoder.layers.mlp.linear_fc2.weight"

LAYER_KEYS = (ATTN_NORM, QKV, PROJ, MLP_NORM, FC1, FC2)
# Modules whose `_extra_state` megatron checkpoints as one ShardedObject per layer.
EXTRA_STATE_MODULES = (
    "decoder.layers.self_attention.linear_proj",
    "decoder.layers.self_attention.linear_qkv",
    "decoder.layers.mlp.linear_fc1",
    "decoder.layers.mlp.linear_fc2",
)

# What `grow pretrain` and Megatron-LM store beside the weights (optimizer state, per-rank RNG
# states, Megatron-LM's rerun state machine): readers that want the model skip these keys. A
# chained optimizer (several param groups, e.g. Megatron-LM with MoE or decoupled LRs) prefixes
# its keys with `chained_N.`.
TRAINING_STATE_PREFIXES = ("optimizer.", "rng_state", "rerun_state_machine", "opt_param_scheduler")
_CHAINED = re.compile(r"^chained_\d+\.")


def is_training_state(key: str) -> bool:
    return _CHAINED.sub("", key).startswith(TRAINING_STATE_PREFIXES)


def extra_state_objects(shape: ModelShape) -> dict[str, None]:
    """The `_extra_state` entries megatron writes for a local-spec GPTModel of `shape` (all None).

    A checkpoint written without a model must carry them or megatron refuses to load it.
    """
    return {
        f"{module}._extra_state/shard_{layer}_{shape.layers}": None
        for layer in range(shape.layers)
        for module in EXTRA_STATE_MODULES
    }


@dataclass(frozen=True)
class TensorSpec:
    key: str
    shape: tuple[int, ...]

    @property
    def stacked(self) -> bool:
        return self.key in LAYER_KEYS


def tensor_specs(shape: ModelShape, vocab_rows: int) -> list[TensorSpec]:
    """Every weight tensor of `shape` with its global checkpoint shape (embedding rows = `vocab_rows`)."""
    h, L, d = shape.hidden, shape.layers, shape.head_dim
    specs = [
        TensorSpec(EMBEDDING, (vocab_rows, h)),
        TensorSpec(ATTN_NORM, (L, h)),
        TensorSpec(QKV, (L, (shape.heads + 2 * shape.kv_groups) * d, h)),
        TensorSpec(PROJ, (L, h, shape.heads * d)),
        TensorSpec(MLP_NORM, (L, h)),
        TensorSpec(FC1, (L, 2 * shape.ffn, h)),
        TensorSpec(FC2, (L, h, shape.ffn)),
        TensorSpec(FINAL_NORM, (h,)),
    ]
    if not shape.tied_embeddings:
        specs.append(TensorSpec(OUTPUT, (vocab_rows, h)))
    return specs


def split_qkv(weight: torch.Tensor, shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused, group-interleaved QKV rows -> (q [H*d, h], k [G*d, h], v [G*d, h]) in head order."""
    groups, per_group, d = shape.kv_groups, shape.heads // shape.kv_groups, shape.head_dim
    blocks = weight.reshape(groups, (per_group + 2) * d, -1)
    q = blocks[:, : per_group * d].reshape(shape.heads * d, -1)
    k = blocks[:, per_group * d : (per_group + 1) * d].reshape(groups * d, -1)
    v = blocks[:, (per_group + 1) * d :].reshape(groups * d, -1)
    return q, k, v


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """Inverse of `split_qkv`."""
    groups, per_group, d = shape.kv_groups, shape.heads // shape.kv_groups, shape.head_dim
    cols = q.shape[-1]
    blocks = torch.cat(
        [q.reshape(groups, per_group * d, cols), k.reshape(groups, d, cols), v.reshape(groups, d, cols)], dim=1
    )
    return blocks.reshape((shape.heads + 2 * groups) * d, cols)


def split_fc1(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SwiGLU fc1 `[gate; up]` -> (gate, up)."""
    gate, up = weight.chunk(2, dim=0)
    return gate, up
