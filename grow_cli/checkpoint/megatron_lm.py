"""What Megatron-LM's `pretrain_gpt.py` keeps in `common.pt`, both ways.

Megatron-LM (megatron/training/checkpointing.py at core_v0.16.1) saves, beside the model, the
training `args` Namespace, `iteration` and `checkpoint_version`, and loads a checkpoint only
through the tracker file (rundir.TRACKER_FILE). Its `--use-checkpoint-args` copies the
architecture from `args`, its `check_checkpoint_args` compares layers, hidden size, heads and
the vocabulary settings against the run's own, and a checkpoint without `iteration` is refused
unless `--finetune`. So:

- reading: a checkpoint without a grow record but with `args` gets its shape from `args`
  (`shape_from_args`), refusing by name every setting a grow shape cannot represent;
- writing: every grow checkpoint carries the same three entries (`megatron_common`), with the
  architecture fields and the padded vocabulary grow wrote, so Megatron-LM loads it unchanged;
- `pretrain_gpt_flags` prints the flags Megatron-LM needs for a checkpoint, including the ones
  `--use-checkpoint-args` never copies (`--norm-epsilon`, the vocabulary padding).
"""

from __future__ import annotations

import hashlib
import json
import math
from argparse import Namespace

from grow_cli.errors import GrowError
from grow_cli.shape import GPT2_VOCAB, VOCAB_PAD_MULTIPLE, VOCAB_PAD_TP, ModelShape, RopeScaling

ARGS_KEY = "args"
ITERATION_KEY = "iteration"
VERSION_KEY = "checkpoint_version"
CHECKPOINT_VERSION = 3.0  # what Megatron-LM's generate_state_dict writes (no QKV reordering on load)
FORMAT = "megatron-lm"  # ImportDetails.format of a checkpoint read through its args

# Megatron-LM's `--use-rope-scaling` is Llama 3.x scaling with these factors fixed
# (megatron/core/models/common/embeddings/rotary_pos_embedding.py).
MEGATRON_ROPE_SCALING = dict(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)

# args fields whose non-default value means an architecture grow has no tensors or maths for:
# (field, the value grow needs, what the user reads)
_UNSUPPORTED = (
    ("normalization", "RMSNorm", "normalization (grow models use RMSNorm)"),
    ("swiglu", True, "swiglu=False (grow models use a SwiGLU MLP)"),
    ("add_bias_linear", False, "add_bias_linear (linear biases; grow models have none)"),
    ("add_qkv_bias", False, "add_qkv_bias (QKV biases)"),
    ("position_embedding_type", "rope", "position_embedding_type (grow models use rotary embeddings)"),
    ("rotary_percent", 1.0, "rotary_percent < 1 (partial rotary)"),
    ("rotary_interleaved", False, "rotary_interleaved"),
    ("rotary_seq_len_interpolation_factor", None, "rotary_seq_len_interpolation_factor"),
    ("qk_layernorm", False, "qk_layernorm"),
    ("apply_layernorm_1p", False, "apply_layernorm_1p (zero-centred norm gains)"),
    ("squared_relu", False, "squared_relu"),
    ("num_experts", None, "num_experts (MoE)"),
    ("mtp_num_layers", None, "mtp_num_layers (multi-token prediction)"),
    ("multi_latent_attention", False, "multi_latent_attention"),
    ("window_size", None, "window_size (sliding-window attention)"),
    ("no_rope_freq", None, "no_rope_freq (layers without RoPE)"),
    ("is_hybrid_model", False, "is_hybrid_model (Mamba layers)"),
    ("heterogeneous_layers_config_path", None, "heterogeneous_layers_config_path"),
    ("heterogeneous_layers_config_encoded_json", None, "heterogeneous_layers_config_encoded_json"),
)


def args_digest(args: Namespace) -> str:
    """A stable fingerprint of a checkpoint's `args`, recorded in the lineage of what grow makes
    of it (the Namespace holds paths and objects: they are compared by their text)."""
    text = json.dumps(vars(args), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def vocab_from_args(args: Namespace) -> int | None:
    """The unpadded vocabulary Megatron-LM's tokenizer had, when `args` alone tells it."""
    kind = getattr(args, "tokenizer_type", None)
    if kind == "GPT2BPETokenizer":
        return GPT2_VOCAB
    if kind in ("NullTokenizer", "NullMultimodalTokenizer") and getattr(args, "vocab_size", None):
        return int(args.vocab_size) + 1  # Megatron-LM's null tokenizer adds an end-of-document id
    return None


def check_padding(args: Namespace, vocab: int, where: str) -> None:
    """A vocabulary that comes from outside the args (--vocab, --data's tokenizer) must be the one
    the checkpoint was padded from: Megatron-LM's `_vocab_size_with_padding` rounds it up to a
    multiple of `make_vocab_size_divisible_by` x TP, and `padded_vocab_size` is its embedding's
    rows. A wrong size would otherwise load (the rows fit) and score the wrong tokens."""
    rows = getattr(args, "padded_vocab_size", None)
    if rows is None:  # args of a Megatron-LM that did not record it: nothing to check against
        return
    divisor = int(getattr(args, "make_vocab_size_divisible_by", None) or VOCAB_PAD_MULTIPLE)
    tp = int(getattr(args, "tensor_model_parallel_size", None) or 1)
    multiple = divisor * tp
    padded = math.ceil(vocab / multiple) * multiple
    if vocab > rows or padded != rows:
        raise GrowError(
            f"{where}: vocabulary {vocab} does not fit the checkpoint's {rows} embedding rows (Megatron-LM pads "
            f"{vocab} to {padded}: make_vocab_size_divisible_by {divisor} x TP {tp}); "
            "pass --vocab N, the tokenizer's size before padding"
        )


def shape_from_args(
    args: Namespace, where: str, vocab: int | None = None, *, tokenizer_vocab: int | None = None
) -> ModelShape:
    """The grow shape of a Megatron-LM checkpoint from its `args`. The vocabulary: `vocab`
    (--vocab of expand/export/megatron-args) overrides the args; `tokenizer_vocab` (the size of
    the tokenizer the checkpoint is used with: --data's, or --vocab of eval/pretrain) stands in
    only where the tokenizer settings cannot tell, so a tokenizer that differs from a vocabulary
    the args do tell still meets the commands' tokenizer checks. Either is checked against the
    padded rows. One line naming the setting for anything grow cannot carry."""

    def get(name, default=None):
        return getattr(args, name, default)

    for name, wanted, label in _UNSUPPORTED:
        value = get(name, wanted)
        if name == "num_experts" and value in (None, 0):
            continue
        if value != wanted:
            raise GrowError(
                f"{where} is a Megatron-LM model grow cannot represent: {label} is {value!r}; "
                "grow reads Llama-style checkpoints (RMSNorm, SwiGLU, RoPE, no biases)"
            )
    for name in ("hidden_size", "num_layers", "num_attention_heads", "ffn_hidden_size", "seq_length"):
        if not get(name) and not (name == "seq_length" and get("max_position_embeddings")):
            raise GrowError(f"{where}: the Megatron-LM args have no {name}; the checkpoint is incomplete")
    heads = int(args.num_attention_heads)
    groups = int(get("num_query_groups") or heads) if get("group_query_attention", False) else heads
    told = vocab_from_args(args)
    given = vocab if vocab is not None else (tokenizer_vocab if told is None else None)
    if given is None and told is None:
        raise GrowError(
            f"{where}: the Megatron-LM args do not tell the vocabulary size (tokenizer_type "
            f"{get('tokenizer_type')!r}); pass --vocab N (the tokenizer's size, before padding)"
        )
    if given is not None:
        check_padding(args, int(given), where)
    vocab = given if given is not None else told
    scaling = None
    if get("use_rope_scaling", False):
        scaling = RopeScaling(factor=float(get("rope_scaling_factor", 8.0)), **MEGATRON_ROPE_SCALING)
    return ModelShape(
        hidden=int(args.hidden_size),
        ffn=int(args.ffn_hidden_size),
        layers=int(args.num_layers),
        heads=heads,
        kv_groups=groups,
        head_dim=int(get("kv_channels") or args.hidden_size // heads),
        vocab=int(vocab),
        seq_len=int(get("seq_length") or get("max_position_embeddings")),
        tied_embeddings=not get("untie_embeddings_and_output_weights", False),
        norm_eps=float(get("norm_epsilon", 1e-5)),
        rope_theta=float(get("rotary_base", 10000)),
        rope_scaling=scaling,
    )


def vocab_divisor(vocab: int, padded_rows: int, tp: int) -> int | None:
    """`--make-vocab-size-divisible-by` that makes Megatron-LM pad `vocab` to `padded_rows` at
    TP=`tp` (it pads to a multiple of divisor x TP): grow's own padding first, then Megatron-LM's
    default 128, then any power of two (a Megatron-LM checkpoint saved at another TP); None when
    none does."""
    grow_own = VOCAB_PAD_MULTIPLE * math.lcm(VOCAB_PAD_TP, tp) // tp
    for divisor in (grow_own, VOCAB_PAD_MULTIPLE, *(2**k for k in range(17, -1, -1))):
        multiple = divisor * tp
        if math.ceil(vocab / multiple) * multiple == padded_rows:
            return divisor
    return None


def _rope_scaling_factor(shape: ModelShape) -> float | None:
    scaling = shape.rope_scaling
    if scaling is None:
        return None
    fixed = {name: getattr(scaling, name) for name in MEGATRON_ROPE_SCALING}
    if fixed != MEGATRON_ROPE_SCALING:
        raise GrowError(
            f"this model's RoPE scaling ({scaling}) differs from Megatron-LM's --use-rope-scaling "
            f"(fixed {MEGATRON_ROPE_SCALING}); Megatron-LM cannot compute it"
        )
    return scaling.factor


def megatron_args(shape: ModelShape, padded_rows: int, *, tp: int = 1, pp: int = 1) -> Namespace:
    """The `args` a Megatron-LM run of `shape` would have saved: every field its
    `--use-checkpoint-args` copies and `check_checkpoint_args` compares."""
    factor = _rope_scaling_factor(shape)
    return Namespace(
        num_layers=shape.layers,
        hidden_size=shape.hidden,
        ffn_hidden_size=shape.ffn,
        num_attention_heads=shape.heads,
        group_query_attention=shape.kv_groups != shape.heads,
        num_query_groups=shape.kv_groups,
        kv_channels=shape.head_dim,
        seq_length=shape.seq_len,
        max_position_embeddings=shape.seq_len,
        position_embedding_type="rope",
        add_position_embedding=True,  # Megatron-LM's default; it compares this field on resume
        use_rotary_position_embeddings=False,
        rotary_base=shape.rope_theta,
        rotary_percent=1.0,
        rotary_interleaved=False,
        use_rope_scaling=factor is not None,
        rope_scaling_factor=factor if factor is not None else 8.0,
        normalization="RMSNorm",
        norm_epsilon=shape.norm_eps,
        apply_layernorm_1p=False,
        swiglu=True,
        squared_relu=False,
        add_bias_linear=False,
        add_qkv_bias=False,
        qk_layernorm=False,
        untie_embeddings_and_output_weights=not shape.tied_embeddings,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        apply_query_key_layer_scaling=False,
        num_experts=None,
        padded_vocab_size=padded_rows,
        make_vocab_size_divisible_by=vocab_divisor(shape.vocab, padded_rows, tp) or VOCAB_PAD_MULTIPLE,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        ckpt_format="torch_dist",
    )


def megatron_common(shape: ModelShape, padded_rows: int, iteration: int, *, tp: int = 1, pp: int = 1) -> dict:
    """The entries Megatron-LM's load_checkpoint and load_args_from_checkpoint read from `common.pt`."""
    return {
        ARGS_KEY: megatron_args(shape, padded_rows, tp=tp, pp=pp),
        ITERATION_KEY: iteration,
        VERSION_KEY: CHECKPOINT_VERSION,
    }


def pretrain_gpt_flags(shape: ModelShape, padded_rows: int, *, grown: bool, tp: int = 1) -> list[str]:
    """The `pretrain_gpt.py` flags that build exactly this model and load it: the architecture,
    the flags `--use-checkpoint-args` does not copy, and for a checkpoint without training state
    (grown, imported) the ones that start a new run from its weights."""
    factor = _rope_scaling_factor(shape)
    flags = [
        "--use-mcore-models",
        "--num-layers", str(shape.layers),
        "--hidden-size", str(shape.hidden),
        "--ffn-hidden-size", str(shape.ffn),
        "--num-attention-heads", str(shape.heads),
        "--kv-channels", str(shape.head_dim),
    ]
    if shape.kv_groups != shape.heads:
        flags += ["--group-query-attention", "--num-query-groups", str(shape.kv_groups)]
    flags += [
        "--seq-length", str(shape.seq_len),
        "--max-position-embeddings", str(shape.seq_len),
        "--position-embedding-type", "rope",
        "--rotary-base", _number(shape.rope_theta),
    ]
    if factor is not None:
        flags += ["--use-rope-scaling", "--rope-scaling-factor", _number(factor)]
    flags += [
        "--normalization", "RMSNorm",
        "--norm-epsilon", repr(shape.norm_eps),
        "--swiglu",
        "--disable-bias-linear",
    ]
    if not shape.tied_embeddings:
        flags.append("--untie-embeddings-and-output-weights")
    divisor = vocab_divisor(shape.vocab, padded_rows, tp)
    if divisor is None:
        raise GrowError(
            f"Megatron-LM cannot pad the vocabulary {shape.vocab} to this checkpoint's {padded_rows} rows at TP={tp} "
            "(it pads to a multiple of --make-vocab-size-divisible-by x TP); pick another TP"
        )
    flags += ["--make-vocab-size-divisible-by", str(divisor), "--ckpt-format", "torch_dist"]
    if grown:
        flags += ["--finetune", "--no-load-optim", "--no-load-rng"]
    return flags


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)

