"""Process groups and model-parallel state, the same way on a GPU cluster and on a laptop.

Under torchrun (or srun + torchrun) the rendezvous comes from the environment; a plain
`grow ...` call runs as a world of one. CUDA gets NCCL and one device per local rank; without
CUDA the CPU compatibility layer is switched on and gloo carries the collectives.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from grow_cli.errors import GrowError
from grow_cli.layout import Layout
from grow_cli.runtime.device import DevicePolicy, device_policy


@dataclass(frozen=True)
class Runtime:
    """What this process is: its rank, the world, the device, its policy and the layout it runs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    layout: Layout
    policy: DevicePolicy  # every CUDA-vs-CPU choice above the runtime reads it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(tp: int = 1, pp: int = 1, seed: int = 1234) -> Runtime:
    """Initialise torch.distributed and megatron's parallel state for TP x PP x DP.

    Idempotent: a second call with the same layout returns the current runtime, with a
    different layout it rebuilds the model-parallel groups (used by tests and `eval`).
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from grow_cli.runtime import cpu_compat, env
    from grow_cli.runtime.lifetime import reap_children_with_parent

    reap_children_with_parent()  # megatron's forked checkpoint writers die with this process
    policy = device_policy()
    cpu_compat.activate()  # a no-op with CUDA
    if not torch.distributed.is_initialized():
        world, rank = env.world_size(), env.rank()
        # A world of one needs no rendezvous: an in-process store cannot race for a TCP port.
        store = torch.distributed.HashStore() if world == 1 and "MASTER_ADDR" not in os.environ else None
        if policy.cuda:
            torch.cuda.set_device(env.local_rank())
        torch.distributed.init_process_group(
            backend=policy.backend,
            world_size=world,
            rank=rank,
            store=store,
            timeout=datetime.timedelta(minutes=30),
        )
    world = torch.distributed.get_world_size()
    if world % (tp * pp):
        raise GrowError(
            f"world size {world} is not divisible by TP x PP = {tp} x {pp}; "
            f"launch a multiple of {tp * pp} processes or change --tp/--pp"
        )
    if parallel_state.model_parallel_is_initialized():
        same = (
            parallel_state.get_tensor_model_parallel_world_size() == tp
            and parallel_state.get_pipeline_model_parallel_world_size() == pp
        )
        if not same:
            parallel_state.destroy_model_parallel()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
        )
    _seed_host_streams(seed)
    model_parallel_cuda_manual_seed(seed)
    local_rank = env.local_rank()
    device = torch.device("cuda", torch.cuda.current_device()) if policy.cuda else torch.device("cpu")
    layout = Layout(tp=tp, pp=pp, dp=world // (tp * pp))
    return Runtime(torch.distributed.get_rank(), world, local_rank, device, layout, policy)


def _seed_host_streams(seed: int) -> None:
    """Python's and NumPy's global streams from the run seed, as Megatron-LM seeds them: left to
    the interpreter's random start they differ between any two launches, so a resumed run could
    never continue them the way an uninterrupted one does (torch and the tracker are seeded by
    `model_parallel_cuda_manual_seed`)."""
    import random

    import numpy

    random.seed(seed)
    numpy.random.seed(seed % 2**32)


def shutdown() -> None:
    """Tear down model-parallel state and the process group (end of a command)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
