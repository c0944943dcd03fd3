"""What grow records about a checkpoint, stored in torch_dist's `common.pt` under "grow".

megatron merges `common.pt` into what `dist_checkpointing.load` returns, so the record travels
with the checkpoint and needs no side file. It holds the shape (the only way expand/eval/export
learn the architecture), the training position, the plan stage and the lineage: the chain of
operations (train, expand, import) with the identity of each input, so a grown model can always
be traced back.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grow_cli.data.tokenizer_record import TokenizerRecord
from grow_cli.errors import GrowError
from grow_cli.shape import ModelShape

COMMON_KEY = "grow"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LineageStep:
    """One operation that produced a checkpoint from another (or from nothing)."""

    op: str  # "pretrain", "expand", "import"
    source: str | None = None  # input path as given
    source_id: str | None = None  # the input checkpoint's `checkpoint_id`
    details: dict = field(default_factory=dict)  # method, seed, stage, iterations...


@dataclass(frozen=True)
class CheckpointInfo:
    shape: ModelShape
    iteration: int = 0
    consumed_samples: int = 0
    stage: str | None = None  # plan stage name, e.g. "2B"
    lineage: tuple[LineageStep, ...] = ()
    tokenizer: TokenizerRecord | None = None  # what the model was trained with (None: older grow)
    checkpoint_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    format_version: int = FORMAT_VERSION

    def derive(self, step: LineageStep, **changes) -> "CheckpointInfo":
        """A new checkpoint's info: fresh id, this lineage plus `step`."""
        return CheckpointInfo(
            shape=changes.pop("shape", self.shape),
            iteration=changes.pop("iteration", self.iteration),
            consumed_samples=changes.pop("consumed_samples", self.consumed_samples),
            stage=changes.pop("stage", self.stage),
            lineage=(*self.lineage, step),
            tokenizer=changes.pop("tokenizer", self.tokenizer),
            **changes,
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = self.shape.to_dict()
        data["lineage"] = [asdict(s) for s in self.lineage]
        data["tokenizer"] = self.tokenizer.to_json() if self.tokenizer is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "CheckpointInfo":
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise GrowError("checkpoint was written by a newer grow; upgrade grow to read it")
        return cls(
            shape=ModelShape.from_dict(data["shape"]),
            iteration=data.get("iteration", 0),
            consumed_samples=data.get("consumed_samples", 0),
            stage=data.get("stage"),
            lineage=tuple(LineageStep(**s) for s in data.get("lineage", [])),
            tokenizer=TokenizerRecord.from_json(data["tokenizer"]) if data.get("tokenizer") else None,
            checkpoint_id=data["checkpoint_id"],
            format_version=data.get("format_version", FORMAT_VERSION),
        )


def read_common(path: str | Path) -> dict:
    """The non-tensor state rank 0 wrote (`common.pt`, or inside the torch_dist files with
    newer megatron-core releases: `runtime.megatron_compat` knows both)."""
    from grow_cli.checkpoint.locate import resolve_checkpoint
    from grow_cli.runtime.megatron_compat import read_common_state

    directory = resolve_checkpoint(path)
    try:
        return read_common_state(directory)
    except FileNotFoundError:
        raise GrowError(f"{path} has no common state (common.pt): not a complete torch_dist checkpoint") from None
    except Exception as error:  # a truncated or foreign file
        raise GrowError(f"{directory} has unreadable common state ({type(error).__name__}); the checkpoint is corrupted") from None


def read_info(path: str | Path) -> CheckpointInfo:
    """The grow record of a checkpoint; a clear error for checkpoints grow did not write."""
    common = read_common(path)
    if COMMON_KEY not in common:
        raise GrowError(
            f"{path} is a torch_dist checkpoint without grow metadata (no model shape); "
            "import foreign models with `grow import`"
        )
    return CheckpointInfo.from_dict(common[COMMON_KEY])
