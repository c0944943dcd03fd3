"""`--verify`: run the source and the expanded model on the same held-out batch and compare.

Both models are real megatron-core GPTModels built from their checkpoints (TP=1, fp32), run one
after the other so only one is in memory. The batch is held-out text: the validation split of a
prepared `--data` prefix, else the start of the shipped Shakespeare corpus tokenized with GPT-2's
BPE; random token ids only when neither fits the model's vocabulary (said in the result).
Loss is next-token cross-entropy over the real vocabulary (padding rows excluded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from grow_cli.errors import GrowError
from grow_cli.shape import ModelShape

# Characters of the shipped corpus to tokenize: plenty for a few sequences, fast to encode.
_CORPUS_CHARS = 200_000


@dataclass(frozen=True)
class HeldOut:
    tokens: torch.Tensor  # [sequences, seq_len + 1]
    description: str


@dataclass(frozen=True)
class VerifyResult:
    tokens: str
    sequences: int
    seq_len: int
    loss_source: float
    loss_target: float
    max_abs_dlogit: float
    max_abs_logit: float

    @property
    def relative_dlogit(self) -> float:
        return self.max_abs_dlogit / max(self.max_abs_logit, 1e-30)


def _batch(ids: list[int], sequences: int, seq_len: int) -> torch.Tensor | None:
    n = min(sequences, len(ids) // (seq_len + 1))
    if n == 0:
        return None
    return torch.tensor(ids[: n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)


def _from_prefix(prefix: str, shape: ModelShape, sequences: int, seq_len: int) -> HeldOut:
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
        raise GrowError(f"the validation split of {prefix} has {len(ids)} tokens, fewer than one sequence of {seq_len + 1}")
    return HeldOut(batch, f"{info.prefix} valid split")


def _from_corpus(shape: ModelShape, sequences: int, seq_len: int) -> HeldOut | str:
    """Shipped corpus tokens, or the reason they cannot be used."""
    from grow_cli.data.corpus import shakespeare_files
    from grow_cli.data.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer()
        files = shakespeare_files()
    except GrowError as error:
        return str(error)
    if tokenizer.vocab_size > shape.vocab:
        return f"the model's vocab {shape.vocab} is smaller than {tokenizer.name}'s {tokenizer.vocab_size}"
    # a fixed text: enough to compare two models; only --data guarantees text the model never saw
    text = files[-1].read_text(encoding="utf-8", errors="replace")[:_CORPUS_CHARS]
    batch = _batch(tokenizer.encode(text), sequences, seq_len)
    if batch is None:
        return f"{files[-1].name} is shorter than one sequence"
    return HeldOut(batch, f"shipped corpus ({files[-1].name}, {tokenizer.name})")


def held_out_tokens(shape: ModelShape, data: str | None, sequences: int, seq_len: int, seed: int = 0) -> HeldOut:
    """The verification batch (see the module docstring for the order of preference)."""
    if data is not None:
        return _from_prefix(data, shape, sequences, seq_len)
    corpus = _from_corpus(shape, sequences, seq_len)
    if isinstance(corpus, HeldOut):
        return corpus
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, shape.vocab, (sequences, seq_len + 1), generator=generator)
    return HeldOut(tokens, f"random token ids ({corpus})")


@torch.no_grad()
def _logits_and_loss(path: Path, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    from grow_cli.checkpoint.model_io import model_from_checkpoint
    from grow_cli.layout import Layout

    model, info = model_from_checkpoint(path, Layout())
    model.eval()
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    positions = torch.arange(inputs.shape[1]).unsqueeze(0).expand_as(inputs)
    device = next(model.parameters()).device
    logits = model(inputs.to(device), positions.to(device), None)[..., : info.shape.vocab].float().cpu()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()
    del model
    return logits, loss


def verify_expansion(source: str | Path, output: str | Path, held_out: HeldOut) -> VerifyResult:
    """Loss of both models and the largest logit difference on `held_out` (needs init_distributed)."""
    logits_source, loss_source = _logits_and_loss(Path(source), held_out.tokens)
    logits_target, loss_target = _logits_and_loss(Path(output), held_out.tokens)
    return VerifyResult(
        tokens=held_out.description,
        sequences=held_out.tokens.shape[0],
        seq_len=held_out.tokens.shape[1] - 1,
        loss_source=loss_source,
        loss_target=loss_target,
        max_abs_dlogit=(logits_target - logits_source).abs().max().item(),
        max_abs_logit=logits_source.abs().max().item(),
    )
