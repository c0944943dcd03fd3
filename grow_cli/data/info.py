"""The sidecar `PREFIX.json` that `grow data prepare` writes next to the indexed datasets.

Token ids alone do not say which tokenizer made them. The sidecar does (its `TokenizerRecord`:
kind, file, content hash, vocabulary size, EOS), with per-split document and token counts and a fingerprint of the index files, so that
training and eval can refuse a model whose vocabulary does not match the data, and dataset index
caches are keyed to the exact data they were built for. Reading it needs no torch. Sidecars of
format grow-data/1 (a bare tiktoken encoding name) are still read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from grow_cli.data.tokenizer_record import TIKTOKEN, TokenizerRecord
from grow_cli.errors import GrowError

FORMAT = "grow-data/2"
# grow-data/1 named a tiktoken encoding only; its end-of-text token was always this one.
_V1_FORMAT, _V1_EOS = "grow-data/1", "<|endoftext|>"
SPLITS = ("train", "valid")


@dataclass(frozen=True)
class SplitInfo:
    """One split: its documents and tokens (EOS included)."""

    documents: int
    tokens: int


@dataclass(frozen=True)
class DataInfo:
    """What a prepared prefix holds; `prefix` is where it was read from (not stored)."""

    prefix: str
    tokenizer: TokenizerRecord
    dtype: str
    seed: int
    valid_fraction: float
    sources: tuple[str, ...]
    train: SplitInfo
    valid: SplitInfo
    fingerprint: str

    def split_prefix(self, split: str) -> str:
        """The megatron path prefix of one split: PREFIX_train or PREFIX_valid (no extension)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return split_prefix(self.prefix, split)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    def check_vocab(self, model_vocab: int) -> None:
        """GrowError unless a model with `model_vocab` (unpadded) tokens matches this data."""
        if model_vocab != self.vocab_size:
            raise GrowError(
                f"data {self.prefix} was tokenized with {self.tokenizer.name} (vocab {self.vocab_size}) "
                f"but the model's vocab is {model_vocab}: re-run `grow data prepare` with the "
                f"model's tokenizer or build the model with vocab {self.vocab_size}"
            )

    def to_json(self) -> dict:
        record = asdict(self)
        record.pop("prefix")
        record["tokenizer"] = self.tokenizer.to_json()
        record["sources"] = list(self.sources)
        return {"format": FORMAT, **record}


def split_prefix(prefix: str | Path, split: str) -> str:
    return f"{prefix}_{split}"


def sidecar_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.json")


def output_paths(prefix: str | Path) -> list[Path]:
    """Every file `prepare` writes for `prefix`: the sidecar and .bin/.idx per split."""
    paths = [sidecar_path(prefix)]
    for split in SPLITS:
        paths += [Path(split_prefix(prefix, split) + ".bin"), Path(split_prefix(prefix, split) + ".idx")]
    return paths


def read_data_info(prefix: str | Path) -> DataInfo:
    """The sidecar of a prepared prefix; GrowError naming the missing files otherwise."""
    prefix = str(prefix)
    if prefix.endswith(".json"):
        prefix = prefix[: -len(".json")]
    prefix = os.path.abspath(os.path.expanduser(prefix))
    missing = [str(path) for path in output_paths(prefix) if not path.is_file()]
    if missing:
        raise GrowError(
            f"no prepared data at prefix {prefix} (missing {', '.join(missing)}): "
            f"run `grow data prepare --out {prefix}` first"
        )
    try:
        record = json.loads(sidecar_path(prefix).read_text())
        if record.get("format") not in (FORMAT, _V1_FORMAT):
            raise ValueError(f"format {record.get('format')!r}, expected {FORMAT!r}")
        return DataInfo(
            prefix=prefix,
            tokenizer=_tokenizer_of(record),
            dtype=record["dtype"],
            seed=int(record["seed"]),
            valid_fraction=float(record["valid_fraction"]),
            sources=tuple(record["sources"]),
            train=SplitInfo(**record["train"]),
            valid=SplitInfo(**record["valid"]),
            fingerprint=record["fingerprint"],
        )
    except (ValueError, KeyError, TypeError) as error:
        raise GrowError(
            f"{sidecar_path(prefix)} is not a grow data sidecar ({error}): re-run `grow data prepare`"
        ) from None


def _tokenizer_of(record: dict) -> TokenizerRecord:
    if record["format"] == _V1_FORMAT:
        return TokenizerRecord(
            kind=TIKTOKEN, name=record["tokenizer"], vocab_size=int(record["vocab_size"]), eos=_V1_EOS,
            eos_id=int(record["eos_id"]),
        )
    return TokenizerRecord.from_json(record["tokenizer"])


def write_data_info(info: DataInfo) -> Path:
    """Write the sidecar atomically (temporary name, then rename)."""
    from grow_cli.checkpoint.atomic import write_json_atomic

    return write_json_atomic(sidecar_path(info.prefix), info.to_json())
