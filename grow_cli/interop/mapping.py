"""Which Hugging Face Llama tensors each megatron checkpoint tensor holds, and how they are packed.

Per layer, megatron fuses q/k/v into one group-interleaved `linear_qkv` and gate/up into one
`linear_fc1` (`[gate; up]`); HF keeps them apart. megatron's rotary embedding is the
non-interleaved one, identical to HF's `rotate_half`, so q and k rows need no permutation (the
Meta-checkpoint converters' permute does not apply between these two formats). The vocabulary is
the one exception to "same numbers, other names": megatron pads embedding/output rows for TP,
HF has exactly `shape.vocab` rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from grow_cli.checkpoint import layout
from grow_cli.shape import ModelShape

HF_EMBEDDING = "model.embed_tokens.weight"
HF_FINAL_NORM = "model.norm.weight"
HF_OUTPUT = "lm_head.weight"

# megatron per-layer key -> the HF per-layer tensors it packs, in packing order.
LAYER_MAP: dict[str, tuple[str, ...]] = {
    layout.ATTN_NORM: ("input_layernorm.weight",),
    layout.QKV: ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    layout.PROJ: ("self_attn.o_proj.weight",),
    layout.MLP_NORM: ("post_attention_layernorm.weight",),
    layout.FC1: ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    layout.FC2: ("mlp.down_proj.weight",),
}
# megatron global key -> HF key (embedding and output are row-padded in megatron).
GLOBAL_MAP: dict[str, str] = {
    layout.EMBEDDING: HF_EMBEDDING,
    layout.FINAL_NORM: HF_FINAL_NORM,
    layout.OUTPUT: HF_OUTPUT,
}
VOCAB_KEYS = (layout.EMBEDDING, layout.OUTPUT)


def hf_layer_key(layer: int, name: str) -> str:
    return f"model.layers.{layer}.{name}"


@dataclass(frozen=True)
class HFTensor:
    """One tensor of the HF checkpoint: its name and shape."""

    name: str
    shape: tuple[int, ...]


def hf_tensors(shape: ModelShape) -> list[HFTensor]:
    """Every tensor of the HF Llama model of `shape`, in transformers' own order."""
    h, f, d = shape.hidden, shape.ffn, shape.head_dim
    per_layer = {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (shape.heads * d, h),
        "self_attn.k_proj.weight": (shape.kv_groups * d, h),
        "self_attn.v_proj.weight": (shape.kv_groups * d, h),
        "self_attn.o_proj.weight": (h, shape.heads * d),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
    }
    tensors = [HFTensor(HF_EMBEDDING, (shape.vocab, h))]
    for layer in range(shape.layers):
        tensors += [HFTensor(hf_layer_key(layer, name), dims) for name, dims in per_layer.items()]
    tensors.append(HFTensor(HF_FINAL_NORM, (h,)))
    if not shape.tied_embeddings:
        tensors.append(HFTensor(HF_OUTPUT, (shape.vocab, h)))
    return tensors


def unpack_layer(key: str, tensor: torch.Tensor, shape: ModelShape) -> tuple[torch.Tensor, ...]:
    """One layer of megatron tensor `key` -> its HF tensors, in `LAYER_MAP[key]` order."""
    if key == layout.QKV:
        return layout.split_qkv(tensor, shape)
    if key == layout.FC1:
        return layout.split_fc1(tensor)
    return (tensor,)


def pack_layer(key: str, parts: list[torch.Tensor], shape: ModelShape) -> torch.Tensor:
    """Inverse of `unpack_layer`."""
    if key == layout.QKV:
        return layout.merge_qkv(*parts, shape)
    if key == layout.FC1:
        return torch.cat(parts, dim=0)
    return parts[0]


def megatron_to_hf(
    read_layer: Callable[[str, int], torch.Tensor],
    read_global: Callable[[str, int | None], torch.Tensor],
    shape: ModelShape,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, tensor) in `hf_tensors` order, reading one megatron layer at a time.

    `read_layer(key, layer)` returns one layer of a stacked tensor; `read_global(key, rows)`
    returns a global tensor (its first `rows` rows when `rows` is not None).
    """
    yield HF_EMBEDDING, read_global(layout.EMBEDDING, shape.vocab)
    for layer in range(shape.layers):
        for key, names in LAYER_MAP.items():
            parts = unpack_layer(key, read_layer(key, layer), shape)
            for name, part in zip(names, parts):
                yield hf_layer_key(layer, name), part
    yield HF_FINAL_NORM, read_global(layout.FINAL_NORM, None)
    if not shape.tied_embeddings:
        yield HF_OUTPUT, read_global(layout.OUTPUT, shape.vocab)


def hf_to_megatron_layer(
    key: str, layer: int, read: Callable[[str], torch.Tensor], shape: ModelShape
) -> torch.Tensor:
    """Layer `layer` of megatron tensor `key`, assembled from the HF tensors `read(name)` returns."""
    return pack_layer(key, [read(hf_layer_key(layer, name)) for name in LAYER_MAP[key]], shape)
