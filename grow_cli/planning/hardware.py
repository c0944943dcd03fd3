"""The accelerators a plan can be costed on: peak dense bf16 throughput and memory.

Peak figures are the vendors' dense (no sparsity) bf16 tensor-core numbers for the SXM parts;
the H200 has the H100's compute and more, faster memory. Memory is the total `nvidia-smi`
reports, in GiB; the CUDA context, NCCL buffers and allocator fragmentation take a few GiB of
it, so plans are checked against `usable_gib`.
"""

from __future__ import annotations

from dataclasses import dataclass

from grow_cli.errors import GrowError
RESERVED_GIB = 4.0  # CUDA context, communication buffers, allocator slack

# The model FLOPs utilisation plans are costed at (`grow plan --mfu` default, GPU-hours): Megatron's
# FLOP count over the bf16 dense peak. UNMEASURED: a placeholder until bench/gpu_check.sh measures
# the reference 1B shape at sequence 1024 on one H100/H200 with `grow pretrain`'s speed defaults;
# the measured figure and its run belong in docs/benchmarks.md, and then here.
PLANNED_MFU = 0.4


@dataclass(frozen=True)
class GPUSpec:
    name: str
    peak_flops: float  # dense bf16 FLOP/s
    memory_gib: float
    description: str

    @property
    def usable_gib(self) -> float:
        return self.memory_gib - RESERVED_GIB

    def hours(self, flops: float, mfu: float) -> float:
        """GPU-hours to execute `flops` model FLOPs at model FLOPs utilisation `mfu`."""
        return flops / (self.peak_flops * mfu) / 3600


GPUS: dict[str, GPUSpec] = {
    "h100": GPUSpec("h100", 989e12, 81559 / 1024, "NVIDIA H100 SXM 80GB"),
    "h200": GPUSpec("h200", 989e12, 143771 / 1024, "NVIDIA H200 SXM 141GB"),
    "a100": GPUSpec("a100", 312e12, 81920 / 1024, "NVIDIA A100 SXM 80GB"),
}


def gpu_spec(kind: str) -> GPUSpec:
    spec = GPUS.get(kind.lower())
    if spec is None:
        raise GrowError(f"unknown GPU kind {kind!r}; choose one of {', '.join(GPUS)}")
    return spec


def check_mfu(mfu: float) -> float:
    if not 0 < mfu <= 1:
        raise GrowError(f"--mfu {mfu} must be a fraction in (0, 1], e.g. 0.4 for 40% of peak")
    return mfu
