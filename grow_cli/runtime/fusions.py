"""Which of megatron-core's fused kernels a GPTModel uses, and which ones this machine can run.

megatron-core 0.16 ships some fusions as plain PyTorch wrapped in `torch.compile` (its
`jit_fuser`): SwiGLU (`bias_activation_fusion`) and the vocab-parallel cross-entropy
(`cross_entropy_loss_fusion` with `cross_entropy_fusion_impl="native"`). Those run on any CUDA
machine. Others are Transformer Engine (or Apex) kernels and exist only where TE is installed:
TE's cross-entropy (`cross_entropy_fusion_impl="te"`), the fused rotary embedding
(`apply_rope_fusion`), and the weight-gradient GEMM that accumulates straight into the fp32
`main_grad` buffer (`gradient_accumulation_fusion`: TE's linear layers, or Apex's
`fused_weight_gradient_mlp_cuda` under megatron's local layers).

Not exposed, because grow's layers never reach them: `masked_softmax_fusion` (only megatron's
local `DotProductAttention`, the `--attention local` reference, calls it, and it needs Apex's
`scaled_masked_softmax_cuda`) and `persist_layer_norm` (Apex's persistent LayerNorm; grow's
models use RMSNorm, which is torch's norm in the local spec and TE's in the TE spec).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

CROSS_ENTROPY = ("plain", "native", "te")  # megatron's unfused CE, its fused CE, TE's fused CE


@dataclass(frozen=True)
class Extensions:
    """The optional CUDA libraries megatron's fused kernels come from."""

    te: bool = False  # transformer_engine importable
    apex_grad_accum: bool = False  # Apex's fused_weight_gradient_mlp_cuda extension

    @classmethod
    def detect(cls) -> Extensions:
        """What this Python environment has (imports TE: only where the model is built or checked)."""
        from grow_cli.runtime.model import have_transformer_engine

        return cls(te=have_transformer_engine(), apex_grad_accum=importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None)

    def grad_accum_fusion(self, attention: str) -> bool:
        """TE's layers fuse the accumulation themselves; megatron's local layers need Apex's kernel."""
        return self.te if attention == "te" else self.apex_grad_accum


@dataclass(frozen=True)
class Fusions:
    """The kernel choices of one model; all off is megatron's reference path (and the CPU's)."""

    swiglu: bool = False  # bias_activation_fusion: SwiGLU as one torch.compile'd kernel
    cross_entropy: str = "plain"  # one of CROSS_ENTROPY
    rope: bool = False  # apply_rope_fusion: TE's fused rotary embedding
    grad_accum: bool = False  # gradient_accumulation_fusion: wgrad GEMM adds into main_grad
    compile: bool = False  # torch.compile each transformer layer

    def config_fields(self) -> dict:
        """The TransformerConfig fields these choices set."""
        return {
            "bias_activation_fusion": self.swiglu,
            "cross_entropy_loss_fusion": self.cross_entropy != "plain",
            "cross_entropy_fusion_impl": "te" if self.cross_entropy == "te" else "native",
            "apply_rope_fusion": self.rope,
            "gradient_accumulation_fusion": self.grad_accum,
            "masked_softmax_fusion": False,
            "persist_layer_norm": False,
        }
