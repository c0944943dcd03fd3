"""Save and load a megatron-core GPTModel as a torch_dist checkpoint, at any TP/PP.

These are collectives: every rank of the current world calls them with its own model piece.
megatron's `dist_checkpointing` writes global tensors, so what one layout saves another loads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from grow_cli.checkpoint.atomic import atomic_directory
from grow_cli.checkpoint.checks import check_architecture
from grow_cli.checkpoint.integrity import record_checksums
from grow_cli.checkpoint.metadata import CheckpointInfo, common_state, read_info
from grow_cli.checkpoint.space import check_room, disk_full_as_error
from grow_cli.checkpoint.tensors import validate_checkpoint


def save_model_checkpoint(
    path: str | Path,
    model,
    info: CheckpointInfo,
    *,
    extra_state: dict | None = None,
    force: bool = False,
    sharded_strategy=None,
) -> Path:
    """Write `model` (and any `extra_state`: optimizer, scheduler, RNG...) to `path` atomically.

    `extra_state` entries that are megatron ShardedBase objects become tensors of the checkpoint;
    plain values land in `common.pt` beside the grow record and Megatron-LM's args. `sharded_strategy` is a megatron
    save strategy (default: torch_dist), e.g. one that spreads the writes over DP replicas.
    """
    from megatron.core import dist_checkpointing, parallel_state

    layout = dict(
        tp=parallel_state.get_tensor_model_parallel_world_size(),
        pp=parallel_state.get_pipeline_model_parallel_world_size(),
    )
    state = {"model": model.sharded_state_dict(), **common_state(info, model.vocab_size, **layout)}
    state.update(extra_state or {})
    with atomic_directory(path, force=force, what="checkpoint") as tmp:
        check_room(tmp, _stored_bytes(state))
        with disk_full_as_error(tmp):
            dist_checkpointing.save(state, str(tmp), sharded_strategy=sharded_strategy)
        if _is_main():  # every rank's shards are complete once save returns
            record_checksums(tmp)
    return Path(path)


def _stored_bytes(state: dict) -> int:
    """Bytes of the tensors this rank writes: the main replica of each of its shards."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory, is_main_replica

    total = 0
    for value in nested_values(state):
        if isinstance(value, (ShardedTensor, ShardedTensorFactory)) and is_main_replica(value.replica_id):
            total += value.data.numel() * value.data.element_size()
    return total


def _is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def load_model_weights(model, path: str | Path, *, expect_shape=None, strict: bool = True) -> CheckpointInfo:
    """Load the weights at `path` into `model` (this rank's piece) and return the grow record.

    `expect_shape` (a ModelShape) guards against loading a checkpoint of another architecture
    with a one-line error instead of megatron's shape mismatch traceback; its vocabulary is the
    one a Megatron-LM checkpoint whose args do not tell it is read with (the caller resolved it
    from the same tokenizer, see `check_init_checkpoint`).
    """
    path = validate_checkpoint(path)
    info = read_info(path, tokenizer_vocab=expect_shape.vocab if expect_shape is not None else None)
    if expect_shape is not None:
        check_architecture(f"checkpoint {path}", info.shape, expect_shape)
    _load_weights(model, path, strict)
    return info


def _load_weights(model, path: Path, strict: bool = True) -> None:
    from megatron.core import dist_checkpointing

    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path))
    model.load_state_dict(loaded["model"], strict=strict)


def model_from_checkpoint(
    path: str | Path, layout, *, dtype: torch.dtype = torch.float32, attention: str = "sdpa",
    tokenizer_vocab: int | None = None,
):
    """Build this rank's GPTModel piece for the checkpoint's own shape and load its weights
    (`tokenizer_vocab`: the vocabulary of a Megatron-LM checkpoint whose args do not tell it)."""
    from grow_cli.runtime.model import build_gpt_model

    path = validate_checkpoint(path)
    info = read_info(path, tokenizer_vocab=tokenizer_vocab)
    model = build_gpt_model(info.shape, layout, dtype=dtype, attention=attention)
    _load_weights(model, path)
    return model, info
