"""Per-rank parameter counts of real megatron-core GPTModels, for test_plan_memory (torchrun).

Usage: torchrun --nproc-per-node 2 plan_params_per_rank.py '<json list of shape dicts>'
Prints, on rank 0, one JSON line: for each shape and (TP, PP) in (2, 1), (1, 2), the
(pipeline rank, local parameter count) of every rank.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import torch
    from megatron.core import parallel_state

    from grow_cli.runtime.distributed import init_distributed, shutdown
    from grow_cli.layout import Layout
    from grow_cli.runtime.model import build_gpt_model
    from grow_cli.shape import ModelShape

    shapes = [ModelShape.from_dict(d) for d in json.loads(sys.argv[1])]
    results = []
    for index, shape in enumerate(shapes):
        for tp, pp in ((2, 1), (1, 2)):
            runtime = init_distributed(tp=tp, pp=pp)
            model = build_gpt_model(shape, Layout(tp=tp, pp=pp), attention="local")
            local = (parallel_state.get_pipeline_model_parallel_rank(), sum(p.numel() for p in model.parameters()))
            gathered = [None] * runtime.world_size
            torch.distributed.all_gather_object(gathered, local)
            results.append({"shape": index, "tp": tp, "pp": pp, "ranks": gathered})
    rank = runtime.rank
    shutdown()
    if rank == 0:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
