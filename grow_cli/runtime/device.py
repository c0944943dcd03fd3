"""What differs between a CUDA process and a CPU one, decided in one place.

Code above the runtime never asks torch whether CUDA is there: it reads a `DevicePolicy`,
the process's (`device_policy()`, also `Runtime.policy`) or the one of the machine a job will
run on (`CUDA`, for `grow slurm`). The production values are the defaults here; the CPU values
are a CPU accommodation and live in `cpu_compat` with the probe. No torch import at module scope:
`grow slurm` resolves a CUDA run without loading torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePolicy:
    cuda: bool = True
    dtype: str = "bf16"  # default training/eval precision
    backend: str = "nccl"  # torch.distributed backend
    cpu_initialization: bool = False  # megatron initialises weights on the host
    fusions: bool = True  # megatron's fused kernels (runtime/fusions.py): torch.compile'd or TE, CUDA only
    overlap_grad_reduce: bool = True  # DDP overlaps the gradient reduce with backward
    overlap_param_gather: bool = True  # the distributed optimizer's all-gather overlaps the next forward
    loader_workers: int = 2  # prefetching data-loader processes; the order does not depend on it
    pin_memory: bool = True
    default_sequence_parallel: bool = True  # with TP > 1 and Transformer Engine layers


CUDA = DevicePolicy()


@functools.cache
def device_policy() -> DevicePolicy:
    """This process's policy: CUDA when a GPU is visible, else the CPU compatibility layer's."""
    from grow_cli.runtime import cpu_compat

    return CUDA if cpu_compat.cuda_present() else cpu_compat.CPU
