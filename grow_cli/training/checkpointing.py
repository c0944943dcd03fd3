"""Training checkpoints: what a resumed run needs to continue exactly.

The run directory these live in (names, `latest`, pruning, the identity check) is defined in
`grow_cli.checkpoint.rundir`. A checkpoint holds, besides the model weights (`model`, same keys
as `grow_cli.checkpoint`):
- `optimizer`: megatron's optimizer state in the fully reshardable layout (per-parameter Adam
  moments and fp32 master weights, sharded like the parameter they belong to), so it loads at any
  TP/PP/DP. Adam creates its state lazily; it is created (zeros, step 0: what Adam would do
  itself) before a save that precedes the first update.
- `rng_state`: Python/NumPy/torch/CUDA and megatron's tensor-parallel RNG tracker, one object per
  (PP, TP) rank; restored when the layout is the same, reseeded otherwise.
- common state (`common.pt`): the grow record (`CheckpointInfo`: shape, iteration, consumed
  samples, plan stage, lineage) and `train` (`TrainState`, scheduler state, the layout and the
  run identity).

Resume takes the checkpoint with the highest iteration. A checkpoint directory exists only once
it is complete (atomic rename), so this is right even if a job died between the rename and the
update of `latest`.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from grow_cli.checkpoint.metadata import CheckpointInfo, LineageStep, PretrainDetails, read_common, read_info
from grow_cli.checkpoint.integrity import newest_sound
from grow_cli.checkpoint.rundir import checkpoint_name, prune_checkpoints, run_checkpoints, write_latest
from grow_cli.data.info import read_data_info
from grow_cli.errors import GrowError
from grow_cli.runtime.device import device_policy
from grow_cli.training.config import TrainConfig

TRAIN_KEY = "train"
RNG_KEY = "rng_state"
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


@dataclass(frozen=True)
class TrainState:
    """Where a run stands: the loop's counters (all ranks agree on them)."""

    iteration: int = 0
    consumed_samples: int = 0
    flops: float = 0.0  # model FLOPs executed so far (Megatron-LM convention)
    train_seconds: float = 0.0  # wall time spent in training steps so far


# ---- lineage -----------------------------------------------------------------------------
def pretrain_step(config: TrainConfig, parent: CheckpointInfo | None) -> LineageStep:
    """The lineage step of a `grow pretrain` run (from `parent`, its --init, or from scratch);
    its `data_consumed.samples` each save updates."""
    data = read_data_info(config.data)
    details = PretrainDetails(
        stage=config.stage or config.model.name,
        plan=config.plan,
        data=config.data,
        train_iters=config.batch.train_iters,
        global_batch=config.batch.global_batch,
        tokens=config.batch.train_iters * config.tokens_per_iter,
        lr=config.optimizer.lr,
        min_lr=config.optimizer.min_lr,
        seed=config.seed,
        data_consumed=config.window.consumed(config.data, data.fingerprint, config.shape.seq_len),
    )
    return LineageStep(op="pretrain", source=config.init, source_id=parent.checkpoint_id if parent else None, details=details)


def initial_info(config: TrainConfig, step: LineageStep | None = None) -> CheckpointInfo:
    """The grow record of this run's checkpoints: its lineage ends with this run's step
    (`step`, e.g. `grow distill`'s; by default the pretrain step)."""
    parent = read_info(config.init, tokenizer_vocab=config.shape.vocab) if config.init else None
    step = step or pretrain_step(config, parent)
    lineage = (*(parent.lineage if parent else ()), step)
    tokenizer = read_data_info(config.data).tokenizer  # the model's tokenizer is its data's
    return CheckpointInfo(shape=config.shape, stage=config.stage or config.model.name, lineage=lineage, tokenizer=tokenizer)


# ---- which checkpoint to resume from ----------------------------------------------------
def resume_point(run_dir: Path) -> tuple[Path, list[str]]:
    """Collective: the newest checkpoint of `run_dir` that is complete and verifies, and a note
    for each newer one passed over (rank 0 checks, every rank gets its answer)."""
    import torch

    decision: list = [None, [], None]
    if torch.distributed.get_rank() == 0:
        found = [path for _, path in run_checkpoints(run_dir)]
        chosen, skipped = newest_sound(found)
        decision = [str(chosen) if chosen else None, skipped, None]
        if chosen is None:
            decision[2] = (
                f"no checkpoint in {run_dir} is usable ({'; '.join(skipped)}); move them away to start the run over"
            )
    torch.distributed.broadcast_object_list(decision, src=0)
    if decision[2]:
        raise GrowError(decision[2])
    return Path(decision[0]), decision[1]


# ---- save / load -------------------------------------------------------------------------
def rng_states() -> dict:
    import numpy
    import torch
    from megatron.core import tensor_parallel

    states = {
        "random": random.getstate(),
        "numpy": numpy.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if device_policy().cuda:
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict) -> None:
    import numpy
    import torch
    from megatron.core import tensor_parallel

    random.setstate(states["random"])
    numpy.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and device_policy().cuda:
        torch.cuda.set_rng_state(states["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(states["tracker"])


def _rng_object(states: dict | None):
    """This rank's RNG states as a ShardedObject indexed by (PP rank, TP rank)."""
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(
        RNG_KEY,
        states,
        (parallel_state.get_pipeline_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_world_size()),
        (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()),
        replica_id=parallel_state.get_data_parallel_rank(),
    )


def ensure_optimizer_state(optimizer) -> None:
    """Create Adam's state where it does not exist yet (before the first successful update).

    Saving needs it, and so does loading (megatron builds the state dict to load into from the
    existing state). megatron's `init_state_fn` makes zero moments; torch's Adam also needs
    `step`. Zero moments at step 0 are exactly what Adam creates lazily, so training continues
    unchanged.
    """
    import torch

    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_optimizer = getattr(inner, "optimizer", None)
        if torch_optimizer is None:
            continue
        empty = [p for group in torch_optimizer.param_groups for p in group["params"] if not torch_optimizer.state[p]]
        if not empty:
            continue
        inner.init_state_fn(torch_optimizer, inner.config)
        if isinstance(torch_optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            for param in empty:
                torch_optimizer.state[param].setdefault("step", torch.tensor(0.0))


def _layout() -> dict:
    from megatron.core import parallel_state

    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
    }


def _save_strategy():
    """torch_dist, with the writing spread over data-parallel replicas (Megatron-LM's default)."""
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    strategy = get_default_save_sharded_strategy("torch_dist")
    if parallel_state.get_data_parallel_world_size() > 1:
        strategy = FullyParallelSaveStrategyWrapper(strategy, parallel_state.get_data_parallel_group(with_context_parallel=True))
    return strategy


def save_train_checkpoint(config: TrainConfig, engine, state: TrainState, info: CheckpointInfo) -> Path:
    """Collective: write `iter_N` atomically, point `latest` at it, prune old ones (rank 0)."""
    import torch

    from grow_cli.checkpoint.model_io import save_model_checkpoint

    ensure_optimizer_state(engine.optimizer)
    # Common state must be identical on every rank: take rank 0's id and clock.
    agreed = [uuid.uuid4().hex, state.train_seconds]
    torch.distributed.broadcast_object_list(agreed, src=0)
    checkpoint_id, train_seconds = agreed
    state = replace(state, train_seconds=train_seconds)
    model_state = engine.gpt.sharded_state_dict()
    rng = rng_states()
    extra = {
        "optimizer": engine.optimizer.sharded_state_dict(model_state, metadata=OPTIMIZER_METADATA),
        RNG_KEY: _rng_object(rng),
        TRAIN_KEY: {
            "state": asdict(state),
            "scheduler": engine.scheduler.state_dict(),
            "layout": _layout(),
            "identity": config.identity(),
        },
    }
    record = replace(
        info.with_samples_read(state.consumed_samples),
        iteration=state.iteration, consumed_samples=state.consumed_samples, checkpoint_id=checkpoint_id,
    )
    path = config.out / checkpoint_name(state.iteration)
    save_model_checkpoint(path, engine.gpt, record, extra_state=extra, force=True, sharded_strategy=_save_strategy())
    # The writer draws from Python's stream (megatron/DCP internals); a resumed run starts from
    # `rng`, so the uninterrupted one must continue from it too.
    set_rng_states(rng)
    if torch.distributed.get_rank() == 0:
        write_latest(config.out, path.name)
        prune_checkpoints(config.out, config.intervals.keep_last, protect=path)
    torch.distributed.barrier()
    return path


def load_train_checkpoint(path: Path, engine) -> tuple[TrainState, CheckpointInfo]:
    """Collective: restore model, optimizer, scheduler and (same layout) RNG from `path`."""
    from megatron.core import dist_checkpointing

    common = read_common(path)
    if TRAIN_KEY not in common:
        raise GrowError(f"{path} holds no training state (not written by grow pretrain); use it with --init instead")
    train = common[TRAIN_KEY]
    same_layout = {k: train["layout"][k] for k in ("tp", "pp")} == {k: v for k, v in _layout().items() if k != "dp"}
    ensure_optimizer_state(engine.optimizer)  # the loading state dict is built from the existing state
    model_state = engine.gpt.sharded_state_dict()
    request = {
        "model": model_state,
        "optimizer": engine.optimizer.sharded_state_dict(model_state, is_loading=True, metadata=OPTIMIZER_METADATA),
    }
    if same_layout:
        request[RNG_KEY] = _rng_object(None)
    loaded = dist_checkpointing.load(request, str(path))
    engine.gpt.load_state_dict(loaded["model"])
    engine.optimizer.load_state_dict(loaded["optimizer"])
    engine.scheduler.load_state_dict(train["scheduler"])
    if same_layout:
        set_rng_states(loaded[RNG_KEY])
    return TrainState(**train["state"]), read_info(path)
