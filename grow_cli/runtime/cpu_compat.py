"""CPU compatibility for megatron-core: the ONLY place grow bends megatron to run without CUDA.

megatron-core supports no CPU path, yet CPU + gloo + fp32 is our test bench and demo. Without
CUDA, `activate()` makes the few CUDA-only calls megatron makes land on the CPU:

* a `TorchFunctionMode` rewrites `device="cuda"` / integer devices / `Tensor.cuda()` to CPU
  (default causal mask, pipeline token counters, DDP buffers, optimizer overflow flags, rotary);
* `Tensor.type()` (no argument) names CPU tensors as their CUDA twins ("torch.cuda.FloatTensor"):
  megatron's mixed-precision and distributed optimizers dispatch on that string;
* `torch.cuda.current_device()` answers `"cpu"`, `synchronize`/`empty_cache` become no-ops,
  `current_stream()` is the CPU stream (megatron-core 0.19's gradient reduce asks for it to wait
  on CUDA-graph events, which a CPU run never has);
* the CUDA RNG tracker stores CPU generator states, so `model_parallel_cuda_manual_seed`,
  `fork()` and checkpointed RNG states work.

With CUDA present `activate()` does nothing, so the production path is plain megatron-core.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from grow_cli.runtime.device import DevicePolicy

# fp32 (no bf16 matmuls worth having), gloo, host initialisation, no CUDA fusions, no overlapped
# reduce or parameter gather (gloo has no streams to overlap on), in-process data loading, no
# pinned memory.
CPU = DevicePolicy(
    cuda=False, dtype="fp32", backend="gloo", cpu_initialization=True, fusions=False, overlap_grad_reduce=False,
    overlap_param_gather=False, loader_workers=0, pin_memory=False, default_sequence_parallel=False,
)

_active = False


def cuda_present() -> bool:
    """The one CUDA probe of grow (`runtime.device.device_policy()` asks it)."""
    return torch.cuda.is_available()


def _to_cpu_device(device):
    if isinstance(device, int) or (isinstance(device, str) and device.startswith("cuda")):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class _CudaToCpu(TorchFunctionMode):
    """Rewrites every CUDA device argument to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return _cuda_type_name(func(args[0]))
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1 and not isinstance(args[1], (torch.dtype, torch.Tensor)):
            args = (args[0], _to_cpu_device(args[1]), *args[2:])
        return func(*args, **kwargs)


def _cuda_type_name(name: str) -> str:
    """'torch.FloatTensor' -> 'torch.cuda.FloatTensor' (sparse/quantized names unchanged)."""
    if name.startswith("torch.") and name.endswith("Tensor") and name.count(".") == 1:
        return "torch.cuda." + name[len("torch."):]
    return name


def _cpu_rng_state(*_args, **_kwargs) -> torch.Tensor:
    return torch.get_rng_state()


def _set_cpu_rng_state(state, *_args, **_kwargs) -> None:
    torch.set_rng_state(state)


def activate() -> bool:
    """Install the CPU shims when CUDA is absent; returns whether they are active."""
    global _active
    if _active or cuda_present():
        return _active
    from megatron.core.tensor_parallel import random as mp_random

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.empty_cache = lambda: None
    torch.cuda.current_stream = torch.cpu.current_stream
    torch.cuda.get_rng_state = _cpu_rng_state
    torch.cuda.set_rng_state = _set_cpu_rng_state
    torch.cuda.manual_seed = torch.manual_seed
    mp_random._get_cuda_rng_state = _cpu_rng_state
    mp_random._set_cuda_rng_state = _set_cpu_rng_state
    _CudaToCpu().__enter__()  # process-wide: stays on for the life of the process
    _active = True
    return True
