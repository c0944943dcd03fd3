"""The training side: megatron-core's GPTDataset over a prepared prefix, and resumable batches.

`build_datasets` hands each split to megatron's `BlendedMegatronDatasetBuilder`, which builds
GPTDataset's document/sample/shuffle indices (sequence packing across documents, seeded shuffle,
as many epochs as `train_samples` needs) once on global rank 0, caches them as .npy files and
lets the other ranks load them after a barrier; without a process group it simply builds them.
The cache lives in `<prefix dir>/.cache/<prefix name>-<fingerprint>` by default, keyed by the
data's fingerprint so a re-prepared prefix never reuses stale indices.

`SampleBatches` fixes the order in which samples are consumed. Sample i of the run is
`dataset[i]` (GPTDataset's own shuffled order). Each micro-step consumes the next
`micro_batch_size * dp_size` samples and data-parallel rank r takes the contiguous slice
`[r * micro_batch_size, (r + 1) * micro_batch_size)` of them, exactly like Megatron-LM's
`MegatronPretrainingSampler`. So a global batch (num_microbatches micro-steps) always holds the
same samples whatever the DP size, and resuming from `consumed_samples` continues the same
sequence at any DP size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from torch.utils.data import DataLoader

from grow_cli.data.info import DataInfo, read_data_info
from grow_cli.errors import GrowError

__all__ = ["DataInfo", "SampleBatches", "build_datasets", "default_cache_dir", "read_data_info", "tokens_of"]


class PretokenizedTokenizer:
    """What GPTDataset asks of a tokenizer when the data is already token ids: the vocabulary
    size, the end-of-document id and an identity for its cache key. No text is ever encoded.
    There is no `pad`, so megatron pads with -1, an id that never occurs in the data."""

    def __init__(self, info: DataInfo) -> None:
        self.vocab_size = info.vocab_size
        self.eod = info.eos_id
        self.unique_identifiers = {"class": "grow.pretokenized", "tokenizer": info.tokenizer.name, "vocab_size": info.vocab_size}


def default_cache_dir(info: DataInfo) -> str:
    """`<prefix dir>/.cache/<prefix name>-<fingerprint>`: must be on a filesystem all ranks see."""
    directory, name = os.path.split(info.prefix)
    return os.path.join(directory, ".cache", f"{name}-{info.fingerprint[:16]}")


VALID_SEED = 1234  # validation reads the same sequences in every run on the same data, whatever --seed


def gpt_dataset_config(info: DataInfo, seq_len: int, seed: int, split: str, cache_dir: str | None = None) -> GPTDatasetConfig:
    """The GPTDatasetConfig of one split of a prepared prefix: plain causal LM samples (positions
    and attention not reset at EOS, loss on every token, EOS included; no attention-mask tensor:
    the model applies its causal mask)."""
    blends = [([info.split_prefix(split)], None) if split == name else None for name in ("train", "valid", "test")]
    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_len,
        blend_per_split=blends,
        path_to_cache=cache_dir or default_cache_dir(info),
        tokenizer=PretokenizedTokenizer(info),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )


def _build(info: DataInfo, split: str, samples: int, seq_len: int, seed: int, cache_dir: str | None) -> GPTDataset:
    sizes = [samples if split == name else None for name in ("train", "valid", "test")]
    config = gpt_dataset_config(info, seq_len, seed, split, cache_dir)
    built = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    return built[("train", "valid", "test").index(split)]


def build_datasets(
    prefix: str,
    seq_len: int,
    train_samples: int,
    valid_samples: int,
    seed: int,
    cache_dir: str | None = None,
) -> tuple[GPTDataset, GPTDataset | None]:
    """Train and valid GPTDatasets of at least `train_samples` / `valid_samples` samples.

    `seed` orders the training samples; the validation order is always `VALID_SEED`'s, so runs
    with different seeds are validated on the same text. Call on every rank when
    torch.distributed is initialised (rank 0 builds the index cache, the others wait at a barrier
    and load it). Valid is None when `valid_samples` is 0 or the prefix has no validation documents.
    """
    info = read_data_info(prefix)
    if seq_len < 1 or train_samples < 1 or valid_samples < 0:
        raise GrowError(f"need seq_len >= 1, train_samples >= 1, valid_samples >= 0 (got {seq_len}, {train_samples}, {valid_samples})")
    if info.train.documents == 0:
        raise GrowError(f"{info.prefix} has no training documents: re-run `grow data prepare` with more input")
    train = _build(info, "train", train_samples, seq_len, seed, cache_dir)
    use_valid = valid_samples > 0 and info.valid.documents > 0
    valid = _build(info, "valid", valid_samples, seq_len, VALID_SEED, cache_dir) if use_valid else None
    return train, valid


class _RankBatchSampler:
    """Index lists for one DP rank: micro-step k covers run samples
    [start + k*m*D, start + (k+1)*m*D) and rank r takes its r-th slice of m; run sample i is
    dataset index (offset + i), modulo `wrap` when given."""

    def __init__(self, total: int, micro_batch_size: int, dp_rank: int, dp_size: int, start: int,
                 offset: int = 0, wrap: int | None = None) -> None:
        self.step = micro_batch_size * dp_size
        self.first = offset + start + dp_rank * micro_batch_size
        self.micro_batch_size = micro_batch_size
        self.wrap = wrap
        self.steps = max(0, (total - start) // self.step)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(self.steps):
            first = self.first + k * self.step
            indices = range(first, first + self.micro_batch_size)
            yield [i % self.wrap for i in indices] if self.wrap else list(indices)


class SampleBatches:
    """Micro-batches for one data-parallel rank, starting after `consumed_samples` samples of the
    global sequence (see the module docstring for the order).

    Each item is a dict of torch tensors `[micro_batch_size, seq_len]`: `tokens`, `labels`
    (int64), `loss_mask` (float32), `position_ids` (int64). `consumed_samples` counts global
    samples consumed so far, all ranks included; save it with a checkpoint and pass it back to
    resume. Sample i of the run is `dataset[offset + i]`, or with `wrap` `dataset[(offset + i) %
    wrap]` for `samples` samples (a capped corpus read round and round): a later stage of a series
    reads after its parent's samples. DataLoader workers only prefetch: the order does not depend
    on `num_workers`. Iteration stops when fewer than `micro_batch_size * dp_size` samples are left.
    """

    def __init__(
        self,
        dataset: GPTDataset,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        consumed_samples: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        offset: int = 0,
        wrap: int | None = None,
        samples: int | None = None,
    ) -> None:
        if micro_batch_size < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size or consumed_samples < 0:
            raise ValueError(f"bad batch layout: micro_batch_size={micro_batch_size}, dp_rank={dp_rank}, dp_size={dp_size}, consumed_samples={consumed_samples}")
        if wrap is not None and not 0 < wrap <= len(dataset):
            raise ValueError(f"wrap {wrap} must be in (0, {len(dataset)}]")
        total = samples if wrap is not None and samples is not None else len(dataset) - offset
        if consumed_samples > total:
            raise GrowError(f"cannot resume at sample {consumed_samples}: the dataset has {total} samples (was it built with fewer train samples?)")
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.dp_size = dp_size
        self.consumed_samples = consumed_samples
        self._sampler = _RankBatchSampler(total, micro_batch_size, dp_rank, dp_size, consumed_samples, offset, wrap)
        self._loader = DataLoader(
            dataset,
            batch_sampler=self._sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,
            # DataLoader draws its worker seed when an iterator starts; from its own generator,
            # so starting one (a resume, each validation) never moves torch's global RNG stream
            generator=torch.Generator().manual_seed(0),
        )
        self._iterator: Iterator | None = None
        self._yielded = 0

    def __len__(self) -> int:
        """Micro-batches this iterator still yields."""
        return len(self._sampler) - self._yielded

    def __iter__(self) -> SampleBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._iterator is None:
            self._iterator = iter(self._loader)
        batch = next(self._iterator)
        self._yielded += 1
        self.consumed_samples += self.micro_batch_size * self.dp_size
        return batch


def tokens_of(split_prefix: str, doc_index: int) -> numpy.ndarray:
    """The token ids of one document of a split (PREFIX_train or PREFIX_valid), EOS included,
    read with megatron's IndexedDataset: what `prepare` wrote is what training reads."""
    dataset = IndexedDataset(split_prefix, multimodal=False, mmap=True)
    return numpy.asarray(dataset[doc_index], dtype=numpy.int64)
