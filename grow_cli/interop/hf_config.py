"""`ModelShape` <-> Hugging Face `LlamaConfig` (config.json), both directions, no torch needed.

grow's architecture is Llama's (RMSNorm, SwiGLU, RoPE, no biases, GQA), so a shape maps onto
LlamaConfig field by field. Two facts decide the details:

* megatron's rotary embedding (non-interleaved, base = `shape.rope_theta`, all of each head) is
  transformers' default RoPE (`rotate_half`), and with `rope_scaling=True` its "llama3" scaling
  (Llama 3.1/3.2, `shape.rope_scaling`). Other scalings (yarn, linear, dynamic, longrope) are
  refused instead of silently changing the model's positions.
* the vocabulary in config.json is the tokenizer's (`shape.vocab`), not megatron's TP-padded one.

Other families are refused by the field grow lacks (biases, sliding windows, qk-norm), so the
message says what stands in the way, not just that the architecture name differs.

config.json carries RoPE both the transformers 4.x way (`rope_theta`) and the 5.x way
(`rope_parameters`), and the dtype as `torch_dtype` and `dtype`, so either generation and vLLM read
it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from grow_cli.dtypes import LONG_NAMES, from_long_name
from grow_cli.errors import GrowError
from grow_cli.shape import ModelShape, RopeScaling

ARCHITECTURE = "LlamaForCausalLM"
MODEL_TYPE = "llama"
# LlamaConfig's defaults, used when an imported config.json leaves a field out.
_HF_DEFAULT_EPS = 1e-6
_HF_DEFAULT_THETA = 10000.0
LLAMA3_ROPE = "llama3"
# Features of other families that grow's Llama layers lack, for a refusal that names them.
_FAMILY_FEATURES = {
    "qwen2": "biases on its q/k/v projections",
    "qwen3": "qk-norm (RMSNorm on queries and keys)",
    "olmo2": "qk-norm (RMSNorm on queries and keys)",
}
# config.json flags that switch on qk-norm in Llama-like configs (Llama 4 text, OLMo, Cohere).
_QK_NORM_FLAGS = ("use_qk_norm", "qk_layernorm", "qk_norm")


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the config and generation config name (None when no tokenizer is attached)."""

    bos: int | None = None
    eos: int | None = None
    pad: int | None = None


def _rope_scaling_entry(scaling: RopeScaling | None) -> dict[str, Any] | None:
    """config.json's `rope_scaling` of `scaling` (None for plain RoPE)."""
    return None if scaling is None else {"rope_type": LLAMA3_ROPE, **asdict(scaling)}


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
        "rope_scaling": _rope_scaling_entry(shape.rope_scaling),
        "rope_parameters": {"rope_type": "default", **(_rope_scaling_entry(shape.rope_scaling) or {}),
                            "rope_theta": shape.rope_theta},
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


def _rope(config: dict, where: str) -> tuple[float, RopeScaling | None]:
    """(rope theta, llama3 scaling or None); GrowError for other scalings or partial rotary embeddings.

    transformers 5.x writes `rope_parameters` (theta inside), 4.x `rope_scaling` beside `rope_theta`.
    """
    parameters = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(parameters, dict):
        raise GrowError(f"{where} has an unreadable rope_parameters/rope_scaling entry: {parameters!r}")
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    if kind not in ("default", LLAMA3_ROPE):
        raise GrowError(
            f"{where} uses {kind!r} RoPE scaling, which grow's megatron models do not implement "
            f"(plain and {LLAMA3_ROPE!r} RoPE only); import a model without it"
        )
    partial = parameters.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise GrowError(f"{where} rotates only part of each head (partial_rotary_factor={partial}); grow needs full RoPE")
    theta = float(parameters.get("rope_theta", config.get("rope_theta", _HF_DEFAULT_THETA)))
    if kind == "default":
        return theta, None
    names = [f.name for f in fields(RopeScaling)]
    missing = [name for name in names if parameters.get(name) is None]
    if missing:
        raise GrowError(f"{where} uses {LLAMA3_ROPE!r} RoPE scaling without {', '.join(missing)}: not a complete Llama 3 config.json")
    return theta, RopeScaling(
        factor=float(parameters["factor"]),
        low_freq_factor=float(parameters["low_freq_factor"]),
        high_freq_factor=float(parameters["high_freq_factor"]),
        original_max_position_embeddings=int(parameters["original_max_position_embeddings"]),
    )


def _check_family(config: dict, where: str) -> None:
    """Refuse, by the field grow lacks, what is not a plain Llama decoder."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    found = ", ".join(architectures) or f"model_type {model_type!r}"
    if model_type in _FAMILY_FEATURES:
        raise GrowError(
            f"{where} describes a {found} model, which has {_FAMILY_FEATURES[model_type]}; "
            f"grow's models do not (it imports {ARCHITECTURE} only)"
        )
    if config.get("hidden_act", "silu") != "silu":
        raise GrowError(f"{where} uses activation {config['hidden_act']!r}; grow's SwiGLU needs 'silu'")
    for flag in ("attention_bias", "mlp_bias", *_QK_NORM_FLAGS):
        if config.get(flag):
            what = "qk-norm" if flag in _QK_NORM_FLAGS else "biases"
            raise GrowError(f"{where} sets {flag}=true; grow's models have no {what}")
    if config.get("sliding_window") is not None and config.get("use_sliding_window", True):
        raise GrowError(
            f"{where} sets sliding_window={config['sliding_window']} (sliding-window attention, as in {found}); "
            "grow's attention is full causal attention"
        )
    if model_type != MODEL_TYPE or (architectures and ARCHITECTURE not in architectures):
        raise GrowError(
            f"{where} describes a {found} model; grow imports Llama models only "
            f"(architectures [{ARCHITECTURE}], model_type {MODEL_TYPE!r})"
        )


def shape_from_llama_config(config: dict, where: str) -> ModelShape:
    """The ModelShape of a Llama config.json; a one-line GrowError for anything grow cannot build."""
    _check_family(config, where)
    theta, scaling = _rope(config, where)
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
        rope_theta=theta,
        rope_scaling=scaling,
    )


def config_dtype(config: dict) -> str | None:
    """The dtype config.json declares, as grow's short name ("bf16", "fp32", "fp16"), if any."""
    return from_long_name(config.get("dtype") or config.get("torch_dtype"))
