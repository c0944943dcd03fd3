"""Two gloo ranks (DP=2): the token ids entering the model's embedding are the data layer's samples.

Usage: torchrun --nproc-per-node 2 train_tokens.py DATA_PREFIX OUT_DIR RESULT_PREFIX
Runs `pretrain()` with an objective that hooks the embedding, then rebuilds the dataset alone and
checks every micro-batch each rank trained on against samples in Megatron's order (micro-step j,
DP rank r -> samples [j*m*D + r*m, j*m*D + (r+1)*m)). Writes RESULT_PREFIX.<rank>.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from grow_cli.training.config import resolve_config
from grow_cli.training.options import PretrainOptions
from grow_cli.training.loop import pretrain
from grow_cli.training.objective import LanguageModeling

MICRO, GLOBAL, ITERS, SEQ = 2, 8, 3, 64


class RecordingLM(LanguageModeling):
    """The LM objective plus a record of what the embedding and the loss received in training."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self._hooked = False

    def forward_step(self, model, batch):
        from megatron.core.utils import unwrap_model

        if not self._hooked:
            embedding = unwrap_model(model).embedding.word_embeddings
            embedding.register_forward_pre_hook(self._record)
            self._hooked = True
        if model.training:  # not the final validation pass
            self.labels.append(batch["labels"].clone())
        return super().forward_step(model, batch)

    def _record(self, module, args) -> None:
        if module.training:
            self.inputs.append(args[0].detach().clone())


def main(prefix: str, out: str, result: str) -> None:
    options = PretrainOptions(
        data=prefix, out=out, hidden=64, ffn=176, layers=2, heads=4, seq_len=SEQ, iters=ITERS,
        global_batch=GLOBAL, micro_batch=MICRO, lr=1e-3, log_interval=1, eval_interval=1000, eval_iters=1,
        save_interval=1000, quiet=True,
    )
    config = resolve_config(options)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    objective = RecordingLM()
    pretrain(config, objective)

    from grow_cli.data.datasets import build_datasets

    train, _ = build_datasets(prefix, SEQ, train_samples=ITERS * GLOBAL, valid_samples=0, seed=config.seed)
    steps = ITERS * GLOBAL // (MICRO * world)
    mismatched = []
    for j in range(steps):
        first = j * MICRO * world + rank * MICRO
        expected = torch.stack([train[i]["tokens"] for i in range(first, first + MICRO)])
        expected_labels = torch.stack([train[i]["labels"] for i in range(first, first + MICRO)])
        if not (torch.equal(objective.inputs[j].cpu(), expected) and torch.equal(objective.labels[j], expected_labels)):
            mismatched.append(j)
    with open(f"{result}.{rank}.json", "w") as handle:
        json.dump({"micro_batches": len(objective.inputs), "expected": steps, "mismatched": mismatched,
                   "shifted": bool(torch.equal(objective.inputs[0][:, 1:].cpu(), objective.labels[0][:, :-1]))}, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
