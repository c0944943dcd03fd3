"""The validation text `grow eval` measures perplexity and layer diagnostics on.

Two sources give the same thing, a token stream with EOS after every document:
* `--data PREFIX`: the `_valid` split `grow data prepare` wrote (megatron indexed dataset), with
  the tokenizer its sidecar names;
* `--text FILE...`: plain text files, one document each, encoded with the chosen tokenizer the
  way `prepare` encodes documents.

A prepared split is memory-mapped, not loaded: `prepare` writes documents back to back, so the
`.bin` file of megatron's indexed dataset IS the token stream (checked against the `.idx`
pointers), and a validation split of billions of tokens costs no memory.

Bits per byte needs the byte length of what is predicted: each target token's UTF-8 bytes from
the tokenizer (EOS is a document boundary, not text: 0 bytes), so `Σ bytes` is exactly the
length of the documents' text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy

from grow_cli.data.tokenizer import Tokenizer
from grow_cli.errors import GrowError


@dataclass(frozen=True)
class EvalText:
    """A token stream (documents joined, EOS after each) and where it came from."""

    source: str
    tokens: numpy.ndarray  # integer ids (a memory map for prepared data)
    tokenizer: Tokenizer

    @property
    def predicted(self) -> int:
        """Tokens that get predicted: all but the first."""
        return len(self.tokens) - 1

    def windows(self, seq_len: int) -> Iterator[numpy.ndarray]:
        """Non-overlapping int64 windows of up to seq_len + 1 tokens: inputs w[:-1], targets w[1:].

        Consecutive windows share one token (a window's last target is the next one's first
        input), so every token after the first is predicted exactly once; the last window may
        be shorter.
        """
        for start in range(0, self.predicted, seq_len):
            yield numpy.asarray(self.tokens[start : min(start + seq_len, self.predicted) + 1], dtype=numpy.int64)


def token_byte_lengths(tokenizer: Tokenizer) -> numpy.ndarray:
    """UTF-8 bytes of every token id ([vocab] int64); the EOS boundary counts 0 bytes."""
    lengths = numpy.zeros(tokenizer.vocab_size, dtype=numpy.int64)
    for token in range(tokenizer.vocab_size):
        if token != tokenizer.eos_id:
            lengths[token] = len(tokenizer.token_bytes(token))
    return lengths


def load_prepared_valid(prefix: str, max_tokens: int | None, tokenizer_file: str | None = None) -> EvalText:
    """The `_valid` split of a prepared prefix, memory-mapped (its sidecar names the tokenizer)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from grow_cli.data.info import read_data_info
    from grow_cli.data.tokenizer import load_recorded

    info = read_data_info(prefix)
    if info.valid.tokens < 2:
        raise GrowError(
            f"{info.prefix} has an empty validation split ({info.valid.tokens} tokens): "
            "re-run `grow data prepare` with a larger --valid-fraction or evaluate --text FILES"
        )
    tokenizer = load_recorded(info.tokenizer, tokenizer_file=tokenizer_file)
    split = info.split_prefix("valid")
    index = IndexedDataset(split, multimodal=False, mmap=True).index
    tokens = numpy.memmap(split + ".bin", dtype=index.dtype, mode="r")
    ends = index.sequence_pointers + index.sequence_lengths.astype(numpy.int64) * index.dtype_size
    if index.sequence_pointers[0] != 0 or (ends[:-1] != index.sequence_pointers[1:]).any() or ends[-1] != tokens.nbytes:
        raise GrowError(f"{split}.bin is not one stream of back-to-back documents; re-run `grow data prepare`")
    limit = None if max_tokens is None else max_tokens + 1
    return EvalText(source=f"{info.prefix}_valid", tokens=tokens[:limit], tokenizer=tokenizer)


def load_text_files(files: list[str], tokenizer: Tokenizer, max_tokens: int | None) -> EvalText:
    """Text files as documents (EOS after each), encoded like `grow data prepare` does."""
    pieces, total = [], 0
    limit = None if max_tokens is None else max_tokens + 1
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise GrowError(f"--text file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise GrowError(f"--text file {path} is not UTF-8 text") from None
        if not text.strip():
            continue
        pieces.append(numpy.asarray(tokenizer.encode(text) + [tokenizer.eos_id], dtype=numpy.int64))
        total += len(pieces[-1])
        if limit is not None and total >= limit:
            break
    tokens = numpy.concatenate(pieces)[:limit] if pieces else numpy.zeros(0, dtype=numpy.int64)
    if len(tokens) < 2:
        raise GrowError(f"--text {' '.join(files)} holds no text to evaluate (need at least 2 tokens)")
    return EvalText(source=", ".join(files), tokens=tokens, tokenizer=tokenizer)


def check_vocab(text: EvalText, model_vocab: int, checkpoint: str) -> None:
    """One line when the data's tokenizer and the model's vocabulary disagree."""
    if text.tokenizer.vocab_size != model_vocab:
        raise GrowError(
            f"{text.source} uses tokenizer {text.tokenizer.name} (vocab {text.tokenizer.vocab_size}) but "
            f"checkpoint {checkpoint} has vocab {model_vocab}: evaluate with the model's tokenizer"
        )
    top = int(text.tokens.max())
    if top >= model_vocab:
        raise GrowError(f"{text.source} holds token id {top}, outside the model's vocab {model_vocab}")
