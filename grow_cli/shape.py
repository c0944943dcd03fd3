"""The one definition of a model shape.

Plan, pretrain, expand, eval and export all read a `ModelShape`: its fields are the Llama-style
architecture (RMSNorm, SwiGLU, rotary embeddings, no biases, GQA) and its methods give exact
parameter counts and the tensor-parallel feasibility rules Megatron enforces. Nothing here
imports torch, so the planner stays instant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from grow_cli.errors import GrowError
from grow_cli.units import format_count, parse_count, size_name

GPT2_VOCAB = 50257
DEFAULT_SEQ_LEN = 1024
# Megatron-LM pads the vocabulary to 128 x TP rows, so the padding (and, since padded logits take
# part in the softmax, the loss) changes with TP. grow pads to a multiple of 128 x 8 instead: the
# same rows at TP 1, 2, 4 and 8, so a checkpoint changes layout without changing its function.
VOCAB_PAD_MULTIPLE = 128
VOCAB_PAD_TP = 8
# The one definition of a parameter count, named wherever one is printed (plan, expand, eval,
# series tables and files): sizes are the model's function, so the TP padding (zero rows that
# change with the layout, `ModelShape.padded`) is not part of them.
PARAMS_DEFINITION = "counted on the tokenizer's vocabulary, without the TP padding rows"


@dataclass(frozen=True)
class ParamCounts:
    """Exact parameter counts; `embedding` includes the output layer when it is untied."""

    total: int
    nonembedding: int
    embedding: int


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.x ("llama3") RoPE frequency scaling, as config.json's `rope_scaling` states it.

    Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` keep their
    frequency, those longer than `original_max_position_embeddings / low_freq_factor` are slowed
    by `factor`, and the band between is interpolated. It is part of the shape because it is
    part of the function: a model trained with it computes different logits without it.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        if min(self.factor, self.low_freq_factor, self.original_max_position_embeddings) <= 0:
            raise GrowError(f"rope scaling {self} needs a positive factor, low_freq_factor and original length")
        if self.low_freq_factor >= self.high_freq_factor:
            raise GrowError(f"rope scaling {self} needs low_freq_factor < high_freq_factor")


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder: hidden size, FFN size, depth, heads, KV groups and head dim.

    `heads * head_dim` need not equal `hidden` (Megatron's `kv_channels`), but all shapes grow
    with `head_dim` fixed, so heads grow as whole heads.
    """

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_groups: int
    head_dim: int
    vocab: int = GPT2_VOCAB
    seq_len: int = DEFAULT_SEQ_LEN
    tied_embeddings: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None  # None: plain RoPE (records without the field read so)

    def __post_init__(self) -> None:
        for name in ("hidden", "ffn", "layers", "heads", "kv_groups", "head_dim", "vocab", "seq_len"):
            if getattr(self, name) <= 0:
                raise GrowError(f"shape field {name} must be positive, got {getattr(self, name)}")
        if self.heads % self.kv_groups:
            raise GrowError(
                f"{self.heads} heads cannot be split into {self.kv_groups} KV groups: "
                "heads must be a multiple of kv_groups"
            )

    # ---- counts -------------------------------------------------------------------------
    def layer_params(self) -> int:
        """One transformer layer: q, k, v, o projections, gate/up/down MLP, two RMSNorm gains."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_groups * self.head_dim
        attention = h * q + 2 * h * kv + q * h
        mlp = 3 * h * self.ffn
        return attention + mlp + 2 * h

    def param_counts(self) -> ParamCounts:
        """The model's parameters on the tokenizer's vocabulary (`PARAMS_DEFINITION`).

        What needs the built model's tensors (memory, the `6nd-total` FLOPs) counts
        `self.padded(tp).param_counts()` instead, so the padding is visible where it is used.
        """
        nonembedding = self.layers * self.layer_params() + self.hidden  # + final norm
        embedding = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return ParamCounts(total=nonembedding + embedding, nonembedding=nonembedding, embedding=embedding)

    def padded_vocab(self, tp: int = 1) -> int:
        """Embedding rows at tensor-parallel degree `tp`: TP-independent for TP dividing 8
        (50257 -> 51200), a multiple of 128 x lcm(8, tp) for other TPs."""
        multiple = VOCAB_PAD_MULTIPLE * math.lcm(VOCAB_PAD_TP, tp)
        return int(math.ceil(self.vocab / multiple) * multiple)

    def padded(self, tp: int = 1) -> ModelShape:
        """This shape with the embedding rows Megatron builds at TP=`tp` as its vocabulary: its
        counts are the built model's tensors (zero rows included), not the model's size."""
        return replace(self, vocab=self.padded_vocab(tp))

    # ---- parallel layout ----------------------------------------------------------------
    def layout_problems(self, tp: int = 1, pp: int = 1) -> list[str]:
        """Why this shape cannot run at TP=tp, PP=pp (empty when it can)."""
        problems = []
        if self.heads % tp:
            problems.append(f"{self.heads} heads are not divisible by TP={tp}")
        if self.kv_groups % tp and tp % self.kv_groups:
            problems.append(f"{self.kv_groups} KV groups and TP={tp} do not divide one another")
        if self.ffn % tp:
            problems.append(f"FFN {self.ffn} is not divisible by TP={tp}")
        if self.layers % pp:
            problems.append(f"{self.layers} layers are not divisible by PP={pp}")
        return problems

    def feasible_tp(self, limit: int = 64) -> list[int]:
        """All tensor-parallel degrees up to `limit` this shape supports."""
        return [t for t in range(1, limit + 1) if not self.layout_problems(tp=t)]

    def check_layout(self, tp: int = 1, pp: int = 1, name: str = "this shape") -> None:
        """Raise a GrowError explaining why the layout is infeasible and what would fit."""
        problems = self.layout_problems(tp, pp)
        if not problems:
            return
        tps = ", ".join(str(t) for t in self.feasible_tp(limit=max(8, tp)))
        message = f"{name} cannot run at TP={tp} PP={pp}: {'; '.join(problems)}. Feasible TP: {tps}"
        if any("TP" in p for p in problems):
            try:
                near = nearest_shape_for_tp(self, tp)
                message += f". A nearby shape that fits TP={tp}: {near.describe()}"
            except GrowError:  # no suggestion (e.g. below the auto-shaper's range); the problem stands
                pass
        raise GrowError(message)

    # ---- presentation -------------------------------------------------------------------
    def describe(self) -> str:
        kv = "" if self.kv_groups == self.heads else f"/{self.kv_groups}kv"
        n = self.param_counts().nonembedding
        return (
            f"h={self.hidden} ffn={self.ffn} L={self.layers} heads={self.heads}{kv} d={self.head_dim} "
            f"({format_count(n)} non-embedding)"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelShape":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise GrowError(f"unknown shape fields {sorted(unknown)}; expected {sorted(known)}")
        scaling = data.get("rope_scaling")
        if scaling is not None:
            data = {**data, "rope_scaling": RopeScaling(**scaling)}
        return cls(**data)

    def with_(self, **changes) -> "ModelShape":
        return replace(self, **changes)


# The reference series (spec §1): multi-head attention, head dim 128, GPT-2 vocabulary.
PRESETS: dict[str, ModelShape] = {
    "1B": ModelShape(hidden=2048, ffn=7168, layers=18, heads=16, kv_groups=16, head_dim=128),
    "2B": ModelShape(hidden=2560, ffn=8960, layers=22, heads=20, kv_groups=20, head_dim=128),
    "4B": ModelShape(hidden=3200, ffn=11200, layers=27, heads=25, kv_groups=25, head_dim=128),
    "8B": ModelShape(hidden=4096, ffn=14336, layers=33, heads=32, kv_groups=32, head_dim=128),
}

FFN_RATIO = 3.5  # the presets' FFN / hidden


def is_reference_series(names) -> bool:
    """Whether every size is a reference one (1B, 2B, 4B, 8B): its recipe is published and kept."""
    return all(name in PRESETS for name in names)

# Auto-shaped sizes from TP_FRIENDLY_FROM up get head counts (and FFN) divisible by TP_FRIENDLY,
# so one shape runs at TP 1, 2, 4 and 8: a cluster team picks TP from memory (a 70B needs TP 8
# with PP on 80 GB GPUs), and the shape must not decide it. 8 is one node's NVLink domain; a
# larger --tp is honoured through lcm(8, tp). Smaller models fit one GPU and keep fine steps.
TP_FRIENDLY = 8
TP_FRIENDLY_FROM = 1e9


def tp_multiple(n_nonembedding: float, tp: int = 1) -> int:
    """What an auto-shaped size's heads and FFN/64 are multiples of: TP, and 8 from 1B up."""
    return math.lcm(tp, TP_FRIENDLY) if n_nonembedding >= TP_FRIENDLY_FROM else tp


def _head_dim_for(hidden: float) -> int:
    """Head dim 128 at scale, smaller for tiny models so they still have several heads."""
    if hidden >= 1536:
        return 128
    if hidden >= 512:
        return 64
    if hidden >= 128:
        return 32
    return 16


def _aspect_for(n: float) -> float:
    """Hidden/layers ratio: ~114-124 for the presets (1B-8B), Llama-70B ~102, shallower below."""
    if n >= 1e9:
        return 114.0 + 10.0 * math.log2(n / 1e9) / 3.0  # 1B: 114, 8B: 124
    # tiny models: keep a few layers, aspect falls towards ~48 at 1M parameters
    return 48.0 + (114.0 - 48.0) * math.log10(max(n, 1e6) / 1e6) / 3.0


def auto_shape(
    n_nonembedding: float,
    *,
    tp: int = 1,
    kv_groups: int | None = None,
    vocab: int = GPT2_VOCAB,
    seq_len: int = DEFAULT_SEQ_LEN,
    tied_embeddings: bool = False,
    head_dim: int | None = None,
    pp: int = 1,
    floor: "ModelShape | None" = None,
) -> ModelShape:
    """Propose a Llama-style shape with about `n_nonembedding` non-embedding parameters.

    Follows the presets' proportions: FFN = 3.5 x hidden (rounded to a multiple of 64 x m),
    hidden a whole number of heads (a multiple of head_dim x m so heads divide by m, and by the
    KV groups), and the depth chosen to land closest to the requested size; m is
    `tp_multiple(n, tp)`, so from 1B up the shape runs at every TP dividing 8. `kv_groups=None`
    means multi-head. `head_dim=None` picks one by size; a series passes its own so every member
    grows by whole heads. Depth is a multiple of `pp` so the layers split evenly over pipeline
    stages. `floor` is the shape this one grows from: hidden, FFN, heads and depth never fall
    below it (coarse TP-friendly widths could otherwise trade a layer for a wider hidden).
    """
    if not 1e5 <= n_nonembedding <= 1e13:
        raise GrowError(f"size {format_count(n_nonembedding)} is outside the supported 100K-10T range")
    per_layer_coeff = 4 + 3 * FFN_RATIO  # params per layer / hidden^2 for MHA
    hidden_guess = (n_nonembedding * _aspect_for(n_nonembedding) / per_layer_coeff) ** (1 / 3)
    head_dim = _head_dim_for(hidden_guess) if head_dim is None else head_dim
    multiple = tp_multiple(n_nonembedding, tp)
    step = head_dim * math.lcm(multiple, kv_groups or 1)
    best: tuple[float, ModelShape] | None = None
    least = step if floor is None else max(step, math.ceil(floor.hidden / step) * step)
    for hidden in {max(least, int(round(hidden_guess / step)) * step + k * step) for k in (-1, 0, 1)}:
        heads = hidden // head_dim
        groups = heads if kv_groups is None else kv_groups
        if heads % groups or (groups % tp and tp % groups):
            continue
        ffn_step = 64 * multiple if hidden >= 256 else 16 * multiple
        ffn = max(ffn_step, int(round(FFN_RATIO * hidden / ffn_step)) * ffn_step)
        if floor is not None:
            ffn = max(ffn, math.ceil(floor.ffn / ffn_step) * ffn_step)
        probe = ModelShape(hidden, ffn, 1, heads, groups, head_dim, vocab, seq_len, tied_embeddings)
        layers = max(1, int(round((n_nonembedding - hidden) / probe.layer_params() / pp))) * pp
        if floor is not None:
            layers = max(layers, math.ceil(floor.layers / pp) * pp)
        shape = probe.with_(layers=layers)
        error = abs(math.log(shape.param_counts().nonembedding / n_nonembedding))
        aspect_error = abs(math.log(hidden / layers / _aspect_for(n_nonembedding)))
        score = error + 0.1 * aspect_error
        if best is None or score < best[0]:
            best = (score, shape)
    if best is None:
        raise GrowError(f"no shape with {kv_groups} KV groups fits TP={tp}; pick kv_groups divisible by TP")
    return best[1]


def nearest_shape_for_tp(shape: ModelShape, tp: int) -> ModelShape:
    """A shape with about the same non-embedding size whose heads/FFN divide by `tp`.

    Keeps the head dim and, for GQA, the KV group count nearest the original that TP accepts
    (a divisor or a multiple of TP), so the suggestion stays a grouped-attention model; falls
    back to multi-head attention when no group count fits.
    """
    common = dict(
        vocab=shape.vocab, seq_len=shape.seq_len, tied_embeddings=shape.tied_embeddings, head_dim=shape.head_dim
    )
    size = shape.param_counts().nonembedding
    if shape.kv_groups != shape.heads:
        fitting = {d for d in range(1, tp + 1) if tp % d == 0} | {tp * k for k in range(1, shape.heads // tp + 1)}
        for groups in sorted(fitting, key=lambda g: (abs(math.log(g / shape.kv_groups)), -g)):
            try:
                return auto_shape(size, tp=tp, kv_groups=groups, **common)
            except GrowError:
                continue
    return auto_shape(size, tp=tp, **common)


def resolve_shape(
    name: str,
    *,
    tp: int = 1,
    vocab: int = GPT2_VOCAB,
    seq_len: int = DEFAULT_SEQ_LEN,
    tied_embeddings: bool = False,
    use_presets: bool = True,
    head_dim: int | None = None,
    pp: int = 1,
    kv_groups: int | None = None,
    floor: ModelShape | None = None,
) -> tuple[str, float, ModelShape]:
    """Turn a size name into (canonical name, nominal size, shape): presets first, else auto.

    The nominal size is what the name says ("8B" -> 8e9); the reference FLOP accounting uses it.
    `use_presets=False` auto-shapes every size (to fit `tp`/`pp`); `head_dim` and `pp` only
    steer auto-shaped sizes. `kv_groups` regroups a preset's heads (a GrowError if they do not
    split) and shapes an auto-shaped size around them; None keeps multi-head attention.
    `floor` (an auto-shaped size's predecessor in a series) is passed to `auto_shape`.
    """
    nominal = parse_count(name, "model size")
    canonical = size_name(nominal)
    preset = PRESETS.get(canonical) if use_presets else None
    if preset is not None:
        groups = {} if kv_groups is None else {"kv_groups": kv_groups}
        shape = preset.with_(vocab=vocab, seq_len=seq_len, tied_embeddings=tied_embeddings, **groups)
    else:
        shape = auto_shape(
            nominal,
            tp=tp,
            kv_groups=kv_groups,
            vocab=vocab,
            seq_len=seq_len,
            tied_embeddings=tied_embeddings,
            head_dim=head_dim,
            pp=pp,
            floor=floor,
        )
    return canonical, nominal, shape
