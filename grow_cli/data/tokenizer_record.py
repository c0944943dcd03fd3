"""Which tokenizer made a set of token ids: the record the data sidecar and the checkpoint carry.

Token ids mean nothing without their tokenizer, and two tokenizers with the same vocabulary size
(a GPT-2 rank file and a BPE trained to 50257 tokens) produce different ids for the same text.
So the record names the tokenizer's kind and file and holds a sha256 of the file's bytes: data
and checkpoints agree when their records have the same identity, whatever path the file was read
from. This module imports nothing heavy: checkpoint metadata reads it on every load.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from grow_cli.errors import GrowError

# The three kinds `load_tokenizer` understands (see data/tokenizer.py).
TIKTOKEN = "tiktoken"  # a named tiktoken encoding: gpt2, cl100k_base, o200k_base
RANKS = "tiktoken-ranks"  # a tiktoken rank file (Llama 3's tokenizer.model format)
HUGGINGFACE = "huggingface"  # a `tokenizers` tokenizer.json
KINDS = (TIKTOKEN, RANKS, HUGGINGFACE)
# The folder inside a checkpoint directory holding copies of its tokenizer's files (`grow import`).
CHECKPOINT_TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class TokenizerRecord:
    """Everything needed to reload the same tokenizer and to tell it from another one.

    `path` is where the file was read (None for an encoding tiktoken fetched itself), `sha256` its
    content hash; `pattern` and `special_tokens` are the rank-file settings (None: Llama 3's).
    """

    kind: str
    name: str
    vocab_size: int
    eos: str
    eos_id: int
    path: str | None = None
    sha256: str | None = None
    pattern: str | None = None
    special_tokens: tuple[str, ...] | None = None

    @property
    def identity(self) -> tuple:
        """What must be equal for two records to encode alike: the file's content (or, for a
        named tiktoken encoding, its name), the vocabulary and the document separator."""
        content = self.sha256 if self.kind != TIKTOKEN else self.name
        return (self.kind, content, self.pattern, self.special_tokens, self.vocab_size, self.eos_id)

    def describe(self) -> str:
        return f"{self.name} ({self.kind}, vocab {self.vocab_size}, EOS {self.eos!r})"

    def to_json(self) -> dict:
        record = asdict(self)
        if self.special_tokens is not None:
            record["special_tokens"] = list(self.special_tokens)
        return record

    @classmethod
    def from_json(cls, record: dict) -> "TokenizerRecord":
        if record["kind"] not in KINDS:
            raise ValueError(f"unknown tokenizer kind {record['kind']!r}")
        specials = record.get("special_tokens")
        return cls(
            kind=record["kind"],
            name=record["name"],
            vocab_size=int(record["vocab_size"]),
            eos=record["eos"],
            eos_id=int(record["eos_id"]),
            path=record.get("path"),
            sha256=record.get("sha256"),
            pattern=record.get("pattern"),
            special_tokens=tuple(specials) if specials is not None else None,
        )


def check_same_tokenizer(data: TokenizerRecord, model: TokenizerRecord | None, data_where: str, model_where: str) -> None:
    """One line when data and a checkpoint were tokenized differently (a model without a record,
    from an older grow, is checked by vocabulary size elsewhere)."""
    if model is not None and data.identity != model.identity:
        raise GrowError(
            f"{data_where} was tokenized with {data.describe()} but {model_where} was trained with "
            f"{model.describe()}: prepare the data with the checkpoint's tokenizer"
        )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
