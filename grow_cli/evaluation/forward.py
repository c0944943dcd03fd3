"""Run a checkpoint's megatron GPTModel for evaluation: logits and the residual stream.

Every metric of `grow eval` comes from this one forward. The model is megatron-core's own
GPTModel loaded from the torch_dist checkpoint at the requested tensor-parallel degree; logits
are gathered across TP ranks (`runtime_gather_output`) so every rank sees the full vocabulary.

Scores use the tokenizer's vocabulary only (ids < shape.vocab): the output layer is padded
(grow: 128·8 rows at TP 1/2/4/8; Megatron-LM checkpoints: 128·TP), and those rows are no tokens.
Loaded at a layout with more rows than it was saved with, a checkpoint gets extra zero-filled
rows whose logits (0) would otherwise change every softmax; cutting them makes results identical at any TP and equal to what an
exported Hugging Face model computes.

Layer diagnostics need the PRE-NORM residual stream, captured during the same forward that
produces the logits (`grow_cli.runtime.residual`, shared with `grow distill`); `states[i]` is the
input of layer i, `states[L]` the input of the final norm.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from grow_cli.checkpoint.metadata import CheckpointInfo
from grow_cli.errors import GrowError
from grow_cli.runtime.distributed import Runtime
from grow_cli.runtime.residual import output_weight, residual_stream


@dataclass
class ForwardOutput:
    """One forward pass: `logits` [b, s, V] (float32, the tokenizer's vocabulary, gathered over TP)
    and, when captured, `states` [L + 1, b, s, h] (the residual stream; index 0 is the embedding
    output)."""

    logits: torch.Tensor
    states: torch.Tensor | None = None


class EvalModel:
    """A loaded checkpoint ready for evaluation forwards (no gradients, eval mode)."""

    def __init__(self, model, info: CheckpointInfo, runtime: Runtime, path: Path):
        self.model = model.eval()
        self.info = info
        self.runtime = runtime
        self.path = path

    @property
    def shape(self):
        return self.info.shape

    @property
    def num_layers(self) -> int:
        return self.info.shape.layers

    @property
    def seq_len(self) -> int:
        return self.info.shape.seq_len

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def tp(self) -> int:
        return self.runtime.layout.tp

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, capture_states: bool = False) -> ForwardOutput:
        """Logits (and optionally the residual stream) for `tokens` [b, s] (s <= seq_len)."""
        if tokens.size(1) > self.seq_len:
            raise ValueError(f"sequence of {tokens.size(1)} tokens exceeds the model's seq_len {self.seq_len}")
        tokens = tokens.to(self.device)
        positions = torch.arange(tokens.size(1), device=self.device).unsqueeze(0).expand_as(tokens)
        captured: list[torch.Tensor] = []
        with residual_stream(self.model, captured) if capture_states else nullcontext():
            logits = self.model(tokens, positions, None, runtime_gather_output=True)
        states = None
        if capture_states:
            # [s, b, h] each -> [L + 1, b, s, h]
            states = torch.stack([state.transpose(0, 1) for state in captured])
        return ForwardOutput(logits=logits[..., : self.shape.vocab].float(), states=states)

    @torch.no_grad()
    def final_norm(self, states: torch.Tensor) -> torch.Tensor:
        """The model's final RMSNorm applied to residual-stream states [..., h]."""
        return self.model.decoder.final_layernorm(states)

    @cached_property
    def output_weight(self) -> torch.Tensor:
        """W_U, the [V, h] LM head over the tokenizer's vocabulary (gathered across TP ranks once)."""
        weight = output_weight(self.model).detach()
        if self.tp > 1:
            from megatron.core import parallel_state

            pieces = [torch.empty_like(weight) for _ in range(self.tp)]
            torch.distributed.all_gather(pieces, weight.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
            weight = torch.cat(pieces, dim=0)
        return weight[: self.shape.vocab]


def load_eval_model(path: str | Path, runtime: Runtime, dtype: torch.dtype, *, tokenizer_vocab: int | None = None) -> EvalModel:
    """Build this rank's GPTModel for the checkpoint's shape at `runtime`'s layout and load it
    (`tokenizer_vocab`: the vocabulary of a Megatron-LM checkpoint whose args do not tell it)."""
    from grow_cli.checkpoint.model_io import model_from_checkpoint

    if runtime.layout.pp != 1:
        raise GrowError("grow eval runs at pipeline-parallel size 1; use --tp to split a large model")
    model, info = model_from_checkpoint(path, runtime.layout, dtype=dtype, tokenizer_vocab=tokenizer_vocab)
    return EvalModel(model, info, runtime, Path(path))
