"""megatron-core side of the expansion tests: make source checkpoints, re-save them at another
layout, and run checkpoints (logits at any TP, loss through the pipeline schedule at any TP/PP).

Usage: expand_models.py JOBS.json   (plain python for TP=PP=1, torchrun for more ranks)
JOBS.json: {"tp": 1, "pp": 1, "jobs": [
    {"op": "make", "shape": {...ModelShape...}, "seed": 0, "out": DIR},
    {"op": "resave", "src": DIR, "out": DIR},
    {"op": "logits", "ckpt": DIR, "out": FILE},
    {"op": "loss", "ckpt": DIR, "out": FILE}]}
"""

import json
import sys

import torch

from grow_cli.checkpoint.metadata import CheckpointInfo
from grow_cli.checkpoint.model_io import model_from_checkpoint, save_model_checkpoint
from grow_cli.runtime.distributed import init_distributed, shutdown
from grow_cli.runtime.model import build_gpt_model
from grow_cli.shape import ModelShape

BATCH = 2


def _tokens(shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, shape.vocab, (BATCH, shape.seq_len + 1), generator=generator)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def make(job: dict, runtime) -> None:
    """A model with random weights and random RMSNorm gains (so norm scaling is exercised)."""
    shape = ModelShape.from_dict(job["shape"])
    torch.manual_seed(job["seed"])
    model = build_gpt_model(shape, runtime.layout)
    generator = torch.Generator().manual_seed(job["seed"] + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))
    save_model_checkpoint(job["out"], model, CheckpointInfo(shape=shape), force=True)


def resave(job: dict, runtime) -> None:
    model, info = model_from_checkpoint(job["src"], runtime.layout)
    save_model_checkpoint(job["out"], model, info, force=True)


@torch.no_grad()
def logits(job: dict, runtime) -> None:
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    model, info = model_from_checkpoint(job["ckpt"], runtime.layout)
    model.eval()
    tokens, _ = _tokens(info.shape)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    out = gather_from_tensor_model_parallel_region(model(tokens, positions, None))[..., : info.shape.vocab]
    if runtime.rank == 0:
        torch.save(out, job["out"])


@torch.no_grad()
def loss(job: dict, runtime) -> None:
    """Mean next-token loss through megatron's pipeline schedule (forward only)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    model, info = model_from_checkpoint(job["ckpt"], runtime.layout)
    model.eval()
    tokens, labels = _tokens(info.shape)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        output = model(batch["tokens"], batch["positions"], None, labels=batch["labels"])

        def loss_func(output_tensor):
            total = output_tensor.float().sum()
            count = torch.tensor(output_tensor.numel(), dtype=torch.int)
            return total, count, {"loss": torch.stack([total, count.float()])}

        return output, loss_func

    batch = {"tokens": tokens, "positions": positions, "labels": labels}
    reports = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([batch]),
        model=[model],
        num_microbatches=1,
        seq_length=tokens.shape[1],
        micro_batch_size=BATCH,
        forward_only=True,
    )
    if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
        total, count = reports[0]["loss"].tolist()
        with open(job["out"], "w") as handle:
            json.dump({"loss": total / count}, handle)


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    runtime = init_distributed(tp=spec.get("tp", 1), pp=spec.get("pp", 1))
    for job in spec["jobs"]:
        {"make": make, "resave": resave, "logits": logits, "loss": loss}[job["op"]](job, runtime)
    shutdown()


if __name__ == "__main__":
    main()
