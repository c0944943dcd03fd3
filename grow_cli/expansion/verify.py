"""`--verify`: run the source and the expanded model on the same held-out tokens and compare.

Both models are real megatron-core GPTModels built from their checkpoints (TP=1, fp32), run one
after the other so only one is in memory. The tokens are held-out text: the validation split of a
prepared `--data` prefix, else the shipped Shakespeare corpus's last work tokenized with GPT-2's
BPE; random token ids only when neither fits the model's vocabulary (said in the result).
Loss is next-token cross-entropy over the real vocabulary (padding rows excluded).

The loss jump of a non-exact operator is a small difference of two noisy means, so it is measured
on many tokens (`--verify-tokens`; a few thousand understated AKI's cost by 40%, docs/benchmarks.md)
and reported with its standard error over sequences. Many tokens must not mean [tokens, vocab]
logits in memory (16 GB for 32K tokens of a 128K vocabulary): the sequences go through the model
in micro-batches whose logits fit `LOGITS_BYTES`, and each pass keeps only per-sequence mean
losses plus the first micro-batch's logits, against which the second model's max |Δlogit| is taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from grow_cli.errors import GrowError
from grow_cli.shape import ModelShape

# Logits of one micro-batch (fp32): bounds the memory of a pass whatever the token count.
LOGITS_BYTES = 256 * 2**20


@dataclass(frozen=True)
class HeldOut:
    """Disjoint sequences of held-out text, and how many tokens were asked for."""

    tokens: torch.Tensor  # [sequences, seq_len + 1]: inputs and their next-token labels
    description: str
    requested: int

    @property
    def evaluated(self) -> int:
        return self.tokens.shape[0] * (self.tokens.shape[1] - 1)

    @property
    def shortfall(self) -> str | None:
        """A line saying the source held fewer tokens than asked (None when it held enough)."""
        if self.evaluated >= self.requested:
            return None
        return (f"{self.description} holds {self.evaluated:,} tokens, fewer than the {self.requested:,} asked for: "
                "measured on all of them")


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-sequence differences and its standard error (sample std / sqrt(n); None for n = 1)."""

    mean: float
    stderr: float | None


def paired_difference(source: torch.Tensor, target: torch.Tensor) -> PairedDifference:
    """Both models saw the same sequences, so the difference is paired: its spread over sequences is
    much smaller than either loss's, and it is what says how far the measured jump can be trusted."""
    diff = target.double() - source.double()
    n = diff.numel()
    stderr = (diff.std(correction=1) / math.sqrt(n)).item() if n > 1 else None
    return PairedDifference(diff.mean().item(), stderr)


@dataclass(frozen=True)
class Pass:
    """What one model's pass over the held-out tokens keeps."""

    losses: torch.Tensor  # [sequences] mean next-token loss of each sequence
    first_logits: torch.Tensor  # [micro-batch, seq_len, vocab] of the first micro-batch


@dataclass(frozen=True)
class VerifyResult:
    held_out: str
    sequences: int
    seq_len: int
    tokens: int
    tokens_requested: int
    shortfall: str | None
    loss_source: float
    loss_target: float
    delta_loss: float
    delta_loss_stderr: float | None
    max_abs_dlogit: float
    max_abs_logit: float
    dlogit_tokens: int  # tokens of the first micro-batch, over which max |Δlogit| is taken

    @property
    def relative_dlogit(self) -> float:
        return self.max_abs_dlogit / max(self.max_abs_logit, 1e-30)

    def to_json(self) -> dict:
        return {
            "held_out": self.held_out, "tokens": self.tokens, "tokens_requested": self.tokens_requested,
            "shortfall": self.shortfall, "sequences": self.sequences, "seq_len": self.seq_len,
            "loss_source": self.loss_source, "loss_target": self.loss_target,
            "delta_loss": self.delta_loss, "delta_loss_stderr": self.delta_loss_stderr,
            "max_abs_dlogit": self.max_abs_dlogit, "max_abs_logit": self.max_abs_logit,
            "dlogit_tokens": self.dlogit_tokens,
        }


def _batch(ids: list[int], sequences: int, seq_len: int) -> torch.Tensor | None:
    """Up to `sequences` disjoint windows of seq_len + 1 ids; one shorter window when the ids hold
    less than a full one (a tiny split is measured, not refused); None below two ids."""
    n = min(sequences, len(ids) // (seq_len + 1))
    if n == 0:
        if len(ids) < 2:
            return None
        n, seq_len = 1, len(ids) - 1
    return torch.tensor(ids[: n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)


def _from_prefix(prefix: str, shape: ModelShape, sequences: int, seq_len: int) -> torch.Tensor:
    from grow_cli.data.datasets import read_data_info, tokens_of

    info = read_data_info(prefix)
    info.check_vocab(shape.vocab)
    split = info.split_prefix("valid")
    ids: list[int] = []
    for doc in range(info.valid.documents):
        ids += tokens_of(split, doc).tolist()
        if len(ids) >= sequences * (seq_len + 1):
            break
    batch = _batch(ids, sequences, seq_len)
    if batch is None:
        raise GrowError(f"the validation split of {prefix} has {len(ids)} tokens; prepare it with a larger --valid-fraction")
    return batch


def _from_corpus(shape: ModelShape, sequences: int, seq_len: int) -> tuple[torch.Tensor, str] | str:
    """Shipped corpus tokens and their description, or the reason they cannot be used."""
    from grow_cli.data.corpus import shakespeare_files
    from grow_cli.data.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer()
        files = shakespeare_files()
    except GrowError as error:
        return str(error)
    if tokenizer.vocab_size > shape.vocab:
        return f"the model's vocab {shape.vocab} is smaller than {tokenizer.name}'s {tokenizer.vocab_size}"
    # a fixed text (52K GPT-2 tokens): enough to compare two models; only --data guarantees text the model never saw
    text = files[-1].read_text(encoding="utf-8", errors="replace")
    batch = _batch(tokenizer.encode(text), sequences, seq_len)
    if batch is None:
        return f"{files[-1].name} is shorter than two tokens"
    return batch, f"shipped corpus ({files[-1].name}, {tokenizer.name})"


def held_out_tokens(shape: ModelShape, data: str | None, tokens: int, seq_len: int, seed: int = 0) -> HeldOut:
    """At least `tokens` held-out tokens (fewer when the source has fewer; see `HeldOut.shortfall`),
    as sequences of `seq_len` (see the module docstring for the order of preference)."""
    seq_len = min(seq_len, tokens)
    sequences = -(-tokens // seq_len)
    if data is not None:
        return HeldOut(_from_prefix(data, shape, sequences, seq_len), f"{data} valid split", tokens)
    corpus = _from_corpus(shape, sequences, seq_len)
    if not isinstance(corpus, str):
        return HeldOut(*corpus, tokens)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, shape.vocab, (sequences, seq_len + 1), generator=generator)
    return HeldOut(ids, f"random token ids ({corpus})", tokens)


def micro_batch_for(seq_len: int, vocab: int) -> int:
    """Sequences per forward pass whose fp32 logits fit LOGITS_BYTES (at least one)."""
    return max(1, LOGITS_BYTES // (seq_len * vocab * 4))


def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, vocab: int, micro_batch: int) -> Pass:
    """Per-sequence mean losses of `forward` (inputs [b, s] -> logits [b, s, >= vocab]) over `tokens`,
    `micro_batch` sequences at a time, and the logits of the first micro-batch."""
    losses, first = [], None
    for start in range(0, tokens.shape[0], micro_batch):
        chunk = tokens[start:start + micro_batch]
        labels = chunk[:, 1:]
        logits = forward(chunk[:, :-1])[..., :vocab].float()
        per_token = F.cross_entropy(logits.reshape(-1, vocab), labels.to(logits.device).reshape(-1), reduction="none")
        losses.append(per_token.view(labels.shape).mean(dim=1).cpu())
        if first is None:
            first = logits.cpu()
        del logits, per_token
    return Pass(torch.cat(losses), first)


@torch.no_grad()
def checkpoint_pass(path: Path, tokens: torch.Tensor) -> Pass:
    from grow_cli.checkpoint.model_io import model_from_checkpoint
    from grow_cli.layout import Layout

    model, info = model_from_checkpoint(path, Layout())
    model.eval()
    device = next(model.parameters()).device

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(inputs.shape[1]).unsqueeze(0).expand_as(inputs)
        return model(inputs.to(device), positions.to(device), None)

    vocab = info.shape.vocab
    result = evaluate(forward, tokens, vocab, micro_batch_for(tokens.shape[1] - 1, info.shape.padded_vocab()))
    del model
    return result


def verify_expansion(source: str | Path, output: str | Path, held_out: HeldOut) -> VerifyResult:
    """Loss of both models, their paired difference and the largest logit difference (needs init_distributed)."""
    first = checkpoint_pass(Path(source), held_out.tokens)
    second = checkpoint_pass(Path(output), held_out.tokens)
    difference = paired_difference(first.losses, second.losses)
    return VerifyResult(
        held_out=held_out.description,
        sequences=held_out.tokens.shape[0],
        seq_len=held_out.tokens.shape[1] - 1,
        tokens=held_out.evaluated,
        tokens_requested=held_out.requested,
        shortfall=held_out.shortfall,
        loss_source=first.losses.double().mean().item(),
        loss_target=second.losses.double().mean().item(),
        delta_loss=difference.mean,
        delta_loss_stderr=difference.stderr,
        max_abs_dlogit=(second.first_logits - first.first_logits).abs().max().item(),
        max_abs_logit=first.first_logits.abs().max().item(),
        dlogit_tokens=first.first_logits.shape[0] * first.first_logits.shape[1],
    )
