"""Build megatron-core's GPTModel from a `ModelShape`.

The architecture is Llama's: RMSNorm, SwiGLU, rotary embeddings, no biases, GQA, untied
embeddings unless the shape says tied. `attention` picks the core attention: "sdpa" (default,
flash/cuDNN on GPU), "te" (Transformer Engine's layer spec, when installed) or "local"
(megatron's reference implementation, which materialises the [s, s] scores).

Llama 3.x RoPE scaling goes through megatron-core's own (`rope_scaling=True`), which takes the
factor but fixes the other three constants; `check_rope_scaling` reads those from megatron so a
shape asking for different ones is refused instead of built with the wrong frequencies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grow_cli.errors import GrowError
from grow_cli.layout import Layout
from grow_cli.runtime.device import device_policy
from grow_cli.runtime.fusions import Fusions
from grow_cli.shape import ModelShape, RopeScaling

ATTENTION_BACKENDS = ("sdpa", "te", "local")


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


def megatron_rope_constants() -> dict[str, float]:
    """The llama3 scaling constants megatron-core builds in (RotaryEmbedding._apply_scaling's
    defaults; GPTModel passes only the factor)."""
    import inspect

    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    parameters = inspect.signature(RotaryEmbedding._apply_scaling).parameters
    names = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return {name: parameters[name].default for name in names}


def check_rope_scaling(scaling: RopeScaling | None, where: str) -> None:
    """GrowError (one line) when megatron-core cannot build `scaling`'s frequencies."""
    if scaling is None:
        return
    fixed = megatron_rope_constants()
    wrong = [f"{name}={getattr(scaling, name)}" for name, value in fixed.items() if getattr(scaling, name) != value]
    if wrong:
        wanted = ", ".join(f"{name}={value}" for name, value in fixed.items())
        raise GrowError(
            f"{where} uses llama3 RoPE scaling with {', '.join(wrong)}; megatron-core builds it only with "
            f"{wanted} (as in Llama 3.1/3.2)"
        )


def _rope_scaling_args(scaling: RopeScaling | None) -> dict:
    """GPTModel's keyword arguments for `scaling` (none: megatron's plain RoPE)."""
    return {} if scaling is None else {"rope_scaling": True, "rope_scaling_factor": scaling.factor}


def transformer_config(
    shape: ModelShape,
    layout: Layout,
    *,
    dtype: torch.dtype = torch.float32,
    recompute: str | None = None,
    sequence_parallel: bool = False,
    fusions: Fusions | None = None,
):
    """The TransformerConfig of `shape` at `layout` with the `fusions` of the run.

    Without `fusions` (evaluation, expansion, export) the SwiGLU fusion follows the device
    policy, the one fusion those commands' forward passes gain from; `grow pretrain` passes
    what its options resolved to.
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    policy = device_policy()
    fusions = fusions or Fusions(swiglu=policy.fusions)
    return TransformerConfig(
        num_layers=shape.layers,
        hidden_size=shape.hidden,
        ffn_hidden_size=shape.ffn,
        num_attention_heads=shape.heads,
        num_query_groups=shape.kv_groups,
        kv_channels=shape.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=shape.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        sequence_parallel=sequence_parallel and layout.tp > 1,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        pipeline_dtype=dtype,
        use_cpu_initialization=policy.cpu_initialization,
        perform_initialization=True,
        init_method_std=0.02,
        **fusions.config_fields(),
        calculate_per_token_loss=True,
        recompute_granularity=recompute,
        recompute_modules=["core_attn"] if recompute == "selective" else None,
        # full: every layer's input is kept and the layer recomputed (Megatron-LM's usual setting)
        recompute_method="uniform" if recompute == "full" else None,
        recompute_num_layers=1 if recompute == "full" else None,
        deallocate_pipeline_outputs=True,
    )


def layer_spec(attention: str = "sdpa"):
    """megatron-core's transformer layer spec with the chosen core attention."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if attention not in ATTENTION_BACKENDS:
        raise GrowError(f"unknown attention backend {attention!r}; choose one of {ATTENTION_BACKENDS}")
    if attention == "te":
        if not have_transformer_engine():
            raise GrowError("--attention te needs Transformer Engine; install it or use --attention sdpa")
        return get_gpt_layer_with_transformer_engine_spec()
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if attention == "sdpa":
        from grow_cli.runtime.attention import SDPAAttention

        spec.submodules.self_attention.submodules.core_attention = SDPAAttention
    return spec


def build_gpt_model(
    shape: ModelShape,
    layout: Layout,
    *,
    dtype: torch.dtype = torch.float32,
    attention: str = "sdpa",
    recompute: str | None = None,
    sequence_parallel: bool = False,
    fusions: Fusions | None = None,
    pre_process: bool | None = None,
    post_process: bool | None = None,
):
    """Instantiate this rank's GPTModel piece (model parallel state must be initialised).

    With `fusions.compile` each transformer layer goes through `torch.compile` (layer by layer:
    every pipeline stage and recomputed layer compiles the same small graph once). Vocabulary is padded by `shape.padded_vocab(tp)` (128 x 8 rows, the same at TP 1/2/4/8), so
    checkpoints of a shape line up, and compute the same loss, whatever the TP;
    `pre_process`/`post_process` default to this rank's pipeline stage.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt.gpt_model import GPTModel

    shape.check_layout(layout.tp, layout.pp)
    check_rope_scaling(shape.rope_scaling, "the model shape")
    config = transformer_config(
        shape, layout, dtype=dtype, recompute=recompute, sequence_parallel=sequence_parallel, fusions=fusions
    )
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(attention),
        vocab_size=shape.padded_vocab(layout.tp),
        max_sequence_length=shape.seq_len,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=shape.tied_embeddings,
        position_embedding_type="rope",
        rotary_base=shape.rope_theta,  # float: imported models may use a non-integer base
        **_rope_scaling_args(shape.rope_scaling),
    )
    if fusions is not None and fusions.compile:
        for layer in model.decoder.layers:
            layer.compile()
    if device_policy().cuda:
        model.cuda(torch.cuda.current_device())
    return model
