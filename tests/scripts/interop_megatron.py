"""megatron-core side of the interop tests: save random models, or load checkpoints, and dump logits.

Usage (plain python, or torchrun for TP = world size): interop_megatron.py JOBS_JSON
JOBS_JSON: {"tokens": "tokens.pt", "jobs": [{"mode": "save", "shape": {...}, "ckpt": DIR,
"logits": FILE, "seed": 1}, {"mode": "load", "ckpt": DIR, "logits": FILE}, ...]}
Logits are gathered over TP, cut to the true vocabulary and saved by rank 0; the tokens must fit
every model's vocabulary and sequence length.

Saved models get every weight drawn with std 0.2 (norm gains around 1): megatron's own init
(std 0.02, unit gains) makes attention nearly uniform and every RMSNorm identical, which would
hide a RoPE mistake or swapped norms from a logits comparison.
"""

import json
import os
import sys

import torch


def _randomize(model, seed: int) -> None:
    """Redraw every weight (saves run at TP=1, so one generator covers the whole model)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "layernorm" in name or "layer_norm" in name:
                param.copy_(1.0 + 0.3 * noise)
            else:
                param.copy_(0.2 * noise)


def _logits(model, tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    model.eval()
    positions = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
    with torch.no_grad():
        logits = model(tokens, positions, None)
    return gather_from_tensor_model_parallel_region(logits)[..., :vocab]


def main() -> None:
    from grow_cli.checkpoint.metadata import CheckpointInfo, LineageStep
    from grow_cli.checkpoint.model_io import model_from_checkpoint, save_model_checkpoint
    from grow_cli.runtime.distributed import init_distributed, shutdown
    from grow_cli.runtime.model import build_gpt_model
    from grow_cli.shape import ModelShape

    spec = json.loads(open(sys.argv[1]).read())
    tokens = torch.load(spec["tokens"])
    runtime = init_distributed(tp=int(os.environ.get("WORLD_SIZE", "1")))
    for job in spec["jobs"]:
        if job["mode"] == "save":
            shape = ModelShape.from_dict(job["shape"])
            model = build_gpt_model(shape, runtime.layout)
            _randomize(model, job["seed"])
            info = CheckpointInfo(shape=shape, iteration=7, lineage=(LineageStep("pretrain"),))
            save_model_checkpoint(job["ckpt"], model, info)
        else:
            model, info = model_from_checkpoint(job["ckpt"], runtime.layout)
            shape = info.shape
        logits = _logits(model, tokens, shape.vocab)
        if runtime.rank == 0:
            torch.save(logits, job["logits"])
    shutdown()


if __name__ == "__main__":
    main()
