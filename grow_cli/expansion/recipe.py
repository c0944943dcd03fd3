"""The expansion recipe: for every target tensor piece, which source tensors it reads and how.

One object serves `--dry-run` (what maps to what, with which operator, how many bytes move) and
the streaming engine (the list of target pieces and a `build(piece, fetch)` that computes one of
them from the source tensors it names). The maps are drawn once, from the seed, when the recipe is
made; building a piece depends on nothing but the recipe and the source values, so any split of
the pieces over processes gives the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from grow_cli.checkpoint.layout import (
    ATTN_NORM,
    EMBEDDING,
    FC1,
    FC2,
    FINAL_NORM,
    MLP_NORM,
    OUTPUT,
    PROJ,
    QKV,
    extra_state_objects,
    is_training_state,
    merge_qkv,
    split_fc1,
    split_qkv,
    tensor_specs,
)
from grow_cli.checkpoint.checks import check_model_tensors
from grow_cli.checkpoint.tensors import Piece, tile
from grow_cli.errors import GrowError
from grow_cli.expansion.depth import DEPTH_METHODS, DepthMap, depth_map
from grow_cli.expansion.gqa import HeadMaps, head_maps
from grow_cli.expansion.maps import IndexMap, generator_for, grow_map
from grow_cli.expansion.width import WIDTH_METHODS, Axis, ResidualRule, divide_axis, grow_tensor
from grow_cli.shape import ModelShape

# Embedding / LM-head pieces hold about this many bytes (rows of the vocabulary).
ROW_BLOCK_BYTES = 32 << 20
# Tensors whose rows are new output units: AKI takes new rows from the layer above.
_AKI_KEYS = (QKV, PROJ, FC1, FC2)
# Output projections that identity layers zero.
_ZEROED_KEYS = (PROJ, FC2)
_LAYER_EXTRA_STATE = re.compile(r"(decoder\.layers\..+\._extra_state)/shard_(\d+)_(\d+)")


@dataclass(frozen=True)
class ExpandOptions:
    """How to grow: width operator, depth operator, seed of the maps and noise, noise level."""

    width: str = "aki"
    depth: str = "stack"
    seed: int = 0
    noise: float = 0.0

    def __post_init__(self) -> None:
        if self.width not in WIDTH_METHODS:
            raise GrowError(f"unknown --width {self.width!r}: choose one of {', '.join(WIDTH_METHODS)}")
        if self.depth not in DEPTH_METHODS:
            raise GrowError(f"unknown --depth {self.depth!r}: choose one of {', '.join(DEPTH_METHODS)}")
        if self.noise < 0:
            raise GrowError(f"--noise must be >= 0, got {self.noise}")
        if self.noise and self.width == "aki":
            raise GrowError("--noise applies to --width fpi/iso; aki already breaks symmetry by borrowing the layer above")

    @property
    def exact(self) -> bool:
        """Whether the expanded model computes exactly the source's function."""
        return self.width == "iso" and self.depth == "identity"


@dataclass(frozen=True)
class GrowthMaps:
    hidden: IndexMap
    ffn: IndexMap
    heads: HeadMaps
    depth: DepthMap


def draw_maps(source: ModelShape, target: ModelShape, options: ExpandOptions) -> GrowthMaps:
    """All index maps of an expansion, each from its own seeded generator."""
    return GrowthMaps(
        hidden=grow_map(source.hidden, target.hidden, generator_for(options.seed, "hidden")),
        ffn=grow_map(source.ffn, target.ffn, generator_for(options.seed, "ffn")),
        heads=head_maps(source, target, generator_for(options.seed, "heads")),
        depth=depth_map(options.depth, source.layers, target.layers),
    )


@dataclass(frozen=True)
class SourceRead:
    """A source tensor the engine fetches: one layer of a stacked tensor, or a whole tensor."""

    key: str
    layer: int | None = None


@dataclass(frozen=True)
class TensorMapping:
    """One line of `--dry-run`: a target tensor, its source and the operator between them."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    source_shape: tuple[int, ...]
    operator: str


def _ranges(values: tuple[int, ...]) -> str:
    """0,1,2,3,2,3 -> '0-3,2-3'."""
    parts: list[list[int]] = []
    for v in values:
        if parts and v == parts[-1][1] + 1:
            parts[-1][1] = v
        else:
            parts.append([v, v])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


class ExpansionRecipe:
    """Source shape + target shape + options -> the maps, the target pieces and their recipes."""

    def __init__(
        self,
        source: ModelShape,
        target: ModelShape,
        options: ExpandOptions,
        *,
        vocab_rows: int,
        dtypes: dict[str, torch.dtype],
        source_objects: tuple[str, ...] = (),
    ):
        self.options = options
        self.source = source
        self.maps = draw_maps(source, target, options)
        self.rule = ResidualRule(options.width, self.maps.hidden)
        # iso scales the RMSNorm epsilon with the gains; the target model must be built with it
        self.target = target.with_(norm_eps=self.rule.norm_eps(source.norm_eps))
        self.vocab_rows = vocab_rows
        self.dtypes = dtypes
        self.source_objects = source_objects

    @classmethod
    def for_checkpoint(cls, reader, source: ModelShape, target: ModelShape, options: ExpandOptions) -> "ExpansionRecipe":
        """Plan against an opened CheckpointReader, after checking its tensors are `source`'s."""
        specs = check_model_tensors(reader, source, refuse_unknown=True)
        # a training checkpoint also holds optimizer/RNG state: not carried (fresh optimizer)
        vocab_rows = specs[0].shape[0]
        dtypes = {spec.key: reader.dtype(spec.key) for spec in specs}
        return cls(source, target, options, vocab_rows=vocab_rows, dtypes=dtypes, source_objects=tuple(key for key in reader.object_keys() if not is_training_state(key)))

    # ---- axes ---------------------------------------------------------------------------
    @cached_property
    def _qkv_rows(self) -> Axis:
        """Fused, group-interleaved QKV rows: each target row's source row, and which are new."""
        src, dst, d = self.source, self.target, self.source.head_dim
        positions = torch.arange((src.heads + 2 * src.kv_groups) * d).unsqueeze(1)
        q, k, v = (part.squeeze(1) for part in split_qkv(positions, src))
        query, groups = self.maps.heads.query.blocks(d), self.maps.heads.groups.blocks(d)
        index = merge_qkv(
            q[query.tensor].unsqueeze(1), k[groups.tensor].unsqueeze(1), v[groups.tensor].unsqueeze(1), dst
        ).squeeze(1)
        new = merge_qkv(query.new.unsqueeze(1), groups.new.unsqueeze(1), groups.new.unsqueeze(1), dst).squeeze(1)
        return Axis(index, None, new)

    @cached_property
    def _fc1_rows(self) -> Axis:
        gate, up = split_fc1(torch.arange(2 * self.source.ffn))
        ffn = self.maps.ffn
        return Axis(torch.cat([gate[ffn.tensor], up[ffn.tensor]]), None, torch.cat([ffn.new, ffn.new]))

    @cached_property
    def _axes(self) -> dict[str, tuple[Axis | None, Axis | None]]:
        """(rows, columns) of every target tensor (per layer for stacked ones)."""
        rule, maps = self.rule, self.maps
        tied = self.source.tied_embeddings
        return {
            EMBEDDING: (None, rule.writer()),
            OUTPUT: (None, rule.reader()),
            FINAL_NORM: (rule.norm(divide=tied and self.options.width != "iso"), None),
            ATTN_NORM: (rule.norm(), None),
            MLP_NORM: (rule.norm(), None),
            QKV: (self._qkv_rows, rule.reader()),
            PROJ: (rule.writer(), divide_axis(maps.heads.query.blocks(self.source.head_dim))),
            FC1: (self._fc1_rows, rule.reader()),
            FC2: (rule.writer(), divide_axis(maps.ffn)),
        }

    def _noisy(self, key: str) -> bool:
        """Reader columns of duplicated units (the LM head only when it is not the embedding)."""
        return bool(self.options.noise) and key in (QKV, PROJ, FC1, FC2, OUTPUT)

    # ---- layers ---------------------------------------------------------------------------
    def layer_source(self, layer: int) -> tuple[int, int | None, bool]:
        """(source layer, layer AKI borrows new units from or None, zeroed output projections)."""
        k = self.maps.depth.source[layer]
        upper = k + 1 if self.options.width == "aki" and k + 1 < self.source.layers else None
        return k, upper, self.maps.depth.zero_output[layer]

    # ---- pieces ---------------------------------------------------------------------------
    def _target_specs(self):
        return tensor_specs(self.target, self.vocab_rows)

    def pieces(self) -> list[Piece]:
        """Every target piece in write order: tensor by tensor, layer by layer, each matrix in
        row blocks of at most ROW_BLOCK_BYTES (the vocabulary matrices first, while the writer
        holds nothing else). The source cache then only holds one tensor's layers and every
        piece in flight is small, whatever the model size."""
        specs = sorted(self._target_specs(), key=lambda s: s.key not in (EMBEDDING, OUTPUT))
        return [piece for spec in specs for piece in tile(spec, self.dtypes[spec.key], ROW_BLOCK_BYTES)]

    def reads(self, piece: Piece) -> list[SourceRead]:
        """The source tensors `build(piece)` fetches."""
        if piece.key in (EMBEDDING, OUTPUT, FINAL_NORM):
            return [SourceRead(piece.key)]
        k, upper, zero = self.layer_source(piece.offsets[0])
        if zero and piece.key in _ZEROED_KEYS:
            return []
        reads = [SourceRead(piece.key, k)]
        if upper is not None and piece.key in _AKI_KEYS:
            reads.append(SourceRead(piece.key, upper))
        return reads

    def build(self, piece: Piece, fetch: Callable[[SourceRead], torch.Tensor]) -> torch.Tensor:
        """Compute one target piece from the source tensors `fetch` returns."""
        rows, cols = self._axes[piece.key]
        noise = self.options.noise if self._noisy(piece.key) else 0.0
        generator = generator_for(self.options.seed, "noise", piece.key, *piece.offsets) if noise else None
        reads = self.reads(piece)
        if not reads:
            return torch.zeros(piece.sizes, dtype=piece.dtype)
        source = fetch(reads[0])
        if piece.key in (EMBEDDING, OUTPUT):
            start, size = piece.offsets[0], piece.sizes[0]
            return grow_tensor(source[start : start + size], None, cols, noise=noise, generator=generator)
        if piece.key == FINAL_NORM:
            return grow_tensor(source, rows)
        upper = fetch(reads[1]) if len(reads) > 1 else None
        if source.dim() == 2:  # a row block of one layer's matrix
            start, size = piece.offsets[1], piece.sizes[1]
            rows = rows.between(start, start + size)
        return grow_tensor(source, rows, cols, upper=upper, noise=noise, generator=generator).unsqueeze(0)

    def assign(self, world: int) -> list[list[Piece]]:
        """Split the pieces over `world` ranks in contiguous runs of about equal bytes (contiguous,
        so each rank reads each source tensor once)."""
        pieces = self.pieces()
        total = sum(p.nbytes for p in pieces)
        shares: list[list[Piece]] = [[] for _ in range(world)]
        done = 0
        for piece in pieces:
            rank = min(world - 1, int(done * world // max(1, total)))
            shares[rank].append(piece)
            done += piece.nbytes
        return shares

    # ---- non-tensor entries ---------------------------------------------------------------
    def objects(self) -> dict[str, None]:
        """megatron's `_extra_state` ShardedObjects for the target (all None): the local spec's,
        plus every other module the source carried (e.g. Transformer Engine's), re-laid out for
        the target depth."""
        objects: dict[str, None] = dict(extra_state_objects(self.target))
        for key in self.source_objects:
            match = _LAYER_EXTRA_STATE.fullmatch(key)
            if match and int(match.group(3)) == self.source.layers:
                for layer in range(self.target.layers):
                    objects[f"{match.group(1)}/shard_{layer}_{self.target.layers}"] = None
            else:
                objects[key] = None
        return objects

    # ---- description ----------------------------------------------------------------------
    def mappings(self) -> list[TensorMapping]:
        """Source tensor -> target tensor, with shapes and the operator, for `--dry-run`."""
        method, src, dst = self.options.width, self.source, self.target
        rule_name = {"fpi": "FPI", "aki": "AKI", "iso": "iso"}[method]
        writer = "copy" if method != "iso" else "copy/sqrt(C)"
        reader = "copy/C" if method != "iso" else "copy/sqrt(C)"
        norm = "copy" if method != "iso" else f"copy*sqrt({src.hidden}/{dst.hidden}), eps*{src.hidden}/{dst.hidden}"
        hidden = f"hidden {src.hidden}->{dst.hidden}"
        heads = f"heads {src.heads}->{dst.heads}, kv {src.kv_groups}->{dst.kv_groups}"
        ffn = f"ffn {src.ffn}->{dst.ffn}"
        operators = {
            EMBEDDING: f"cols: {hidden} {writer}",
            OUTPUT: f"cols: {hidden} {reader}",
            FINAL_NORM: f"{hidden} {norm}" + (" /C (LM head tied)" if src.tied_embeddings and method != "iso" else ""),
            ATTN_NORM: f"{hidden} {norm}",
            MLP_NORM: f"{hidden} {norm}",
            QKV: f"rows: {heads} copy; cols: {hidden} {reader}",
            PROJ: f"rows: {hidden} {writer}; cols: {heads} copy/C",
            FC1: f"rows: {ffn} [gate;up] copy; cols: {hidden} {reader}",
            FC2: f"rows: {hidden} {writer}; cols: {ffn} copy/C",
        }
        depth = self.maps.depth
        layers = f"; layers {src.layers}->{dst.layers} {depth.method}: src {_ranges(depth.source)}"
        mappings = []
        for spec in self._target_specs():
            operator = f"{rule_name} " + operators[spec.key]
            if spec.stacked:
                operator += layers
                if spec.key in _ZEROED_KEYS and any(depth.zero_output):
                    operator += " (zero in new layers)"
                if method == "aki" and spec.key in _AKI_KEYS:
                    operator += "; new rows from layer l+1 (top layer FPI)"
            if self._noisy(spec.key):
                operator += f"; zero-sum noise {self.options.noise:g}"
            source_shape = next(s.shape for s in tensor_specs(src, self.vocab_rows) if s.key == spec.key)
            mappings.append(TensorMapping(spec.key, spec.shape, str(self.dtypes[spec.key]).removeprefix("torch."), source_shape, operator))
        return mappings

    def bytes_written(self) -> int:
        return sum(p.nbytes for p in self.pieces())
