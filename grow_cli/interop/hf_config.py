"""`ModelShape` <-> Hugging Face `LlamaConfig` (config.json), both directions, no torch needed.

grow's architecture is Llama's (RMSNorm, SwiGLU, RoPE, no biases, GQA), so a shape maps onto
LlamaConfig field by field. Two facts decide the details:

* megatron's rotary embedding (non-interleaved, base = `shape.rope_theta`, all of each head) is
  transformers' default RoPE (`rotate_half`); scaled variants (llama3, yarn, linear, dynamic) have
  no megatron-core counterpart here, so importing one is refused instead of silently changing the
  model's positions.
* the vocabulary in config.json is the tokenizer's (`shape.vocab`), not megatron's TP-padded one.

config.json carries RoPE both the transformers 4.x way (`rope_theta`) and the 5.x way
(`rope_parameters`), and the dtype as `torch_dtype` and `dtype`, so either generation and vLLM read
it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grow_cli.dtypes import LONG_NAMES, from_long_name
from grow_cli.errors import GrowError
from grow_cli.shape import ModelShape

ARCHITECTURE = "LlamaForCausalLM"
MODEL_TYPE = "llama"
# LlamaConfig's defaults, used when an imported config.json leaves a field out.
_HF_DEFAULT_EPS = 1e-6
_HF_DEFAULT_THETA = 10000.0


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the config and generation config name (None when no tokenizer is attached)."""

    bos: int | None = None
    eos: int | None = None
    pad: int | None = None


def llama_config(shape: ModelShape, dtype: str, tokens: SpecialTokens) -> dict[str, Any]:
    """The config.json of `shape` stored in `dtype` ("bf16" / "fp32")."""
    dtype_name = LONG_NAMES[dtype]
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": shape.vocab,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.ffn,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_groups,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.seq_len,
        "rms_norm_eps": shape.norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "tie_word_embeddings": shape.tied_embeddings,
        "bos_token_id": tokens.bos,
        "eos_token_id": tokens.eos,
        "pad_token_id": tokens.pad,
        "use_cache": True,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }


def generation_config(tokens: SpecialTokens) -> dict[str, Any]:
    """generation_config.json: which ids start, end and pad a generation."""
    return {"bos_token_id": tokens.bos, "eos_token_id": tokens.eos, "pad_token_id": tokens.pad}


def _require(config: dict, key: str, where: str):
    if config.get(key) is None:
        raise GrowError(f"{where} has no {key!r}: not a complete Llama config.json")
    return config[key]


def _rope(config: dict, where: str) -> float:
    """rope theta of a plain-RoPE config; GrowError for scaled or partial rotary embeddings."""
    parameters = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(parameters, dict):
        raise GrowError(f"{where} has an unreadable rope_parameters/rope_scaling entry: {parameters!r}")
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    if kind != "default":
        raise GrowError(
            f"{where} uses {kind!r} RoPE scaling, which grow's megatron models do not implement "
            "(plain RoPE only); import a model without rope scaling"
        )
    partial = parameters.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise GrowError(f"{where} rotates only part of each head (partial_rotary_factor={partial}); grow needs full RoPE")
    theta = parameters.get("rope_theta", config.get("rope_theta", _HF_DEFAULT_THETA))
    return float(theta)


def shape_from_llama_config(config: dict, where: str) -> ModelShape:
    """The ModelShape of a Llama config.json; a one-line GrowError for anything grow cannot build."""
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE or (architectures and ARCHITECTURE not in architectures):
        found = ", ".join(architectures) or f"model_type {model_type!r}"
        raise GrowError(
            f"{where} describes a {found} model; grow imports Llama models only "
            f"(architectures [{ARCHITECTURE}], model_type {MODEL_TYPE!r})"
        )
    if config.get("hidden_act", "silu") != "silu":
        raise GrowError(f"{where} uses activation {config['hidden_act']!r}; grow's SwiGLU needs 'silu'")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise GrowError(f"{where} sets {flag}=true; grow's models have no biases")
    hidden = _require(config, "hidden_size", where)
    heads = _require(config, "num_attention_heads", where)
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    if heads % kv:
        raise GrowError(f"{where}: {heads} attention heads are not a multiple of {kv} key/value heads")
    return ModelShape(
        hidden=hidden,
        ffn=_require(config, "intermediate_size", where),
        layers=_require(config, "num_hidden_layers", where),
        heads=heads,
        kv_groups=kv,
        head_dim=head_dim,
        vocab=_require(config, "vocab_size", where),
        seq_len=_require(config, "max_position_embeddings", where),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        norm_eps=float(config.get("rms_norm_eps", _HF_DEFAULT_EPS)),
        rope_theta=_rope(config, where),
    )


def config_dtype(config: dict) -> str | None:
    """The dtype config.json declares, as grow's short name ("bf16", "fp32", "fp16"), if any."""
    return from_long_name(config.get("dtype") or config.get("torch_dtype"))
