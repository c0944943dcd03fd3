"""One process: megatron's DistributedOptimizer (torch Adam) resumed from a `fully_reshardable`
checkpoint, first as the installed megatron-core does it, then with grow's resume fix.

Usage: python optimizer_resume.py WORKDIR RESULT_JSON
For each of "megatron" and "fixed": 2 Adam steps, save model + optimizer, a 3rd step; a fresh
model and optimizer (other seed) load the checkpoint and take the same 3rd step. Writes
{variant: {"error": str | None, "steps": [...], "distinct_steps": n, "params": n,
"max_abs_diff": float | None}} (the resumed weights against the uninterrupted ones).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from grow_cli.runtime import megatron_compat
from grow_cli.runtime.distributed import init_distributed, shutdown
from grow_cli.runtime.model import build_gpt_model
from grow_cli.shape import ModelShape
from grow_cli.training.checkpointing import OPTIMIZER_METADATA, ensure_optimizer_state

SHAPE = ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=2, head_dim=16, vocab=1000, seq_len=32)


def build(runtime, seed: int):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    gpt = build_gpt_model(SHAPE, runtime.layout)
    ddp = DistributedDataParallel(
        config=gpt.config,
        ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=True),
        module=gpt,
    )
    config = OptimizerConfig(optimizer="adam", lr=1e-2, use_distributed_optimizer=True, loss_scale=1.0,
                             params_dtype=torch.float32, clip_grad=1.0)
    return gpt, ddp, get_megatron_optimizer(config, [ddp])


def train_step(gpt, ddp, optimizer, index: int) -> None:
    from megatron.core.distributed import finalize_model_grads

    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    tokens = torch.randint(0, SHAPE.vocab, (2, SHAPE.seq_len), generator=torch.Generator().manual_seed(index))
    positions = torch.arange(SHAPE.seq_len).unsqueeze(0).expand_as(tokens)
    gpt(tokens, positions, None, labels=tokens).sum().backward()
    finalize_model_grads([ddp])
    assert optimizer.step()[0]


def request(gpt, optimizer, loading: bool) -> dict:
    model_state = gpt.sharded_state_dict()
    return {"model": model_state,
            "optimizer": optimizer.sharded_state_dict(model_state, is_loading=loading, metadata=OPTIMIZER_METADATA)}


def resume(runtime, checkpoint: Path) -> dict:
    from megatron.core import dist_checkpointing

    gpt, ddp, optimizer = build(runtime, seed=1)
    for index in (1, 2):
        train_step(gpt, ddp, optimizer, index)
    checkpoint.mkdir(parents=True)
    dist_checkpointing.save(request(gpt, optimizer, loading=False), str(checkpoint))
    train_step(gpt, ddp, optimizer, 3)
    expected = {name: tensor.detach().clone() for name, tensor in gpt.state_dict().items() if tensor is not None}

    gpt, ddp, optimizer = build(runtime, seed=2)
    ensure_optimizer_state(optimizer)  # what grow does before loading
    try:
        loaded = dist_checkpointing.load(request(gpt, optimizer, loading=True), str(checkpoint))
        gpt.load_state_dict(loaded["model"])
        optimizer.load_state_dict(loaded["optimizer"])
    except Exception as error:  # the unfixed release's failure is the result
        return {"error": f"{type(error).__name__}: {error}", "steps": [], "distinct_steps": 0, "params": 0,
                "max_abs_diff": None}
    state = optimizer.optimizer.state
    steps = [state[p]["step"] for group in optimizer.optimizer.param_groups for p in group["params"]]
    result = {"error": None, "steps": [float(s) for s in steps], "distinct_steps": len({id(s) for s in steps}),
              "params": len(steps)}
    train_step(gpt, ddp, optimizer, 3)
    actual = gpt.state_dict()
    result["max_abs_diff"] = max((actual[name] - tensor).abs().max().item() for name, tensor in expected.items()
                                 if tensor.is_floating_point())
    return result


def main(workdir: str, out: str) -> None:
    runtime = init_distributed(tp=1, pp=1)
    results = {"megatron": resume(runtime, Path(workdir) / "megatron")}
    megatron_compat.apply()
    results["fixed"] = resume(runtime, Path(workdir) / "fixed")
    Path(out).write_text(json.dumps(results))
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
