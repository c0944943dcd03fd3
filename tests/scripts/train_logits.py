"""Two gloo ranks: one checkpoint's logits at TP=2 and at TP=1 (DP=2), over the real vocabulary.

Usage: torchrun --nproc-per-node 2 train_logits.py CHECKPOINT RESULT_JSON
Writes {"max_abs_diff": ..., "vocab": ..., "padded": [tp2, tp1]} from rank 0.
"""

from __future__ import annotations

import json
import sys

import torch

from grow_cli.checkpoint.metadata import read_info
from grow_cli.checkpoint.model_io import model_from_checkpoint
from grow_cli.runtime.distributed import init_distributed, shutdown


def logits(checkpoint: str, tp: int, tokens: torch.Tensor) -> torch.Tensor:
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    runtime = init_distributed(tp=tp, pp=1, seed=5)
    model, _ = model_from_checkpoint(checkpoint, runtime.layout)
    model.eval()
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        out = model(tokens, positions, None)
        return gather_from_tensor_model_parallel_region(out).float()


def main(checkpoint: str, result: str) -> None:
    shape = read_info(checkpoint).shape
    tokens = torch.randint(0, shape.vocab, (2, shape.seq_len), generator=torch.Generator().manual_seed(3))
    at_tp2 = logits(checkpoint, 2, tokens)
    at_tp1 = logits(checkpoint, 1, tokens)
    vocab = shape.vocab
    diff = (at_tp2[..., :vocab] - at_tp1[..., :vocab]).abs().max().item()
    if torch.distributed.get_rank() == 0:
        with open(result, "w") as handle:
            json.dump({"max_abs_diff": diff, "scale": at_tp1[..., :vocab].abs().max().item(), "vocab": vocab,
                       "padded": [at_tp2.shape[-1], at_tp1.shape[-1]]}, handle)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
