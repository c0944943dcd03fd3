"""The settings of one training run, resolved once from the plan file and the flags.

`PretrainOptions` (training/options.py) is what the user typed. `resolve_config` loads what the
options point at (the data sidecar, the plan stage, the init checkpoint's metadata) and hands it
to `resolve`, a pure function that turns options + inputs into a `TrainConfig` in which every
value is decided: the shape, the layout, the batch, the number of iterations, the learning-rate
schedule, the intervals. All user mistakes are caught here, before any process group exists or
any file is written, so a bad invocation fails with one line and touches nothing. Every rank
resolves the same config from the same inputs. torch is imported only inside the functions that
need megatron's facts (its attention backends, the init checkpoint's metadata), never at module
scope, so `grow pretrain --help` stays instant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from grow_cli.dtypes import WEIGHT_DTYPES
from grow_cli.errors import GrowError
from grow_cli.layout import Layout
from grow_cli.runtime.device import DevicePolicy
from grow_cli.runtime import env
from grow_cli.runtime.fusions import Extensions
from grow_cli.shape import DEFAULT_SEQ_LEN, ModelShape
from grow_cli.training.options import DEFAULT_GLOBAL_BATCH, DEFAULT_LR, DEFAULT_MICRO_BATCH, PretrainOptions
from grow_cli.training.data_window import DataWindow, resolve_window
from grow_cli.training.speed import RunFacts, SpeedSettings, resolve_speed

if TYPE_CHECKING:
    from grow_cli.checkpoint.metadata import CheckpointInfo
    from grow_cli.data.info import DataInfo
    from grow_cli.planning.planfile import StagePlan

RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class ModelSettings:
    """What is built: the shape, its name, and how it computes."""

    shape: ModelShape
    name: str  # the plan stage name ("2B") or the --size name
    nominal_params: float  # what the name says; the shape's non-embedding count without one
    attention: str = "sdpa"
    dtype: str = "fp32"
    recompute: str = "none"


@dataclass(frozen=True)
class ParallelSettings:
    """The layout of the run and the two ways it shards beyond it."""

    layout: Layout
    sequence_parallel: bool = False
    distributed_optimizer: bool = True


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW with Megatron's defaults for LLM pretraining, warmup then cosine decay to min_lr."""

    lr: float
    min_lr: float
    warmup_iters: int
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0
    decay_style: str = "cosine"


@dataclass(frozen=True)
class BatchSettings:
    """Sequences per optimizer step, per forward pass, and the number of steps."""

    global_batch: int
    micro_batch: int
    train_iters: int

    def microbatches(self, dp: int) -> int:
        """Forward/backward passes per step on each data-parallel rank."""
        return self.global_batch // (self.micro_batch * dp)


@dataclass(frozen=True)
class IntervalSettings:
    """How often the loop logs, validates and saves (in iterations)."""

    log: int = 10
    eval: int = 1000
    eval_iters: int = 10
    save: int = 1000
    keep_last: int = 2
    exit: int | None = None  # stop (with a checkpoint) when the iteration is a multiple of this


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSettings
    parallel: ParallelSettings
    optimizer: OptimizerSettings
    batch: BatchSettings
    intervals: IntervalSettings
    data: str  # absolute data prefix
    out: Path
    seed: int = 1234
    init: str | None = None  # checkpoint whose weights start the run
    resume: bool = True
    stage: str | None = None  # plan stage name
    plan: str | None = None
    peak_tflops: float | None = None  # per device, for MFU; None: detect
    quiet: bool = False
    speed: SpeedSettings = field(default_factory=SpeedSettings)  # kernels and gradient handling
    window: DataWindow = field(default_factory=lambda: DataWindow(1234))  # where in the data order it reads
    # The loss when it is not plain next-token cross-entropy (`grow distill`: its teacher, λ, γ and
    # KL direction), so a resume with another loss is refused like one with another learning rate.
    objective: dict | None = None

    @property
    def shape(self) -> ModelShape:
        return self.model.shape

    @property
    def tokens_per_iter(self) -> int:
        return self.batch.global_batch * self.shape.seq_len

    def identity(self) -> dict:
        """What makes two invocations the same run (resumable from each other's checkpoints).

        The layout (TP/PP/DP), micro batch, intervals and attention kernel may change between
        restarts; the model, the data order and the optimisation trajectory may not.
        """
        return {
            "shape": self.shape.to_dict(),
            "stage": self.stage or self.model.name,
            "data": self.data,
            "seed": self.seed,
            "init": self.init,
            "dtype": self.model.dtype,
            "distributed_optimizer": self.parallel.distributed_optimizer,
            "global_batch": self.batch.global_batch,
            "train_iters": self.batch.train_iters,
            "optimizer": asdict(self.optimizer),
            "data_window": asdict(self.window),
            **({"objective": self.objective} if self.objective else {}),  # absent for pretraining: older runs resume
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data["model"]["shape"] = self.shape.to_dict()
        data["out"] = str(self.out)
        return data


# ---- loading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInputs:
    """What the options point at, read from disk: everything `resolve` needs besides the options."""

    data: DataInfo
    stage: StagePlan | None = None  # the --plan stage
    extensions: Extensions | None = None  # this machine's TE/Apex; None: the run executes elsewhere
    parent: CheckpointInfo | None = None  # --init's record (its RoPE, norm epsilon, what its lineage read)
    corpus_tokens: float | None = None  # the plan's fixed corpus (`grow plan --fixed-data`)


def _parent(init: str | None, tokenizer_vocab: int) -> CheckpointInfo | None:
    """The --init checkpoint's record; None without --init or when it does not exist yet (a
    SLURM chain writes the job before its input: the job resolves again when it runs).
    `tokenizer_vocab`: the vocabulary of a Megatron-LM --init whose args do not tell it."""
    if init is None or not Path(init).expanduser().exists():
        return None
    from grow_cli.checkpoint.metadata import read_info

    return read_info(Path(init).expanduser(), tokenizer_vocab=tokenizer_vocab)


def load_inputs(options: PretrainOptions, here: bool = True) -> RunInputs:
    """The data sidecar, the plan stage, what --init read and (`here`) the installed extensions;
    GrowError when the files are missing or inconsistent."""
    from grow_cli.data.info import read_data_info

    data = read_data_info(options.data)
    extensions = Extensions.detect() if here else None
    parent = _parent(options.init, options.vocab or data.vocab_size)
    if options.plan is None:
        if options.stage is not None:
            raise GrowError("--stage needs --plan PLAN")
        return RunInputs(data, extensions=extensions, parent=parent)
    from grow_cli.planning.planfile import load_plan

    if options.stage is None:
        raise GrowError("--plan needs --stage (a stage number or name, e.g. --stage 1 or --stage 2B)")
    plan = load_plan(options.plan)
    corpus = plan.totals.corpus_tokens if plan.inputs.fixed_data else None
    return RunInputs(data, plan.stage(options.stage), extensions, parent, corpus)


def resolve_config(
    options: PretrainOptions, *, world_size: int | None = None, device: DevicePolicy | None = None, here: bool = True
) -> TrainConfig:
    """Load the inputs and resolve the run; raise GrowError (one line) on any inconsistency.

    `world_size`/`device` default to this launch; `grow slurm` passes the allocation's and
    `here=False` (the job will run elsewhere: do not check what is installed on this machine).
    """
    if device is None:
        from grow_cli.runtime.device import device_policy

        device = device_policy()
    world_size = env.world_size() if world_size is None else world_size
    inputs = load_inputs(options, here)
    config = resolve(options, inputs, world_size=world_size, device=device)
    if config.init is not None:
        check_init_checkpoint(config.init, config.shape, inputs.data, vocab=options.vocab)
    return config


def check_init_checkpoint(path: str, shape: ModelShape, data=None, *, vocab: int | None = None) -> None:
    """--init must be a complete grow checkpoint of exactly this architecture (and trained with the
    tokenizer of `data`, a DataInfo, when given). A Megatron-LM checkpoint whose args do not tell
    its vocabulary has `vocab` (--vocab), else the model's (--data's tokenizer): the one the
    training processes read it with (`initial_info`, `load_model_weights`)."""
    from grow_cli.checkpoint.checks import check_architecture
    from grow_cli.checkpoint.metadata import read_info
    from grow_cli.checkpoint.tensors import validate_checkpoint
    from grow_cli.data.tokenizer_record import check_same_tokenizer

    info = read_info(validate_checkpoint(path), tokenizer_vocab=vocab if vocab is not None else shape.vocab)
    if data is not None:
        check_same_tokenizer(data.tokenizer, info.tokenizer, f"data {data.prefix}", f"--init {path}")
    check_architecture(f"--init {path}", info.shape, shape)


# ---- resolution (pure: options + inputs -> config) -------------------------------------------
def _positive(name: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        raise GrowError(f"{name} must be positive, got {value}")


def check_options(options: PretrainOptions) -> None:
    """The checks that need nothing but the options: ranges and choices."""
    from grow_cli.runtime.model import ATTENTION_BACKENDS

    for name in ("tp", "pp", "seq_len", "global_batch", "micro_batch", "lr", "log_interval", "eval_interval",
                 "eval_iters", "save_interval", "keep_last", "exit_interval", "peak_tflops"):
        _positive(f"--{name.replace('_', '-')}", getattr(options, name))
    if options.min_lr is not None and options.min_lr < 0:
        raise GrowError(f"--min-lr must be >= 0, got {options.min_lr}")
    if options.dtype is not None and options.dtype not in WEIGHT_DTYPES:
        raise GrowError(f"--dtype {options.dtype!r}: choose one of {', '.join(WEIGHT_DTYPES)}")
    if options.recompute not in RECOMPUTE:
        raise GrowError(f"--recompute {options.recompute!r}: choose one of {', '.join(RECOMPUTE)}")
    if options.attention not in ATTENTION_BACKENDS:
        raise GrowError(f"--attention {options.attention!r}: choose one of {', '.join(ATTENTION_BACKENDS)}")
    if options.init is not None and options.from_scratch:
        raise GrowError("--init and --from-scratch contradict each other; drop one")
    if options.micro_batch is not None and options.gpu is not None:
        raise GrowError("--gpu sizes the micro batch from memory, --micro-batch pins it; drop one")


def _shape_from_flags(options: PretrainOptions, vocab: int, tp: int, pp: int) -> tuple[str, float, ModelShape]:
    """--size NAME (preset or auto-shaped) or explicit --hidden/--ffn/--layers/--heads."""
    from grow_cli.shape import resolve_shape
    from grow_cli.units import format_count

    seq_len = options.seq_len or DEFAULT_SEQ_LEN
    explicit = {k: getattr(options, k) for k in ("hidden", "ffn", "layers", "heads")}
    if options.size is not None:
        if any(v is not None for v in explicit.values()):
            raise GrowError("give either --size or the shape flags (--hidden --ffn --layers --heads), not both")
        name, nominal, shape = resolve_shape(options.size, tp=tp, pp=pp, vocab=vocab, seq_len=seq_len)
        changes = {k: getattr(options, k) for k in ("kv_groups", "head_dim") if getattr(options, k) is not None}
        return name, nominal, shape.with_(**changes) if changes else shape
    missing = [f"--{k}" for k, v in explicit.items() if v is None]
    if missing:
        raise GrowError(
            f"no model: give --plan PLAN --stage N, or --size (e.g. 2M), or all of --hidden --ffn --layers --heads "
            f"(missing {' '.join(missing)})"
        )
    heads = explicit["heads"]
    head_dim = options.head_dim or (explicit["hidden"] // heads)
    shape = ModelShape(
        hidden=explicit["hidden"],
        ffn=explicit["ffn"],
        layers=explicit["layers"],
        heads=heads,
        kv_groups=options.kv_groups or heads,
        head_dim=head_dim,
        vocab=vocab,
        seq_len=seq_len,
    )
    nominal = float(shape.param_counts().nonembedding)
    return format_count(nominal), nominal, shape


def _computed_like(shape: ModelShape, init: ModelShape) -> ModelShape:
    """`shape` computing what the --init weights compute: their RoPE base and scaling and norm
    epsilon, which no flag sets and the architecture check does not compare (an imported Llama or
    Megatron-LM checkpoint has RoPE base 500000; trained at grow's default 10000 it would be
    another function)."""
    return shape.with_(rope_theta=init.rope_theta, rope_scaling=init.rope_scaling, norm_eps=init.norm_eps)


def _check_stage_start(options: PretrainOptions, stage: StagePlan) -> None:
    """A stage the plan grows from an earlier one starts from that one's expanded weights."""
    if stage.init_from is not None and options.init is None and not options.from_scratch:
        raise GrowError(
            f"plan stage {stage.name} grows from {stage.init_from}: give --init CKPT (the `grow expand` output), "
            "or --from-scratch to train it from random weights"
        )


def _iterations(options: PretrainOptions, stage: StagePlan | None, global_batch: int, seq_len: int) -> int:
    from grow_cli.planning.planfile import iterations_for
    from grow_cli.units import parse_count

    if options.iters is not None and options.tokens is not None:
        raise GrowError("give --iters or --tokens, not both")
    if options.iters is not None:
        _positive("--iters", options.iters)
        return options.iters
    if options.tokens is not None:
        return iterations_for(parse_count(options.tokens, "--tokens"), global_batch, seq_len)
    if stage is not None:
        return iterations_for(stage.tokens_incremental, global_batch, seq_len)
    raise GrowError("how long to train? give --iters N or --tokens N (e.g. 2B), or a --plan stage")


def _warmup(options: PretrainOptions, stage: StagePlan | None, train_iters: int) -> int:
    """--warmup-iters, else the plan's warmup scaled to this run's length, else 1% of it."""
    if options.warmup_iters is not None:
        if not 0 <= options.warmup_iters < train_iters:
            raise GrowError(f"--warmup-iters {options.warmup_iters} must be in [0, {train_iters}) (the run's iterations)")
        return options.warmup_iters
    if stage is not None:
        planned = stage.warmup_iters
        if stage.train_iters and train_iters != stage.train_iters:
            planned = round(planned * train_iters / stage.train_iters)
        return min(planned, train_iters - 1)
    return train_iters // 100


def resolve(options: PretrainOptions, inputs: RunInputs, *, world_size: int, device: DevicePolicy) -> TrainConfig:
    """Decide every setting of the run from the options and what they point at; no I/O."""
    check_options(options)
    data, stage = inputs.data, inputs.stage
    if data.train.tokens == 0:
        raise GrowError(f"data {data.prefix} holds no training tokens; prepare it from a non-empty corpus")
    if stage is not None:
        if options.size is not None or options.hidden is not None:
            raise GrowError("the shape comes from --plan; drop --size/--hidden/... or drop --plan")
        _check_stage_start(options, stage)

    tp = options.tp or (stage.layout.tp if stage else 1)
    pp = options.pp or (stage.layout.pp if stage else 1)
    if stage is not None:
        shape, name, nominal = stage.shape, stage.name, stage.nominal_params
        if options.seq_len is not None and options.seq_len != shape.seq_len:
            shape = shape.with_(seq_len=options.seq_len)
    else:
        name, nominal, shape = _shape_from_flags(options, data.vocab_size, tp, pp)
    if options.init is not None and inputs.parent is not None:
        shape = _computed_like(shape, inputs.parent.shape)
    data.check_vocab(shape.vocab)
    shape.check_layout(tp, pp, name=f"model {name}")
    if world_size % (tp * pp):
        raise GrowError(
            f"world size {world_size} is not divisible by TP x PP = {tp} x {pp}; "
            f"launch a multiple of {tp * pp} processes or change --tp/--pp"
        )
    layout = Layout(tp, pp, world_size // (tp * pp))

    global_batch = options.global_batch or (stage.global_batch if stage else DEFAULT_GLOBAL_BATCH)
    if options.gpu is not None:
        micro_batch = _micro_batch_for(options.gpu, shape, layout, global_batch)
    else:
        micro_batch = options.micro_batch or (stage.micro_batch if stage else DEFAULT_MICRO_BATCH)
    if global_batch % (micro_batch * layout.dp):
        raise GrowError(
            f"global batch {global_batch} is not a multiple of micro batch {micro_batch} x DP {layout.dp}; "
            f"change --global-batch or --micro-batch"
        )
    train_iters = _iterations(options, stage, global_batch, shape.seq_len)
    lr = options.lr or (stage.lr if stage else DEFAULT_LR)
    min_lr = options.min_lr if options.min_lr is not None else (stage.min_lr if stage else lr / 10)
    if min_lr > lr:
        raise GrowError(f"--min-lr {min_lr} is above the learning rate {lr}")
    warmup = _warmup(options, stage, train_iters)
    window = resolve_window(
        data_start=options.data_start, seed=options.seed, prefix=data.prefix, fingerprint=data.fingerprint,
        train_tokens=data.train.tokens, seq_len=shape.seq_len, samples=train_iters * global_batch,
        parent=inputs.parent.data_consumed() if options.init is not None and inputs.parent else None,
        corpus_tokens=inputs.corpus_tokens,
    )

    # megatron's local layer spec (sdpa/local attention) uses torch norms, which cannot run
    # sequence parallel; Transformer Engine's spec can.
    if options.sequence_parallel and tp > 1 and options.attention != "te":
        raise GrowError(
            "--sequence-parallel needs --attention te (Transformer Engine layers): megatron's local "
            "layers use torch norms, which do not support it; drop --sequence-parallel"
        )
    if options.sequence_parallel is not None:
        sequence_parallel = options.sequence_parallel
    else:
        sequence_parallel = device.default_sequence_parallel and options.attention == "te"
    if options.attention == "te" and inputs.extensions is not None and not inputs.extensions.te:
        raise GrowError("--attention te needs Transformer Engine, which is not installed; use --attention sdpa")
    dtype = options.dtype or device.dtype
    batch = BatchSettings(global_batch, micro_batch, train_iters)
    facts = RunFacts(layout, dtype, batch.microbatches(layout.dp), options.distributed_optimizer)
    return TrainConfig(
        model=ModelSettings(shape, name, float(nominal), options.attention, dtype, options.recompute),
        parallel=ParallelSettings(layout, bool(sequence_parallel and tp > 1), options.distributed_optimizer),
        optimizer=OptimizerSettings(lr, min_lr, warmup, options.weight_decay, clip_grad=options.clip_grad),
        batch=batch,
        intervals=IntervalSettings(
            options.log_interval, options.eval_interval, options.eval_iters, options.save_interval,
            options.keep_last, options.exit_interval,
        ),
        data=data.prefix,
        out=Path(options.out).expanduser().resolve(),
        seed=options.seed,
        init=str(Path(options.init).expanduser().resolve()) if options.init is not None else None,
        resume=options.resume,
        stage=stage.name if stage else None,
        plan=str(Path(options.plan).resolve()) if options.plan else None,
        peak_tflops=options.peak_tflops,
        quiet=options.quiet,
        speed=resolve_speed(options, device, inputs.extensions, facts),
        window=window,
    )


def _micro_batch_for(gpu: str, shape: ModelShape, layout: Layout, global_batch: int) -> int:
    """The largest micro batch whose planned memory (planning/memory.py) fits `gpu`'s usable memory."""
    from grow_cli.planning.hardware import gpu_spec
    from grow_cli.planning.memory import largest_micro_batch

    spec = gpu_spec(gpu)
    micro = largest_micro_batch(shape, layout, global_batch, spec.usable_gib)
    if micro is None:
        raise GrowError(
            f"not even micro batch 1 fits {spec.description} ({spec.usable_gib:.0f} GiB usable) at {layout.describe()}; "
            "raise --tp or --pp, or lower --seq-len"
        )
    return micro
