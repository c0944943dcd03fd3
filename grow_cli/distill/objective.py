"""The self-distillation loss of spec §2 as an `Objective` of `grow pretrain`'s loop.

    L = L1 + λ·L2
    L1 = Σ_{l=0..L} w_l · KL(p_l ‖ p_target)
    L2 = Σ_{l=1..L} w_l · ‖h_l − h_{l−1}‖² / ‖h_{l−1}‖²
    w_l = exp(γ·l) / Σ_k exp(γ·k)

per token, summed over the unmasked tokens of the micro-batch (megatron normalises by the global
batch's token count). The spec numbers the decoder layers l = 0..L (our 0..layers-1) and h_l is the
PRE-norm output of layer l, as in `grow eval`'s diagnostics; p_l = softmax(W_U · final_norm(h_l))
is layer l's logit lens (the last layer's lens is the model's output) and p_target the output
distribution of the frozen original model, run on the same batch under `no_grad`. L2 starts at
l = 1: the first layer's step away from the embedding is not penalised, and its weight w_0 only
enters L1.

KL direction. `reverse` (default) is the formula as the spec writes it, KL(p_l ‖ p_target): the
expectation is under the layer's own distribution, so a shallow layer that cannot express the
teacher's whole distribution is pushed to put its mass where the teacher is confident
(mode-seeking) instead of being spread over everything the teacher allows (`forward`,
KL(p_target ‖ p_l), the classic distillation loss, mean-seeking). Both are exposed (`--kl`).

All K = layers lens distributions go through `grow_kernels.linear_divergence` in one call
(student rows layer-major, the teacher's final states shared by all K), vocabulary-parallel over
the TP group, so no [tokens, vocab] logits exist. Vocabulary: both distributions run over the
model's padded head, exactly as pretraining's cross-entropy does; the padding rows are the
teacher's too, so they carry no disagreement of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grow_cli.distill.config import DistillSettings
from grow_cli.runtime.residual import final_hidden, output_weight, residual_stream
from grow_cli.training.config import TrainConfig
from grow_cli.training.objective import LossFn
from grow_kernels import linear_divergence

METRICS = ("distill loss", "lens kl", "movement", "final kl")


def depth_weights(layers: int, gamma: float, device=None) -> torch.Tensor:
    """w_l = softmax(γ·l) over the decoder layers l = 0..layers-1 (float32)."""
    return torch.softmax(gamma * torch.arange(layers, dtype=torch.float32, device=device), dim=0)


@dataclass(frozen=True)
class DistillTerms:
    """Per-token terms, each [T]: L1, L2 and the last layer's KL to the teacher (a guard: the
    output distribution should stay close to the original's)."""

    lens: torch.Tensor
    movement: torch.Tensor
    final: torch.Tensor

    def loss(self, lam: float) -> torch.Tensor:
        return self.lens + lam * self.movement


def distill_terms(
    states: list[torch.Tensor],
    final_norm,
    head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    weights: torch.Tensor,
    direction: str,
    group=None,
) -> DistillTerms:
    """The loss terms of one micro-batch.

    states: the L + 1 pre-norm residual states [T, h] (embedding output, then each layer's);
    final_norm: the student's final RMSNorm; head: its LM head (this rank's vocabulary shard);
    teacher_hidden [T, h]: the teacher's final-normed states; teacher_head: its head shard;
    weights [L]: the depth weights; group: the TP group the heads are split over (None: whole).
    """
    layers = len(states) - 1
    tokens, width = states[0].shape
    hidden = final_norm(torch.stack(states[1:])).reshape(layers * tokens, width)
    kl = linear_divergence(
        hidden, head, teacher_hidden=teacher_hidden, teacher_head=teacher_head, direction=direction, group=group
    ).loss.view(layers, tokens)
    weights = weights.to(kl.device)
    lens = (weights[:, None] * kl.float()).sum(dim=0)
    movement = torch.zeros(tokens, dtype=torch.float32, device=kl.device)
    for layer in range(1, layers):
        previous, current = states[layer].float(), states[layer + 1].float()
        ratio = (current - previous).square().sum(dim=-1) / previous.square().sum(dim=-1)
        movement = movement + weights[layer] * ratio
    return DistillTerms(lens=lens, movement=movement, final=kl[-1].float())


class DistillObjective:
    """Self-distillation against a frozen copy of the starting checkpoint (see the module docstring)."""

    metrics = METRICS

    def __init__(self, config: TrainConfig, settings: DistillSettings):
        self.config = config
        self.settings = settings
        self.weights = depth_weights(config.shape.layers, settings.gamma)
        self.teacher = None
        self.group = None

    def setup(self, runtime) -> list[str]:
        """Build the teacher at the run's layout from the checkpoint (collective)."""
        from grow_cli.checkpoint.model_io import load_model_weights
        from grow_cli.dtypes import torch_dtype
        from grow_cli.runtime.model import build_gpt_model

        config = self.config
        teacher = build_gpt_model(config.shape, runtime.layout, dtype=torch_dtype(config.model.dtype),
                                  attention=config.model.attention)
        load_model_weights(teacher, self.settings.teacher, expect_shape=config.shape)
        return self.use_teacher(teacher, runtime)

    def use_teacher(self, teacher, runtime) -> list[str]:
        """Freeze `teacher` (this rank's GPTModel piece) and use it; returns the log line saying
        what it costs (benchmarks hand in one built from the student's own weights)."""
        from megatron.core import parallel_state

        from grow_cli.units import format_bytes

        self.teacher = teacher.eval().requires_grad_(False)
        self.group = parallel_state.get_tensor_model_parallel_group() if runtime.layout.tp > 1 else None
        weights = sum(p.numel() * p.element_size() for p in teacher.parameters())
        return [
            f"distill: teacher {self.settings.teacher} frozen in the same processes: {format_bytes(weights)} of weights "
            f"per rank, forward under no_grad (no gradients, no optimizer state); "
            f"λ={self.settings.lam:g}, γ={self.settings.gamma:g}, KL {self.settings.direction}"
        ]

    def forward_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, LossFn]:
        from megatron.core.utils import unwrap_model

        gpt = unwrap_model(model)
        device = next(gpt.parameters()).device
        tokens = batch["tokens"].to(device, non_blocking=True)
        position_ids = batch["position_ids"].to(device, non_blocking=True)
        loss_mask = batch["loss_mask"].to(device, non_blocking=True).float().t().reshape(-1)  # [s, b] order
        states: list[torch.Tensor] = []
        with residual_stream(gpt, states, detach=False), final_hidden(gpt):
            output = model(tokens, position_ids, None)
        with torch.no_grad(), final_hidden(self.teacher):
            teacher_hidden = self.teacher(tokens, position_ids, None)
        width = teacher_hidden.size(-1)

        def loss_fn(_output: torch.Tensor):
            terms = distill_terms(
                [state.reshape(-1, state.size(-1)) for state in states], gpt.decoder.final_layernorm,
                output_weight(gpt), teacher_hidden.reshape(-1, width), output_weight(self.teacher).detach(),
                self.weights, self.settings.direction, self.group,
            )
            states.clear()  # the graph holds what backward needs; the list need not
            count = loss_mask.sum()
            sums = {
                METRICS[0]: terms.loss(self.settings.lam), METRICS[1]: terms.lens, METRICS[2]: terms.movement,
                METRICS[3]: terms.final,
            }
            masked = {name: torch.sum(value * loss_mask) for name, value in sums.items()}
            report = {name: torch.stack([value.detach(), count.detach()]) for name, value in masked.items()}
            return masked[METRICS[0]], count.to(torch.int), report

        return output, loss_fn
