"""Where in the data a run reads: every stage of a series trains on samples no earlier stage read.

The reference method trains each stage on new tokens (40B + 60B + 120B + 240B for its 1B -> 8B
series); re-reading a parent's samples would make a grown stage look better than it is. So a run
started with `--init X` on the same data continues GPTDataset's sample order (same seed, same
sequence length) at the position after the last sample X's lineage read. `--data-start N` starts
at position N instead (0: the start, the old behaviour). A plan made with `--fixed-data` caps the
corpus at its `corpus_tokens`: positions wrap to 0 at the cap, so a stage reads the rest of the
corpus and then repeats it from the start, as `grow plan --fixed-data` shows.

Only the first epoch of GPTDataset's order is the same whatever the number of samples requested
(a second epoch is shuffled on its own), so a run that does not start at 0 must fit in it; when it
does not, the error says how many samples are needed and how many unseen ones are left.
`resolve_window` is pure: `training/config.py` hands it what it read from disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from grow_cli.checkpoint.metadata import DataConsumed
from grow_cli.errors import GrowError
from grow_cli.units import format_count

CONTINUE = "continue"  # the default of --data-start: after what --init's lineage read


@dataclass(frozen=True)
class DataWindow:
    """The run's place in the data order: seed of the order, first position, wrap point."""

    seed: int
    start: int = 0
    wrap: int | None = None  # positions are taken modulo this (a capped corpus)

    def dataset_samples(self, samples: int) -> int:
        """How many samples the train dataset must hold for the run to read `samples` of them."""
        return self.wrap if self.wrap else self.start + samples

    def consumed(self, prefix: str, fingerprint: str, seq_len: int, samples: int = 0) -> DataConsumed:
        return DataConsumed(prefix, fingerprint, self.seed, seq_len, self.start, samples, self.wrap)


def epoch_samples(train_tokens: int, seq_len: int) -> int:
    """Samples in one epoch of GPTDataset (each sample reads seq_len + 1 tokens, overlapping by one)."""
    return max(0, (train_tokens - 1) // seq_len)


def parse_data_start(text: str | None) -> int | None:
    """--data-start: None/"continue" (after --init's data), or a sample position >= 0."""
    if text is None or text == CONTINUE:
        return None
    try:
        value = int(text)
    except ValueError:
        raise GrowError(f"--data-start {text!r}: give a sample position (0, 1000, ...) or {CONTINUE!r}") from None
    if value < 0:
        raise GrowError(f"--data-start must be >= 0, got {value}")
    return value


def resolve_window(
    *,
    data_start: str | None,
    seed: int,
    prefix: str,
    fingerprint: str,
    train_tokens: int,
    seq_len: int,
    samples: int,
    parent: DataConsumed | None,
    corpus_tokens: float | None = None,
) -> DataWindow:
    """The window of a run reading `samples` samples; GrowError when the data cannot supply them.

    `parent` is what the --init checkpoint's lineage read (None: no --init, or not recorded);
    `corpus_tokens` the plan's fixed corpus (None: read new data only).
    """
    available = epoch_samples(train_tokens, seq_len)
    wrap = None
    if corpus_tokens is not None:
        wrap = min(available, math.floor(corpus_tokens / seq_len))
        if wrap < 1:
            raise GrowError(f"the plan's fixed corpus ({format_count(corpus_tokens)} tokens) holds no sample of {seq_len} tokens")
    explicit = parse_data_start(data_start)
    same_data = parent is not None and parent.fingerprint == fingerprint
    if explicit is not None or not same_data:
        start = explicit or 0
    else:
        if parent.seq_len != seq_len:
            raise GrowError(
                f"--init was trained on this data at sequence length {parent.seq_len}, this run uses {seq_len}: "
                "its samples cannot be skipped; keep the sequence length or pass --data-start 0"
            )
        seed = parent.seed  # continue the parent's order, whatever this run's --seed
        start = parent.end % wrap if wrap else parent.end
    window = DataWindow(seed, start % wrap if wrap else start, wrap)
    if wrap is None and start > 0 and start + samples > available:
        unseen = max(0, available - start)
        raise GrowError(
            f"this stage needs {format_count(samples)} samples of new data but {prefix} has {format_count(unseen)} unseen "
            f"(of {format_count(available)}, {format_count(start)} read before): plan with `grow plan --fixed-data` "
            "to repeat the corpus, prepare more data, or pass --data-start 0"
        )
    return window
