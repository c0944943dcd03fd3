"""Training checkpoints: what a resumed run needs to continue exactly, and the run directory.

A run directory holds `run.json` (the run's identity, written once), `iter_0000100/`... (torch_dist
checkpoints, each written under a temporary name and renamed when complete), `latest` (the name
of the newest checkpoint, replaced atomically after each save), `metrics.jsonl`,
`tensorboard/` and, at exit, `summary.json`.

A checkpoint holds, besides the model weights (`model`, same keys as `grow_cli.checkpoint`):
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

import json
import os
import random
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from grow_cli.checkpoint.locate import LATEST_FILE, checkpoint_name, latest_checkpoint
from grow_cli.checkpoint.locate import run_checkpoints as checkpoints
from grow_cli.checkpoint.metadata import CheckpointInfo, LineageStep, read_common, read_info
from grow_cli.data.info import read_data_info
from grow_cli.errors import GrowError
from grow_cli.runtime.device import device_policy
from grow_cli.training.config import TrainConfig

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
TRAIN_KEY = "train"
RNG_KEY = "rng_state"
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}
# What a run directory may hold besides run.json (a `grow slurm` script and its logs come first).
_RUN_ENTRY = re.compile(r"^(latest|metrics\.jsonl|summary\.json|tensorboard|iter_\d+|\..+|slurm-.*\.out|.*\.sbatch)$")


@dataclass(frozen=True)
class TrainState:
    """Where a run stands: the loop's counters (all ranks agree on them)."""

    iteration: int = 0
    consumed_samples: int = 0
    flops: float = 0.0  # model FLOPs executed so far (Megatron-LM convention)
    train_seconds: float = 0.0  # wall time spent in training steps so far


# ---- the run directory -------------------------------------------------------------------
def check_run_directory(config: TrainConfig) -> Path | None:
    """Validate `--out` for this run and return the checkpoint to resume from (None: start).

    Read-only (every rank may call it): refuses a directory that holds something else, another
    run, or this run with different settings; refuses to resume under --no-resume.
    """
    out = config.out
    if out.exists() and not out.is_dir():
        raise GrowError(f"--out {out} is a file; give a directory")
    if not out.exists():
        return None
    run_file = out / RUN_FILE
    if not run_file.is_file():
        foreign = sorted(entry.name for entry in out.iterdir() if not _RUN_ENTRY.match(entry.name))
        if foreign:
            raise GrowError(
                f"--out {out} holds other files ({', '.join(foreign[:3])}) and no grow run ({RUN_FILE}); pick a new directory"
            )
        return None
    try:
        recorded = json.loads(run_file.read_text())["identity"]
    except (ValueError, KeyError, TypeError):
        raise GrowError(f"{run_file} is not a grow run record; pick a new --out") from None
    mine = config.identity()
    if recorded.get("shape") != mine["shape"] or recorded.get("stage") != mine["stage"]:
        raise GrowError(
            f"--out {out} holds another run (stage {recorded.get('stage')}, shape "
            f"{_describe(recorded.get('shape'))}); this run is stage {mine['stage']}, {config.shape.describe()}: pick another --out"
        )
    changed = [key for key in mine if recorded.get(key) != mine[key]]
    if changed:
        key = changed[0]
        raise GrowError(
            f"--out {out} holds this run started with {key}={recorded.get(key)} (now {mine[key]}); "
            f"resume with the same settings or pick another --out"
        )
    resume = latest_checkpoint(out)
    if resume is not None and not config.resume:
        raise GrowError(
            f"--out {out} already holds checkpoints of this run (latest {resume.name}); "
            "drop --no-resume to continue it, or pick another --out"
        )
    return resume


def _describe(shape: dict | None) -> str:
    from grow_cli.shape import ModelShape

    try:
        return ModelShape.from_dict(shape).describe()
    except Exception:
        return "unknown"


def write_run_record(config: TrainConfig) -> None:
    """Rank 0: create the run directory, record the run (once; identical on resume) and drop
    the previous attempt's summary (a summary always describes the latest attempt)."""
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / SUMMARY_FILE).unlink(missing_ok=True)
    path = config.out / RUN_FILE
    if not path.exists():
        write_json_atomic(path, {"identity": config.identity(), "config": config.to_dict()})


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_latest(out: Path, name: str) -> None:
    tmp = out / f".{LATEST_FILE}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, out / LATEST_FILE)


def prune_checkpoints(out: Path, keep_last: int, protect: Path) -> list[Path]:
    """Delete all but the `keep_last` newest complete checkpoints; never `protect`."""
    found = [path for _, path in checkpoints(out)]
    doomed = [path for path in found[: max(0, len(found) - keep_last)] if path != protect]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ---- lineage -----------------------------------------------------------------------------
def initial_info(config: TrainConfig) -> CheckpointInfo:
    """The grow record of this run's checkpoints: its lineage ends with this pretrain step."""
    details = {
        "stage": config.stage or config.model.name,
        "plan": config.plan,
        "data": config.data,
        "train_iters": config.batch.train_iters,
        "global_batch": config.batch.global_batch,
        "tokens": config.batch.train_iters * config.tokens_per_iter,
        "lr": config.optimizer.lr,
        "min_lr": config.optimizer.min_lr,
        "seed": config.seed,
    }
    parent = read_info(config.init) if config.init else None
    step = LineageStep(
        op="pretrain",
        source=config.init,
        source_id=parent.checkpoint_id if parent else None,
        details=details,
    )
    lineage = (*(parent.lineage if parent else ()), step)
    tokenizer = read_data_info(config.data).tokenizer  # the model's tokenizer is its data's
    return CheckpointInfo(shape=config.shape, stage=config.stage or config.model.name, lineage=lineage, tokenizer=tokenizer)


# ---- save / load -------------------------------------------------------------------------
def _rng_states() -> dict:
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


def _set_rng_states(states: dict) -> None:
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
    extra = {
        "optimizer": engine.optimizer.sharded_state_dict(model_state, metadata=OPTIMIZER_METADATA),
        RNG_KEY: _rng_object(_rng_states()),
        TRAIN_KEY: {
            "state": asdict(state),
            "scheduler": engine.scheduler.state_dict(),
            "layout": _layout(),
            "identity": config.identity(),
        },
    }
    record = replace(
        info, iteration=state.iteration, consumed_samples=state.consumed_samples, checkpoint_id=checkpoint_id
    )
    path = config.out / checkpoint_name(state.iteration)
    save_model_checkpoint(path, engine.gpt, record, extra_state=extra, force=True, sharded_strategy=_save_strategy())
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
        _set_rng_states(loaded[RNG_KEY])
    return TrainState(**train["state"]), read_info(path)
