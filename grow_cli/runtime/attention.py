"""Core attention on `torch.nn.functional.scaled_dot_product_attention`.

megatron's local `DotProductAttention` materialises [b, heads, s, s] scores; SDPA dispatches to
flash / cuDNN / memory-efficient kernels on GPU and never builds that matrix. It is a drop-in
`core_attention` submodule for megatron's local layer spec: q, k, v arrive as [s, b, heads, d]
(this rank's heads) and the output leaves as [s, b, heads * d].

Which SDPA kernel runs is torch's choice per call (flash for bf16/fp16 CUDA tensors with a head
dimension it supports, else cuDNN / memory-efficient / math); each layer records the one torch
picked on its first call (`backend`) so the training log can say it (`backends_used`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPAAttention(MegatronModule):
    """Causal self-attention through SDPA, with grouped-query attention handled natively."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAAttention does not implement context parallelism")
        self.attn_mask_type = attn_mask_type
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale
        self.backend: str | None = None  # SDPA's kernel on the first call: "flash", "math", ...

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPAAttention supports neither packed sequences nor attention bias")
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout = self.dropout if self.training else 0.0
        gqa = q.size(1) != k.size(1)
        if self.backend is None:
            self.backend = sdpa_backend(q, k, v, dropout, self.softmax_scale, gqa)
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=dropout, scale=self.softmax_scale, enable_gqa=gqa
        )
        s, b = query.size(0), query.size(1)
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)


def sdpa_backend(q, k, v, dropout: float = 0.0, scale: float | None = None, gqa: bool = False) -> str:
    """The kernel SDPA dispatches these causal inputs to under the current `sdpa_kernel` settings."""
    choice = torch._fused_sdp_choice(q, k, v, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa)
    return SDPBackend(choice).name.lower().removesuffix("_attention")


def backends_used(model: torch.nn.Module) -> tuple[str, ...]:
    """The SDPA kernels `model`'s attention layers ran on (empty before a forward, or without SDPA)."""
    return tuple(sorted({m.backend for m in model.modules() if isinstance(m, SDPAAttention) and m.backend}))
