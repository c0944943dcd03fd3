"""The plan file: what `grow plan` decides and `pretrain`, `expand` and `eval` read.

A YAML document with a versioned schema. Each stage carries everything a later command needs:
the model shape, the token budget (and the iterations it implies at the planned global batch),
the learning-rate schedule and the parallel layout. Readers refuse a newer schema instead of
guessing, and check every field against the schema (`grow_cli.planning.schema`) first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grow_cli.errors import GrowError
from grow_cli.layout import Layout
from grow_cli.planning.hardware import PLANNED_MFU
from grow_cli.planning.lr import ScheduleRule
from grow_cli.planning.schema import check_record
from grow_cli.shape import DEFAULT_SEQ_LEN, GPT2_VOCAB, PARAMS_DEFINITION, ModelShape

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PlanRequest:
    """Everything `grow plan` decides from; stored in the plan file as its `inputs`."""

    sizes: tuple[str, ...]  # canonical names, smallest first
    tokens_per_param: float  # scratch tokens per nominal parameter, every stage
    seq_len: int = DEFAULT_SEQ_LEN
    vocab: int = GPT2_VOCAB
    tied: bool = False
    auto_shapes: bool = False
    layout: Layout = field(default_factory=Layout)
    gpu: str = "h100"
    mfu: float = PLANNED_MFU
    global_batch: int | None = None  # sequences per optimizer step; None: per stage (planning/hyperparams.py)
    micro_batch: int = 1
    law: str = "besiroglu2024"
    lr_ladder: str | None = None  # None: per stage (planning/hyperparams.py)
    kv_groups: str = "auto"  # auto | mha | N (planning/attention.py)
    schedule: ScheduleRule = field(default_factory=ScheduleRule)
    fixed_data: bool = False
    flops_convention: str = "reference"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["sizes"] = list(self.sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PlanRequest":
        data = dict(data)
        data["sizes"] = tuple(data["sizes"])
        data["layout"] = Layout(**data.get("layout", {}))
        data["schedule"] = ScheduleRule(**data.get("schedule", {}))
        return cls(**data)


@dataclass(frozen=True)
class PlanTotals:
    """Series-level numbers (FLOPs in the plan's convention); stored as the plan's `totals`."""

    flops_independent: float  # every size trained from scratch
    flops_progressive: float  # the grown series (= the largest size's scratch FLOPs)
    saving_fraction: float  # 1 - progressive / independent
    tokens_progressive: float  # tokens the grown series trains on, all stages
    tokens_largest_scratch: float  # tokens of the largest model alone
    tokens_independent: float
    gpu_hours_progressive: float  # Megatron-convention FLOPs at the planned MFU
    gpu_hours_independent: float
    tokens_per_param: float
    corpus_tokens: float | None  # --fixed-data: unique tokens available to the whole series
    repeated_tokens: float | None  # --fixed-data: tokens read a second (or later) time
    law_optimal_params: float  # compute-optimal size for the largest model's 6·N_total·D compute
    law_optimal_tokens: float

    @classmethod
    def from_dict(cls, data: dict) -> "PlanTotals":
        return cls(**data)


@dataclass(frozen=True)
class StagePlan:
    """One member of the series.

    Token counts are in tokens; FLOPs follow the plan's `flops_convention`. `tokens_incremental`
    is what this stage trains on (all of `tokens_scratch` for the first stage, the remainder of
    the largest-so-far scratch budget after growth for later ones).
    """

    index: int  # 1-based position in the series
    name: str  # "1B"
    nominal_params: float  # what the name says; the reference FLOP accounting uses it
    shape: ModelShape
    params_total: int  # `shape.param_counts()`: PARAMS_DEFINITION (files before it counted the TP padding)
    params_nonembedding: int
    tokens_scratch: float
    tokens_incremental: float
    tokens_cumulative: float
    flops_scratch: float
    flops_incremental: float
    flops_cumulative: float
    lr: float
    min_lr: float
    warmup_iters: int
    train_iters: int
    global_batch: int  # sequences per optimizer step
    micro_batch: int
    layout: Layout = field(default_factory=Layout)  # planned for; `pretrain` defaults to it
    init_from: str | None = None  # name of the stage this one grows from (None: scratch)
    flops_per_token: float | None = None  # training FLOPs per token in the plan's convention
    predicted_loss: float | None = None  # scaling-law loss of this size trained from scratch
    loss_outside_fit: bool = False  # the law does not predict this size/budget: predicted_loss is None
    gpu_hours: float | None = None
    memory_per_gpu_gb: float | None = None  # GiB (2^30 bytes) on the most loaded GPU
    unique_tokens: float | None = None  # --fixed-data: fresh tokens available to this stage
    repeated_tokens: float | None = None

    @property
    def tokens_per_iter(self) -> int:
        return self.global_batch * self.shape.seq_len

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = self.shape.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "StagePlan":
        data = dict(data)
        data["shape"] = ModelShape.from_dict(data["shape"])
        data["layout"] = Layout(**data.get("layout", {}))
        return cls(**data)


@dataclass(frozen=True)
class Plan:
    """A whole series: its stages, the inputs that produced it and the totals."""

    stages: list[StagePlan]
    inputs: PlanRequest  # the options `grow plan` was given
    totals: PlanTotals
    flops_convention: str = "reference"
    schema_version: int = SCHEMA_VERSION

    def stage(self, key: int | str) -> StagePlan:
        """A stage by 1-based index ("2", 2) or by name ("2B")."""
        text = str(key)
        for stage in self.stages:
            if text == str(stage.index) or text.upper() == stage.name.upper():
                return stage
        names = ", ".join(f"{s.index} ({s.name})" for s in self.stages)
        raise GrowError(f"the plan has no stage {key!r}; its stages are {names}")

    def previous(self, stage: StagePlan) -> StagePlan | None:
        return self.stages[stage.index - 2] if stage.index > 1 else None

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "flops_convention": self.flops_convention,
            "inputs": self.inputs.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
            "totals": asdict(self.totals),
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> "Plan":
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise GrowError(f"{source} is not a grow plan file (no schema_version); create one with `grow plan --out`")
        if version > SCHEMA_VERSION:
            raise GrowError(
                f"{source} has plan schema {version}, newer than this grow understands ({SCHEMA_VERSION}); "
                "upgrade grow or re-run `grow plan`"
            )
        check_record(cls, data, source, "")
        return cls(
            stages=[StagePlan.from_dict(s) for s in data["stages"]],
            inputs=PlanRequest.from_dict(data["inputs"]),
            totals=PlanTotals.from_dict(data["totals"]),
            flops_convention=data.get("flops_convention", "reference"),
            schema_version=version,
        )


def iterations_for(tokens: float, global_batch: int, seq_len: int) -> int:
    """Optimizer steps needed to consume `tokens` at `global_batch` sequences of `seq_len`."""
    return max(1, math.ceil(tokens / (global_batch * seq_len)))


def save_plan(plan: Plan, path: str | Path) -> None:
    """Write the plan as YAML, atomically (temporary name, then rename), under a comment naming
    the parameter count it stores (a reader of the file sees which count, not just a number)."""
    import yaml

    from grow_cli.checkpoint.atomic import write_text_atomic

    header = f"# params_total, params_nonembedding: {PARAMS_DEFINITION}\n"
    write_text_atomic(path, header + yaml.safe_dump(plan.to_dict(), sort_keys=False))


def load_plan(path: str | Path) -> Plan:
    """Read a plan file, with one-line errors for a missing, unreadable or too-new file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise GrowError(f"plan file {path} does not exist; create it with `grow plan ... --out {path}`")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise GrowError(f"plan file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise GrowError(f"{path} is not a grow plan file; create one with `grow plan --out`")
    return Plan.from_dict(data, source=str(path))
