"""What a training step optimises, separated from how the step runs.

megatron-core's schedules call a `forward_step_func(data_iterator, model)` that returns the
model's output and a loss function; with `calculate_per_token_loss=True` that loss function
returns `(loss_sum, num_tokens, report)` and megatron normalises the gradients by the number of
tokens of the whole global batch (across micro-batches and data-parallel ranks). An `Objective`
is exactly that contract, one micro-batch at a time:

    output, loss_fn = objective.forward_step(model, batch)
    loss_sum, num_tokens, report = loss_fn(output)      # called on the last pipeline stage only

`report` maps each of the objective's `metrics` to `tensor([sum, count])`; the loop sums both over
micro-batches, data-parallel ranks and pipeline stages and logs `sum / count` under each name.
The first metric is the one shown as "loss" (progress bar, validation, summary).

`LanguageModeling` (next-token cross-entropy) is what `grow pretrain` trains. `grow distill`
(spec §2, grow_cli/distill/objective.py) plugs into the same loop with its own Objective: its
`setup` loads the frozen teacher, its `forward_step` runs the student with hooks that collect
per-layer hidden states and the teacher on the same batch under `torch.no_grad()`, and its
`loss_fn` returns the per-layer logit-lens KL plus the hidden-state movement term as one summed
loss with its token count, reporting each term separately.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]


class Objective(Protocol):
    """One micro-batch forward and the loss megatron back-propagates."""

    metrics: tuple[str, ...]  # report keys; the first is "the loss"

    def setup(self, runtime) -> list[str]:
        """Build what the objective holds besides the trained model (collective, once per run, after
        the process groups exist); returns lines for the run's log."""
        ...

    def forward_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, LossFn]:
        """Run `model` (this rank's pipeline stage, wrapped) on `batch`; return (output, loss_fn).

        On a stage that is not the last, `output` is the hidden state sent downstream and
        `loss_fn` is never called.
        """
        ...


class LanguageModeling:
    """Next-token cross-entropy, summed over unmasked tokens (megatron's pretrain_gpt loss)."""

    metrics = ("lm loss",)

    def setup(self, runtime) -> list[str]:
        return []

    def forward_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, LossFn]:
        device = next(model.parameters()).device  # this rank's model lives where its batches go
        tokens = batch["tokens"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        position_ids = batch["position_ids"].to(device, non_blocking=True)
        loss_mask = batch["loss_mask"].to(device, non_blocking=True).float()
        # With labels GPTModel returns the per-token cross-entropy [b, s] (vocab-parallel on TP).
        output = model(tokens, position_ids, None, labels=labels)

        def loss_fn(per_token: torch.Tensor):
            loss_sum = torch.sum(per_token.float().view(-1) * loss_mask.view(-1))
            num_tokens = loss_mask.sum().to(torch.int)
            report = {self.metrics[0]: torch.stack([loss_sum.detach(), num_tokens.detach().float()])}
            return loss_sum, num_tokens, report

        return output, loss_fn

