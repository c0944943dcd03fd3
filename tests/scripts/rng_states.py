"""Print `equal` if two training checkpoints hold the same RNG states (every stream), else the
first stream that differs. Loads through megatron's dist_checkpointing, as resume does."""

import sys

import numpy
import torch


def states(path: str) -> dict:
    from megatron.core import dist_checkpointing

    from grow_cli.training.checkpointing import RNG_KEY, _rng_object

    return dist_checkpointing.load({RNG_KEY: _rng_object(None)}, path)[RNG_KEY]


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, numpy.ndarray):
        return numpy.array_equal(a, b)
    return a == b


if __name__ == "__main__":
    from grow_cli.runtime.distributed import init_distributed, shutdown

    init_distributed()
    first, second = states(sys.argv[1]), states(sys.argv[2])
    differing = [name for name in first if not same(first[name], second[name])]
    print(f"streams {sorted(first)}")
    print("differ: " + ", ".join(differing) if differing else "equal")
    shutdown()
