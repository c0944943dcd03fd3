"""What grow records about a checkpoint, stored in torch_dist's `common.pt` under "grow".

megatron merges `common.pt` into what `dist_checkpointing.load` returns, so the record travels
with the checkpoint and needs no side file. It holds the shape (the only way expand/eval/export
learn the architecture), the training position, the plan stage and the lineage: the chain of
operations (pretrain, expand, import, distill) with the identity of each input, so a grown model can always
be traced back. Each kind of step has its own typed details; they serialise to the same JSON
grow has always written (`{"op", "source", "source_id", "details": {...}}`), and fields a record
lacks (written by an older grow) read as their defaults.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from grow_cli.checkpoint import megatron_lm
from grow_cli.data.tokenizer_record import TokenizerRecord
from grow_cli.errors import GrowError
from grow_cli.shape import ModelShape

COMMON_KEY = "grow"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DataConsumed:
    """The training samples a pretrain run read, so that the next stage can read new ones.

    Samples are indices into GPTDataset's order of the prefix's train split at `seq_len`
    and `seed` (the order is fixed by those and the data's `fingerprint`). Step k of the run read
    positions `start + k * global_batch ... start + (k + 1) * global_batch - 1`, each taken modulo
    `wrap` when the run reads a capped corpus (`--fixed-data` plans), and `samples` positions were
    read in all by the time the checkpoint was written.
    """

    prefix: str
    fingerprint: str
    seed: int
    seq_len: int
    start: int = 0
    samples: int = 0
    wrap: int | None = None

    @property
    def end(self) -> int:
        """The position after the last sample read (before wrapping)."""
        return self.start + self.samples

    def indices(self, first: int, count: int) -> list[int]:
        """Dataset indices of the run's samples `first .. first + count - 1`."""
        positions = range(self.start + first, self.start + first + count)
        return [p % self.wrap for p in positions] if self.wrap else list(positions)


@dataclass(frozen=True)
class TrainingRunDetails:
    """What every training run records (`grow pretrain` and `grow distill` alike)."""

    data: str | None = None
    train_iters: int | None = None
    global_batch: int | None = None
    tokens: int | None = None
    lr: float | None = None
    min_lr: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class PretrainDetails(TrainingRunDetails):
    """`grow pretrain` (from scratch, or from --init): the run that trained the checkpoint."""

    stage: str | None = None
    plan: str | None = None
    data_consumed: DataConsumed | None = None  # None: written by a grow that did not record it


@dataclass(frozen=True)
class ExpandDetails:
    """`grow expand`: the operators, their seed, and where in its run the source stood."""

    width: str | None = None
    depth: str | None = None
    seed: int | None = None
    noise: float | None = None
    stage: str | None = None
    plan: str | None = None
    source_shape: ModelShape | None = None
    source_iteration: int = 0
    source_consumed_samples: int = 0
    exact: bool | None = None
    optimizer: str = "fresh"

    def to_dict(self) -> dict:
        return {**asdict(self), "source_shape": self.source_shape.to_dict() if self.source_shape else None}


@dataclass(frozen=True)
class ImportDetails:
    """`grow import`, or a Megatron-LM checkpoint read through its args: what kind of directory
    the weights came from (for Megatron-LM: the iteration and a digest of its args)."""

    format: str | None = None
    source_dtype: str | None = None
    architectures: list[str] | None = None
    iteration: int | None = None
    args_digest: str | None = None


@dataclass(frozen=True)
class DistillDetails(TrainingRunDetails):
    """`grow distill`: the run that distilled the checkpoint; the step's source is the teacher."""

    lam: float | None = None  # λ, the weight of the movement term
    gamma: float | None = None  # γ, the depth weighting w_l = softmax(γ·l)
    direction: str | None = None  # "reverse" KL(p_l ‖ p_teacher) or "forward" KL(p_teacher ‖ p_l)


StepDetails = PretrainDetails | ExpandDetails | ImportDetails | DistillDetails
DETAILS_BY_OP: dict[str, type] = {
    "pretrain": PretrainDetails, "expand": ExpandDetails, "import": ImportDetails, "distill": DistillDetails,
}


def _details_from_dict(op: str, data: dict) -> StepDetails:
    kind = DETAILS_BY_OP[op]
    known = {f.name for f in fields(kind)}
    values = {key: value for key, value in data.items() if key in known}
    if kind is ExpandDetails and values.get("source_shape") is not None:
        values["source_shape"] = ModelShape.from_dict(values["source_shape"])
    if kind is PretrainDetails and values.get("data_consumed") is not None:
        values["data_consumed"] = DataConsumed(**values["data_consumed"])
    return kind(**values)


@dataclass(frozen=True)
class LineageStep:
    """One operation that produced a checkpoint from another (or from nothing).

    `details` defaults to the empty record of the step's kind and must be of that kind.
    """

    op: str  # a key of DETAILS_BY_OP
    source: str | None = None  # input path as given
    source_id: str | None = None  # the input checkpoint's `checkpoint_id`
    details: StepDetails | None = None

    def __post_init__(self) -> None:
        kind = DETAILS_BY_OP.get(self.op)
        if kind is None:
            raise GrowError(f"unknown lineage step {self.op!r}: the checkpoint was written by a newer grow; upgrade grow")
        if self.details is None:
            object.__setattr__(self, "details", kind())
        elif not isinstance(self.details, kind):
            raise TypeError(f"a {self.op} step needs {kind.__name__}, got {type(self.details).__name__}")

    def to_dict(self) -> dict:
        # ExpandDetails alone holds a ModelShape, which serialises through its own to_dict
        details = self.details.to_dict() if isinstance(self.details, ExpandDetails) else asdict(self.details)
        return {"op": self.op, "source": self.source, "source_id": self.source_id, "details": details}

    @classmethod
    def from_dict(cls, data: dict) -> "LineageStep":
        op = data["op"]
        if op not in DETAILS_BY_OP:
            raise GrowError(f"unknown lineage step {op!r}: the checkpoint was written by a newer grow; upgrade grow")
        details = _details_from_dict(op, data.get("details") or {})
        return cls(op, source=data.get("source"), source_id=data.get("source_id"), details=details)


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

    def data_consumed(self) -> DataConsumed | None:
        """What the last pretrain run in the lineage read up to this checkpoint: the checkpoint's
        own run, or the run an expansion (the steps after it) read its source from."""
        for index in range(len(self.lineage) - 1, -1, -1):
            step = self.lineage[index]
            if step.op == "import":
                return None
            if step.op == "pretrain":
                return step.details.data_consumed
        return None

    def with_samples_read(self, samples: int) -> "CheckpointInfo":
        """This info with its own (last) pretrain step's `data_consumed.samples` set."""
        last = self.lineage[-1] if self.lineage else None
        if last is None or last.op != "pretrain" or last.details.data_consumed is None:
            return self
        details = replace(last.details, data_consumed=replace(last.details.data_consumed, samples=samples))
        return replace(self, lineage=(*self.lineage[:-1], replace(last, details=details)))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = self.shape.to_dict()
        data["lineage"] = [s.to_dict() for s in self.lineage]
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
            lineage=tuple(LineageStep.from_dict(s) for s in data.get("lineage", [])),
            tokenizer=TokenizerRecord.from_json(data["tokenizer"]) if data.get("tokenizer") else None,
            checkpoint_id=data["checkpoint_id"],
            format_version=data.get("format_version", FORMAT_VERSION),
        )


def common_state(info: CheckpointInfo, padded_rows: int, *, tp: int = 1, pp: int = 1) -> dict:
    """What every checkpoint grow writes keeps in `common.pt`: the grow record, and the entries
    Megatron-LM's loader reads (args, iteration, checkpoint version) for the `padded_rows`
    embedding rows and the TP/PP it was written at."""
    return {COMMON_KEY: info.to_dict(), **megatron_lm.megatron_common(info.shape, padded_rows, info.iteration, tp=tp, pp=pp)}


def read_common(path: str | Path) -> dict:
    """The non-tensor state rank 0 wrote (`common.pt`, or inside the torch_dist files with
    newer megatron-core releases: `runtime.megatron_compat` knows both)."""
    from grow_cli.checkpoint.rundir import resolve_checkpoint
    from grow_cli.runtime.megatron_compat import read_common_state

    directory = resolve_checkpoint(path)
    try:
        return read_common_state(directory)
    except FileNotFoundError:
        raise GrowError(f"{path} has no common state (common.pt): not a complete torch_dist checkpoint") from None
    except Exception as error:  # a truncated or foreign file
        raise GrowError(f"{directory} has unreadable common state ({type(error).__name__}); the checkpoint is corrupted") from None


def read_info(path: str | Path, *, vocab: int | None = None, tokenizer_vocab: int | None = None) -> CheckpointInfo:
    """The grow record of a checkpoint; for a Megatron-LM checkpoint (no record, but `args`),
    one derived from its args whose lineage starts with the import (`vocab`: a --vocab that
    overrides the args; `tokenizer_vocab`: the size of the tokenizer it is used with, for args
    that do not tell it: see `megatron_lm.shape_from_args`); a clear error for anything else."""
    common = read_common(path)
    if COMMON_KEY in common:
        return CheckpointInfo.from_dict(common[COMMON_KEY])
    if megatron_lm.ARGS_KEY in common:
        return _megatron_lm_info(path, common, vocab, tokenizer_vocab)
    raise GrowError(
        f"{path} is a torch_dist checkpoint without grow metadata or Megatron-LM args (no model shape); "
        "import foreign models with `grow import`"
    )


def _megatron_lm_info(path: str | Path, common: dict, vocab: int | None, tokenizer_vocab: int | None) -> CheckpointInfo:
    from grow_cli.checkpoint.rundir import resolve_checkpoint

    directory = resolve_checkpoint(path)
    args = common[megatron_lm.ARGS_KEY]
    iteration = int(common.get(megatron_lm.ITERATION_KEY) or 0)
    digest = megatron_lm.args_digest(args)
    details = ImportDetails(format=megatron_lm.FORMAT, iteration=iteration, args_digest=digest)
    # The same checkpoint always gets the same id, so the lineage of what grow makes of it is stable.
    checkpoint_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{directory.resolve()}#{iteration}#{digest}").hex
    return CheckpointInfo(
        shape=megatron_lm.shape_from_args(args, str(path), vocab, tokenizer_vocab=tokenizer_vocab),
        iteration=iteration,
        consumed_samples=int(getattr(args, "consumed_train_samples", 0) or 0),
        lineage=(LineageStep("import", source=str(directory), details=details),),
        checkpoint_id=checkpoint_id,
    )
