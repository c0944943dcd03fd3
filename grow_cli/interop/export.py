"""torch_dist checkpoint -> Hugging Face Llama directory (`grow export`).

The checkpoint is read one layer at a time through `CheckpointReader` (partial DCP reads), each
layer's fused tensors are split into HF's q/k/v and gate/up, and the results stream into
safetensors shards planned up front. Peak memory is about one shard (`shard_size`) plus one
layer in the checkpoint's dtype and its converted copy (or the embedding, whichever is larger),
so an 8B model exports on a machine with far less RAM than the model.

The directory holds what `LlamaForCausalLM.from_pretrained`, vLLM and TRL expect: config.json,
generation_config.json, safetensors weights (+ index when sharded), the files of the tokenizer the
model was trained with (whatever its kind, see tokenizer_files.py), and
`grow.json`, the checkpoint's grow record (shape, lineage), which `grow import` reads back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grow_cli.checkpoint.atomic import atomic_directory, check_output
from grow_cli.checkpoint.checks import check_model_tensors, check_not_input
from grow_cli.checkpoint.metadata import CheckpointInfo, read_info
from grow_cli.checkpoint.tensors import CheckpointReader
from grow_cli.dtypes import WEIGHT_DTYPES
from grow_cli.dtypes import torch_dtype as to_torch
from grow_cli.errors import GrowError
from grow_cli.interop.hf_config import SpecialTokens, generation_config, llama_config
from grow_cli.interop.mapping import hf_tensors, megatron_to_hf
from grow_cli.interop.safetensors_io import plan_shards, write_shards
from grow_cli.shape import ModelShape

GROW_RECORD = "grow.json"
AUTO_TOKENIZER = "auto"  # the tokenizer the checkpoint was trained with
DEFAULT_SHARD_SIZE = 5 * 10**9


@dataclass(frozen=True)
class ExportResult:
    checkpoint: Path
    out: Path
    shape: ModelShape
    dtype: str
    files: list[str]
    tensors: int
    bytes_written: int
    bytes_read: int
    shards: int
    tokenizer: str | None
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint),
            "out": str(self.out),
            "shape": self.shape.to_dict(),
            "dtype": self.dtype,
            "files": self.files,
            "tensors": self.tensors,
            "bytes_written": self.bytes_written,
            "bytes_read": self.bytes_read,
            "shards": self.shards,
            "tokenizer": self.tokenizer,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }


def _load_tokenizer(name: str | None, checkpoint: Path, info: CheckpointInfo):
    """The tokenizer whose files go into the export: the checkpoint's own for `auto` (the one its
    grow record names), `name` otherwise; None for name None. It must fit the model's vocabulary."""
    if name is None:
        return None
    from grow_cli.checkpoint.rundir import resolve_checkpoint
    from grow_cli.data.tokenizer import load_tokenizer, model_tokenizer

    shape = info.shape
    if name == AUTO_TOKENIZER:
        tokenizer = model_tokenizer(resolve_checkpoint(checkpoint), info.tokenizer)
    else:
        tokenizer = load_tokenizer(name)
    if tokenizer.vocab_size != shape.vocab:
        raise GrowError(
            f"the checkpoint's vocabulary ({shape.vocab} tokens) does not match the {tokenizer.name} tokenizer "
            f"({tokenizer.vocab_size} tokens); pass --tokenizer none to export the weights without tokenizer files"
        )
    return tokenizer


def _compatibility_warnings(shape: ModelShape) -> list[str]:
    if shape.hidden % shape.heads:
        return [
            f"hidden size {shape.hidden} is not a multiple of {shape.heads} heads: transformers 5.x refuses "
            "such a LlamaConfig (transformers 4.x and vLLM load it, using head_dim)"
        ]
    return []


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    dtype: str = "bf16",
    shard_size: int = DEFAULT_SHARD_SIZE,
    tokenizer: str | None = "auto",
    force: bool = False,
    vocab: int | None = None,
    on_tensor: Callable[[str, int], None] = lambda name, nbytes: None,
    on_plan: Callable[[int], None] = lambda total_bytes: None,
) -> ExportResult:
    """Write the HF Llama directory `out` for grow checkpoint `checkpoint` (or a Megatron-LM one:
    `vocab` when its args do not tell the vocabulary).

    `on_plan(total_bytes)` is called once the shards are planned, `on_tensor(name, nbytes)` after
    each tensor is converted (for progress bars). Nothing is written when a check fails.
    """
    start = time.monotonic()
    if dtype not in WEIGHT_DTYPES:
        raise GrowError(f"unknown export dtype {dtype!r}; choose one of {', '.join(WEIGHT_DTYPES)}")
    checkpoint, out = Path(checkpoint), Path(out)
    check_not_input(out, checkpoint)
    reader = CheckpointReader(checkpoint)
    info: CheckpointInfo = read_info(checkpoint, vocab=vocab)
    shape = info.shape
    check_model_tensors(reader, shape, refuse_unknown=False)
    tok = _load_tokenizer(tokenizer, checkpoint, info)
    check_output(out, force, "export directory")

    torch_dtype = to_torch(dtype)
    itemsize = torch_dtype.itemsize
    tensors = hf_tensors(shape)
    shards = plan_shards([(t.name, itemsize * math.prod(t.shape)) for t in tensors], shard_size)
    on_plan(sum(s.nbytes for s in shards))

    def convert(part: torch.Tensor) -> torch.Tensor:
        # a fresh contiguous tensor: safetensors refuses views that share storage (q/k/v of one qkv)
        return part.to(dtype=torch_dtype, memory_format=torch.contiguous_format, copy=True)

    def read_global(key: str, rows: int | None) -> torch.Tensor:
        return reader.read(key) if rows is None else reader.read_rows(key, 0, rows)

    stream = ((name, convert(t)) for name, t in megatron_to_hf(reader.read_layer, read_global, shape))
    eos = tok.eos_id if tok is not None else None
    tokens = SpecialTokens(bos=eos, eos=eos)
    with atomic_directory(out, force=force, what="export directory") as tmp:
        write_shards(tmp, shards, stream, on_tensor)
        (tmp / "config.json").write_text(json.dumps(llama_config(shape, dtype, tokens), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(tokens), indent=2) + "\n")
        if tok is not None:
            from grow_cli.interop.tokenizer_files import write_tokenizer_files

            write_tokenizer_files(tok, tmp, max_length=shape.seq_len)
        record = {"exported_from": str(checkpoint), **info.to_dict()}
        (tmp / GROW_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        files = sorted(p.name for p in tmp.iterdir())
    return ExportResult(
        checkpoint=checkpoint,
        out=out,
        shape=shape,
        dtype=dtype,
        files=files,
        tensors=len(tensors),
        bytes_written=sum(s.nbytes for s in shards),
        bytes_read=reader.bytes_read,
        shards=len(shards),
        tokenizer=tok.name if tok is not None else None,
        seconds=time.monotonic() - start,
        warnings=_compatibility_warnings(shape),
    )
