"""Two gloo ranks: build_datasets under a process group, then DP=2 batches vs the DP=1 sequence.

Usage: torchrun --nproc-per-node 2 data_ranks.py PREFIX CACHE_DIR
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from grow_cli.data.datasets import SampleBatches, build_datasets


def main(prefix: str, cache_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    train, valid = build_datasets(prefix, seq_len=16, train_samples=200, valid_samples=8, seed=7, cache_dir=cache_dir)
    assert valid is not None

    # Both ranks see the same samples.
    probe = torch.stack([train[i]["tokens"] for i in range(0, 200, 13)])
    gathered = [torch.zeros_like(probe) for _ in range(2)]
    dist.all_gather(gathered, probe)
    assert torch.equal(gathered[0], gathered[1])

    # DP=2, micro-batch 2, resumed at sample 6: ranks tile DP=1, micro-batch 4, resumed at 6.
    batches = SampleBatches(train, micro_batch_size=2, dp_rank=rank, dp_size=2, consumed_samples=6)
    mine = torch.stack([next(batches)["tokens"] for _ in range(5)])
    assert batches.consumed_samples == 6 + 5 * 4
    parts = [torch.zeros_like(mine) for _ in range(2)]
    dist.all_gather(parts, mine)
    single = SampleBatches(train, micro_batch_size=4, consumed_samples=6)
    reference = torch.stack([next(single)["tokens"] for _ in range(5)])
    assert torch.equal(torch.cat(parts, dim=1), reference)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
