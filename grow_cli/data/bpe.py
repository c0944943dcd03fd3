"""`grow data tokenizer`: train a byte-level BPE on local documents with the `tokenizers` library.

A team with its own corpus (code, another language) gets a vocabulary that fits it; the result
is an ordinary Hugging Face tokenizer directory (tokenizer.json, tokenizer_config.json,
special_tokens_map.json) that `grow data prepare --tokenizer DIR` and transformers'
`AutoTokenizer.from_pretrained(DIR)` both read. Documents come from the same readers as
`prepare`; a seeded share of them (by the same rule as prepare's valid split) is held out of
training and measures the result: UTF-8 bytes per token on text the tokenizer never saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from grow_cli.data.prepare import goes_to_valid
from grow_cli.data.sources import resolve_source
from grow_cli.data.tokenizer import ENDOFTEXT
from grow_cli.errors import GrowError

# Context length written into tokenizer_config.json; the model's own is set again at export.
_MODEL_MAX_LENGTH = 1 << 20


@dataclass(frozen=True)
class BPETrainingConfig:
    """Everything `grow data tokenizer` takes (see its --help)."""

    inputs: tuple[str, ...]
    out: str
    vocab_size: int
    held_out: float = 0.1
    seed: int = 1234
    eos: str = ENDOFTEXT
    text_key: str = "text"
    max_documents: int | None = None
    force: bool = False


@dataclass(frozen=True)
class BPETrainingResult:
    out: Path
    vocab_size: int
    train_documents: int
    held_out_documents: int
    held_out_bytes: int
    held_out_tokens: int
    seconds: float

    @property
    def bytes_per_token(self) -> float | None:
        return self.held_out_bytes / self.held_out_tokens if self.held_out_tokens else None

    def to_json(self) -> dict:
        return {
            "out": str(self.out),
            "vocab_size": self.vocab_size,
            "train_documents": self.train_documents,
            "held_out_documents": self.held_out_documents,
            "held_out_bytes": self.held_out_bytes,
            "held_out_tokens": self.held_out_tokens,
            "bytes_per_token": None if self.bytes_per_token is None else round(self.bytes_per_token, 4),
            "seconds": round(self.seconds, 3),
        }


def train_bpe(config: BPETrainingConfig) -> BPETrainingResult:
    """Train, write the directory atomically, and measure bytes/token on the held-out documents."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from grow_cli.checkpoint.atomic import atomic_directory, check_output
    from grow_cli.interop.tokenizer_files import write_config_files

    if config.vocab_size < 257:
        raise GrowError(f"--vocab-size must exceed the 256 byte tokens plus EOS, got {config.vocab_size}")
    if not 0.0 <= config.held_out < 1.0:
        raise GrowError(f"--held-out must be in [0, 1), got {config.held_out}")
    out = Path(config.out).expanduser().resolve()
    source = resolve_source(list(config.inputs), config.text_key)
    if any(out == path.resolve() or out in path.resolve().parents for path in source.files):
        raise GrowError(f"--out {out} overlaps the inputs; choose another directory")
    check_output(out, config.force, "tokenizer directory")

    start = time.perf_counter()
    held: list[str] = []
    counts = {"train": 0}

    def train_documents():
        taken = 0
        for index, text in enumerate(source.documents()):
            if config.max_documents is not None and taken >= config.max_documents:
                return
            if not text.strip():
                continue
            taken += 1
            if goes_to_valid(config.seed, index, config.held_out):
                held.append(text)
                continue
            counts["train"] += 1
            yield text

    tokenizer = Tokenizer(models.BPE(fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=[config.eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(train_documents(), trainer)
    if counts["train"] == 0:
        raise GrowError(f"no training documents with text in {', '.join(config.inputs)} (check --text-key and --held-out)")
    encodings = tokenizer.encode_batch(held, add_special_tokens=False) if held else []
    with atomic_directory(out, force=config.force, what="tokenizer directory") as tmp:
        tokenizer.save(str(tmp / "tokenizer.json"))
        eos_id = tokenizer.token_to_id(config.eos)
        write_config_files(tmp, config.eos, {config.eos: eos_id}, _MODEL_MAX_LENGTH, "PreTrainedTokenizerFast")
    return BPETrainingResult(
        out=out,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        train_documents=counts["train"],
        held_out_documents=len(held),
        held_out_bytes=sum(len(text.encode("utf-8")) for text in held),
        held_out_tokens=sum(len(encoding.ids) for encoding in encodings),
        seconds=time.perf_counter() - start,
    )
