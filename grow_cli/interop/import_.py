"""Hugging Face Llama directory -> torch_dist checkpoint (`grow import`).

The checkpoint is written through `write_checkpoint`, which asks for each piece only when DCP's
writer reaches it; each piece is assembled from the few HF tensors it needs, copied out of the
memory-mapped safetensors files. Pieces are one layer of a stacked tensor, a final-norm vector,
or a block of embedding/output rows (at most `block_bytes`), so memory stays at a few hundred
MB whatever the model size.

Vocabulary: embedding and output rows are padded with zeros to `shape.padded_vocab(1)`, the
multiple of 128 megatron allocates at TP=1, so the result is laid out exactly like a checkpoint
grow itself writes; megatron adapts the padding on load at any TP. The padded rows are never
targets; zero rows give them zero logits (megatron's loss over the padded vocabulary counts
those columns in its softmax, as it does for any padded vocabulary).

The grow record gets the shape from config.json and a lineage step `import` naming the source;
a directory that `grow export` wrote carries its checkpoint's record (grow.json), whose lineage
the import continues.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from grow_cli.checkpoint import layout
from grow_cli.checkpoint.atomic import check_output
from grow_cli.checkpoint.checks import check_not_input
from grow_cli.checkpoint.metadata import CheckpointInfo, ImportDetails, LineageStep, common_state
from grow_cli.checkpoint.rundir import release_checkpoint
from grow_cli.checkpoint.tensors import Piece, tile, write_checkpoint
from grow_cli.data.tokenizer_record import CHECKPOINT_TOKENIZER_DIR
from grow_cli.dtypes import WEIGHT_DTYPES, short_name
from grow_cli.dtypes import torch_dtype as to_torch
from grow_cli.errors import GrowError
from grow_cli.interop.export import GROW_RECORD
from grow_cli.interop.hf_config import config_dtype, shape_from_llama_config
from grow_cli.interop.mapping import GLOBAL_MAP, HF_OUTPUT, VOCAB_KEYS, hf_tensors, hf_to_megatron_layer
from grow_cli.interop.safetensors_io import SafetensorsDir
from grow_cli.runtime.model import check_rope_scaling
from grow_cli.shape import ModelShape

DEFAULT_BLOCK_BYTES = 256 * 2**20
# Tensors some Llama checkpoints carry that hold no weights (old transformers saved RoPE buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class ImportResult:
    source: Path
    out: Path
    info: CheckpointInfo
    dtype: str
    source_dtype: str
    vocab_rows: int
    pieces: int
    bytes_written: int
    seconds: float
    tokenizer_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "source": str(self.source),
            "out": str(self.out),
            "shape": self.info.shape.to_dict(),
            "checkpoint_id": self.info.checkpoint_id,
            "dtype": self.dtype,
            "source_dtype": self.source_dtype,
            "vocab_rows": self.vocab_rows,
            "pieces": self.pieces,
            "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 3),
            "tokenizer": self.info.tokenizer.to_json() if self.info.tokenizer is not None else None,
            "tokenizer_files": self.tokenizer_files,
            "warnings": self.warnings,
        }


def read_config(source: Path) -> dict:
    if not source.is_dir():
        raise GrowError(f"{source} does not exist or is not a directory; pass a Hugging Face model directory")
    path = source / "config.json"
    if not path.is_file():
        raise GrowError(f"{source} has no config.json: not a Hugging Face model directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise GrowError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(config, dict):
        raise GrowError(f"{path} does not hold a JSON object")
    return config


def _check_weights(weights: SafetensorsDir, shape: ModelShape) -> None:
    """The files hold exactly the tensors config.json implies, with the implied shapes."""
    expected = {t.name: t.shape for t in hf_tensors(shape)}
    for name, dims in expected.items():
        if weights.shape(name) != dims:
            raise GrowError(
                f"{weights.path}: tensor {name} has shape {weights.shape(name)}, config.json implies {dims}"
            )
        weights.dtype(name)  # refuses non-float storage
    tied_copy = {HF_OUTPUT} if shape.tied_embeddings else set()
    unexpected = [
        n for n in weights.names() if n not in expected and n not in tied_copy and not n.endswith(_IGNORED_SUFFIXES)
    ]
    if unexpected:
        raise GrowError(
            f"{weights.path} holds {len(unexpected)} tensor(s) a plain Llama model does not have "
            f"(e.g. {unexpected[0]}); grow imports LlamaForCausalLM weights only"
        )


def _record(source: Path, shape: ModelShape, details: ImportDetails) -> CheckpointInfo:
    """A fresh record, or the exported checkpoint's record continued, with an `import` step."""
    record_path = source / GROW_RECORD
    if record_path.is_file():
        try:
            data = json.loads(record_path.read_text())
            previous = CheckpointInfo.from_dict({k: v for k, v in data.items() if k != "exported_from"})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise GrowError(f"{record_path} is not a grow record; delete it to import the weights alone") from None
        step = LineageStep(op="import", source=str(source), source_id=previous.checkpoint_id, details=details)
        return previous.derive(step, shape=shape)
    return CheckpointInfo(shape=shape, lineage=(LineageStep(op="import", source=str(source), details=details),))


def _source_tokenizer(source: Path, final: Path, shape: ModelShape) -> tuple[list[str], object, list[str]]:
    """(tokenizer file names in `source`, the record of its tokenizer.json as it will lie in the
    checkpoint's tokenizer/ folder or None, warnings). A tokenizer with more tokens than the
    model's vocabulary is refused: its ids would index past the embedding."""
    from grow_cli.data.tokenizer import HF_TOKENIZER_FILE, load_tokenizer
    from grow_cli.interop.tokenizer_files import HF_TOKENIZER_FILES

    names = [name for name in HF_TOKENIZER_FILES if (source / name).is_file()]
    if HF_TOKENIZER_FILE not in names:
        return names, None, [
            f"{source} has no {HF_TOKENIZER_FILE}: the checkpoint records no tokenizer, so eval and export "
            f"need --tokenizer, and data must be prepared with the model's tokenizer by hand"
        ]
    try:
        tokenizer = load_tokenizer(str(source))
    except GrowError as error:
        return names, None, [f"{source}'s tokenizer is not recorded: {error}"]
    if tokenizer.vocab_size > shape.vocab:
        raise GrowError(
            f"{source}/{HF_TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but config.json's vocab_size is "
            f"{shape.vocab}: the tokenizer does not belong to this model"
        )
    warnings = []
    if tokenizer.vocab_size < shape.vocab:
        warnings.append(
            f"the tokenizer has {tokenizer.vocab_size} tokens, the model {shape.vocab} rows: data prepared with "
            f"it will not match the model's vocabulary in grow pretrain"
        )
    copy = final.resolve() / CHECKPOINT_TOKENIZER_DIR / HF_TOKENIZER_FILE
    return names, replace(tokenizer.record, path=str(copy)), warnings


def import_llama(
    source: str | Path,
    out: str | Path,
    *,
    dtype: str | None = None,
    force: bool = False,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    on_plan: Callable[[int], None] = lambda total_bytes: None,
    on_piece: Callable[[Piece], None] = lambda piece: None,
) -> ImportResult:
    """Write grow checkpoint `out` from HF Llama directory `source`.

    `dtype` None keeps the source precision (bf16 or fp32; fp16 is widened to fp32, losslessly).
    Nothing is written when a check fails.
    """
    start = time.monotonic()
    source, out = Path(source), Path(out)
    check_not_input(out, source)
    config = read_config(source)
    shape = shape_from_llama_config(config, f"{source}/config.json")
    check_rope_scaling(shape.rope_scaling, f"{source}/config.json")
    if dtype is not None and dtype not in WEIGHT_DTYPES:
        raise GrowError(f"unknown import dtype {dtype!r}; choose one of {', '.join(WEIGHT_DTYPES)}")
    check_output(out, force, "checkpoint")
    with SafetensorsDir(source) as weights:
        _check_weights(weights, shape)
        stored = weights.dtype(GLOBAL_MAP[layout.EMBEDDING])
        source_dtype = short_name(stored) or config_dtype(config) or "fp32"
        target = dtype or ("fp32" if source_dtype == "fp16" else source_dtype)
        torch_dtype = to_torch(target)
        vocab_rows = shape.padded_vocab(1)
        # per layer and in row blocks of at most `block_bytes` (the vocabulary tensors, big layers)
        pieces = [p for spec in layout.tensor_specs(shape, vocab_rows) for p in tile(spec, torch_dtype, block_bytes)]
        on_plan(sum(p.nbytes for p in pieces))

        @functools.lru_cache(maxsize=1)  # the row blocks of one layer come one after another
        def layer_tensor(key: str, layer: int) -> torch.Tensor:
            return hf_to_megatron_layer(key, layer, lambda n: weights.read(n, torch_dtype), shape)

        def produce(piece: Piece) -> torch.Tensor:
            if piece.key in layout.LAYER_KEYS:
                start, rows = piece.offsets[1], piece.sizes[1]
                data = layer_tensor(piece.key, piece.offsets[0])[start : start + rows][None]
            elif piece.key in VOCAB_KEYS:
                data = torch.zeros(piece.sizes, dtype=torch_dtype)
                begin, end = piece.offsets[0], min(piece.offsets[0] + piece.sizes[0], shape.vocab)
                if end > begin:
                    data[: end - begin] = weights.read_rows(GLOBAL_MAP[piece.key], begin, end, torch_dtype)
            else:
                data = weights.read(GLOBAL_MAP[piece.key], torch_dtype)
            on_piece(piece)
            return data

        details = ImportDetails(format="hf-llama", source_dtype=source_dtype, architectures=config.get("architectures"))
        info = _record(source, shape, details)
        tokenizer_files, tokenizer, warnings = _source_tokenizer(source, out, shape)
        if info.tokenizer is None and tokenizer is not None:
            info = replace(info, tokenizer=tokenizer)  # a grow export keeps the record it carries
        with release_checkpoint(out, force=force, what="checkpoint") as tmp:
            write_checkpoint(
                tmp,
                pieces,
                produce,
                common=common_state(info, vocab_rows),
                objects=layout.extra_state_objects(shape),
            )
            if tokenizer_files:  # beside release/, at the path the record names
                folder = tmp.parent / CHECKPOINT_TOKENIZER_DIR
                folder.mkdir()
                for name in tokenizer_files:
                    shutil.copyfile(source / name, folder / name)
    return ImportResult(
        source=source,
        out=out,
        info=info,
        dtype=target,
        source_dtype=source_dtype,
        vocab_rows=vocab_rows,
        pieces=len(pieces),
        bytes_written=sum(p.nbytes for p in pieces),
        seconds=time.monotonic() - start,
        tokenizer_files=tokenizer_files,
        warnings=warnings,
    )
