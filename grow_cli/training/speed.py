"""The throughput knobs of a run: fused kernels and how gradients and weights move, decided once.

Every knob left unset takes the fastest choice that is safe on the device the run will use
(`DevicePolicy`) with the libraries it has (`Extensions`); a knob set to what that device or
those libraries cannot do is a one-line GrowError here, before any process group exists. The
CPU policy turns the CUDA-only parts off (megatron's compiled fusions, overlapped communication
on gloo). `resolve_speed` is pure; `Extensions` is None when the run will execute on another
machine (`grow slurm`): then defaults assume neither Transformer Engine nor Apex and explicit
requests for them are trusted.

Gradients default to fp32 buffers, as Megatron-LM forces for bf16 models: accumulating many
micro-batches or summing many data-parallel ranks in bf16 loses bits. With one micro-batch on
one data-parallel rank nothing is summed, the buffer holds the bf16 gradient as computed and
the only extra rounding is its 1/tokens scaling, so there bf16 buffers are the default (half the
buffer memory and bandwidth).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grow_cli.errors import GrowError
from grow_cli.layout import Layout
from grow_cli.runtime.device import DevicePolicy
from grow_cli.runtime.fusions import CROSS_ENTROPY, Extensions, Fusions
from grow_cli.training.options import PretrainOptions

GRAD_DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class GradSync:
    """megatron's DistributedDataParallelConfig choices: gradient buffers, reduce, weight gather."""

    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    bucket_size: int | None = None  # parameters per bucket; None: megatron's default
    grad_dtype: str = "fp32"

    def ddp_config(self, distributed_optimizer: bool):
        from megatron.core.distributed import DistributedDataParallelConfig

        return DistributedDataParallelConfig(
            grad_reduce_in_fp32=self.grad_dtype == "fp32",
            overlap_grad_reduce=self.overlap_grad_reduce,
            overlap_param_gather=self.overlap_param_gather,
            use_distributed_optimizer=distributed_optimizer,
            bucket_size=self.bucket_size,
        )


@dataclass(frozen=True)
class SpeedSettings:
    fusions: Fusions = field(default_factory=Fusions)
    grad_sync: GradSync = field(default_factory=GradSync)

    def describe(self) -> str:
        """One line for logs and benchmark reports."""
        f, sync = self.fusions, self.grad_sync
        fused = [name for name, on in (("swiglu", f.swiglu), ("rope", f.rope), ("grad-accum", f.grad_accum), ("compile", f.compile)) if on]
        overlap = [name for name, on in (("grad reduce", sync.overlap_grad_reduce), ("param gather", sync.overlap_param_gather)) if on]
        return (
            f"cross-entropy {f.cross_entropy}, fused {', '.join(fused) or 'none'}; "
            f"{sync.grad_dtype} gradients, overlapped {', '.join(overlap) or 'nothing'}"
            + (f", buckets of {sync.bucket_size:,} parameters" if sync.bucket_size else "")
        )


@dataclass(frozen=True)
class RunFacts:
    """What the knobs depend on besides the options, already resolved by `training.config`."""

    layout: Layout
    dtype: str
    microbatches: int  # per optimizer step on each DP rank
    distributed_optimizer: bool


def _cuda_only(flag: str, wanted: bool | None, device: DevicePolicy) -> None:
    if wanted and not device.fusions:
        raise GrowError(f"{flag} is a CUDA kernel, which this CPU run cannot use; drop it")


def _needs(flag: str, wanted: bool | None, available: bool | None, library: str) -> None:
    if wanted and available is False:
        raise GrowError(f"{flag} needs {library}, which is not installed; drop it or install {library}")


def _fusions(options: PretrainOptions, device: DevicePolicy, ext: Extensions | None) -> Fusions:
    te = ext.te if ext else None
    grad_accum = ext.grad_accum_fusion(options.attention) if ext else None
    library = "Transformer Engine" if options.attention == "te" else "Apex's fused_weight_gradient_mlp_cuda (or --attention te)"
    if options.cross_entropy is not None and options.cross_entropy not in CROSS_ENTROPY:
        raise GrowError(f"--cross-entropy {options.cross_entropy!r}: choose one of {', '.join(CROSS_ENTROPY)}")
    _cuda_only("--fused-swiglu", options.fused_swiglu, device)
    _cuda_only(f"--cross-entropy {options.cross_entropy}", options.cross_entropy not in (None, "plain"), device)
    _cuda_only("--rope-fusion", options.rope_fusion, device)
    _cuda_only("--grad-accum-fusion", options.grad_accum_fusion, device)
    _needs("--cross-entropy te", options.cross_entropy == "te", te, "Transformer Engine")
    _needs("--rope-fusion", options.rope_fusion, te, "Transformer Engine")
    _needs("--grad-accum-fusion", options.grad_accum_fusion, grad_accum, library)
    fast = device.fusions
    default_ce = ("te" if te else "native") if fast else "plain"
    return Fusions(
        swiglu=fast if options.fused_swiglu is None else options.fused_swiglu,
        cross_entropy=options.cross_entropy or default_ce,
        rope=bool(fast and te) if options.rope_fusion is None else options.rope_fusion,
        grad_accum=bool(fast and grad_accum) if options.grad_accum_fusion is None else options.grad_accum_fusion,
        compile=options.compile,
    )


def _grad_sync(options: PretrainOptions, device: DevicePolicy, facts: RunFacts) -> GradSync:
    if options.bucket_size is not None and options.bucket_size <= 0:
        raise GrowError(f"--bucket-size must be positive, got {options.bucket_size}")
    for flag, wanted, possible in (
        ("--overlap-grad-reduce", options.overlap_grad_reduce, device.overlap_grad_reduce),
        ("--overlap-param-gather", options.overlap_param_gather, device.overlap_param_gather),
    ):
        if wanted and not possible:
            raise GrowError(f"{flag} needs CUDA streams to overlap on; this {device.backend} run cannot, drop it")
    overlap_grad = device.overlap_grad_reduce if options.overlap_grad_reduce is None else options.overlap_grad_reduce
    if options.overlap_param_gather:
        if not facts.distributed_optimizer:
            raise GrowError("--overlap-param-gather gathers the distributed optimizer's shards; drop --no-distributed-optimizer or it")
        if not overlap_grad:
            raise GrowError("--overlap-param-gather needs --overlap-grad-reduce (megatron overlaps both or neither)")
    if options.overlap_param_gather is None:
        overlap_param = device.overlap_param_gather and facts.distributed_optimizer and overlap_grad and facts.layout.dp > 1
    else:
        overlap_param = options.overlap_param_gather
    if options.grad_dtype is not None and options.grad_dtype not in GRAD_DTYPES:
        raise GrowError(f"--grad-dtype {options.grad_dtype!r}: choose one of {', '.join(GRAD_DTYPES)}")
    if options.grad_dtype == "bf16" and facts.dtype != "bf16":
        raise GrowError(f"--grad-dtype bf16 needs --dtype bf16 (this run trains in {facts.dtype})")
    summed = facts.microbatches > 1 or facts.layout.dp > 1
    grad_dtype = options.grad_dtype or ("bf16" if facts.dtype == "bf16" and not summed else "fp32")
    return GradSync(overlap_grad, overlap_param, options.bucket_size, grad_dtype)


def resolve_speed(options: PretrainOptions, device: DevicePolicy, ext: Extensions | None, facts: RunFacts) -> SpeedSettings:
    """The run's fusions and gradient handling; GrowError (one line) for what cannot run."""
    return SpeedSettings(_fusions(options, device, ext), _grad_sync(options, device, facts))
