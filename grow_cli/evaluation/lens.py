"""Logit lens: every residual-stream state read out through the model's own final norm and head.

logits_l = W_U · final_norm(S_l) for each state S_0 (embedding) .. S_L (last layer's output; its
lens IS the model's output). Per state: cross-entropy and perplexity of the next token, next-token
accuracy (argmax), entropy of the lens distribution and KL(final ‖ layer). The per-layer LAMBADA
readout scores lm-eval's lambada_openai requests at every state: a document counts as correct at
layer l when layer l's greedy prediction reproduces every token of the target word.

All statistics come from the fused op `grow_kernels.linear_divergence` (every state against the
labels and against the final state as teacher), which streams vocabulary tiles with an online
log-sum-exp, so [states, tokens, vocab] logits never exist. Under tensor parallelism each rank
scores a contiguous slice of the tokens against the gathered head and the per-layer sums are
all-reduced.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from grow_cli.evaluation.forward import EvalModel
from grow_kernels import TokenStats, linear_divergence


@dataclass(frozen=True)
class LensLayer:
    """The lens at one state; `layer` -1 is the embedding, l the output of decoder layer l."""

    layer: int
    loss: float
    ppl: float
    accuracy: float
    entropy: float
    kl: float


@dataclass(frozen=True)
class LastWordLayer:
    """Per-layer LAMBADA: last-word accuracy and perplexity (exp of minus the mean log-likelihood)."""

    layer: int
    acc: float
    ppl: float


def lens_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, reference: int = -1,
               token_chunk: int = 512, vocab_chunk: int = 8192) -> TokenStats:
    """Statistics of every state's lens: hidden [S, T, h] (normalised), targets [T]; each field
    comes back [S, T], `kl` being KL(state `reference`'s lens ‖ each state's lens)."""
    states, tokens, width = hidden.shape
    stats = linear_divergence(
        hidden.reshape(states * tokens, width), weight, labels=targets.repeat(states), teacher_hidden=hidden[reference],
        teacher_head=weight, direction="forward", token_chunk=token_chunk, vocab_chunk=vocab_chunk,
    )
    return TokenStats(*(getattr(stats, name).view(states, tokens) for name in TokenStats.__dataclass_fields__))


class _Sums:
    """Per-state running sums, reduced across TP ranks at the end."""

    def __init__(self, num_states: int, columns: int, device: torch.device):
        self.values = torch.zeros(num_states, columns, dtype=torch.float64, device=device)
        self.count = 0

    def reduced(self, model: EvalModel) -> tuple[torch.Tensor, int]:
        values = self.values.clone()
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=values.device)
        if model.tp > 1:
            from megatron.core import parallel_state

            group = parallel_state.get_tensor_model_parallel_group()
            torch.distributed.all_reduce(values, group=group)
            torch.distributed.all_reduce(count, group=group)
        return values.cpu(), int(count.item())


def _rank_slice(model: EvalModel, total: int) -> slice:
    """The contiguous part of `total` items this TP rank scores."""
    if model.tp == 1:
        return slice(0, total)
    from megatron.core import parallel_state

    rank = parallel_state.get_tensor_model_parallel_rank()
    per = math.ceil(total / model.tp)
    return slice(min(rank * per, total), min((rank + 1) * per, total))


class LogitLens:
    """Accumulates per-state lens statistics over batches of full sequences."""

    def __init__(self, model: EvalModel, token_chunk: int = 512, vocab_chunk: int = 8192):
        self.model = model
        self.token_chunk = token_chunk
        self.vocab_chunk = vocab_chunk
        self.sums = _Sums(model.num_layers + 1, 4, model.device)  # nll, correct, entropy, kl

    def add(self, states: torch.Tensor, targets: torch.Tensor) -> None:
        """states [L + 1, b, s, h], targets [b, s] (next tokens). Normalised one token tile at a
        time, so no second copy of the whole residual stream is made."""
        flat = states.reshape(states.size(0), -1, states.size(-1))
        mine = _rank_slice(self.model, flat.size(1))
        labels = targets.reshape(-1).to(flat.device)
        for start in range(mine.start, mine.stop, self.token_chunk):
            tile = slice(start, min(start + self.token_chunk, mine.stop))
            hidden = self.model.final_norm(flat[:, tile])
            stats = lens_stats(
                hidden, self.model.output_weight, labels[tile], token_chunk=self.token_chunk, vocab_chunk=self.vocab_chunk
            )
            correct = (stats.argmax == labels[tile]).double()
            columns = (stats.nll.double(), correct, stats.entropy.double(), stats.kl.double())
            self.sums.values += torch.stack([c.sum(dim=1) for c in columns], dim=1)
        self.sums.count += mine.stop - mine.start

    def result(self) -> list[LensLayer]:
        values, count = self.sums.reduced(self.model)
        mean = values / max(count, 1)
        return [
            LensLayer(layer=index - 1, loss=row[0], ppl=math.exp(row[0]), accuracy=row[1], entropy=row[2], kl=row[3])
            for index, row in enumerate(mean.tolist())
        ]


def last_word_by_layer(
    model: EvalModel,
    requests: list[tuple[list[int], list[int]]],
    batch_size: int,
    token_chunk: int = 512,
    vocab_chunk: int = 8192,
) -> list[LastWordLayer]:
    """Per-state LAMBADA accuracy/perplexity of (context tokens, target tokens) requests.

    Requests are truncated on the left to the model's seq_len like the lm-eval adapter does, and
    right-padded in batches (causal attention: padding never influences scored positions).
    """
    states_count = model.num_layers + 1
    sums = _Sums(states_count, 2, model.device)  # correct, log-likelihood
    for start in range(0, len(requests), batch_size):
        batch = [(c + t)[-(model.seq_len + 1) :] for c, t in requests[start : start + batch_size]]
        target_lengths = [len(t) for _, t in requests[start : start + batch_size]]
        width = max(len(seq) - 1 for seq in batch)
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        for row, seq in enumerate(batch):
            tokens[row, : len(seq) - 1] = torch.tensor(seq[:-1])
        states = model.forward(tokens, capture_states=True).states
        mine = _rank_slice(model, len(batch))
        for row in range(mine.start, mine.stop):
            seq, length = batch[row], target_lengths[row]
            positions = torch.arange(len(seq) - 1 - length, len(seq) - 1, device=states.device)
            hidden = model.final_norm(states[:, row, positions])
            targets = torch.tensor(seq[-length:], device=hidden.device)
            stats = lens_stats(hidden, model.output_weight, targets, token_chunk=token_chunk, vocab_chunk=vocab_chunk)
            correct = (stats.argmax == targets).all(dim=1).double()
            loglik = -stats.nll.double().sum(dim=1)
            sums.values += torch.stack([correct, loglik], dim=1)
        sums.count += mine.stop - mine.start
    values, count = sums.reduced(model)
    mean = values / max(count, 1)
    return [LastWordLayer(layer=i - 1, acc=row[0], ppl=math.exp(-row[1])) for i, row in enumerate(mean.tolist())]


def lens_to_json(rows: list[LensLayer] | list[LastWordLayer]) -> list[dict]:
    return [asdict(row) for row in rows]
