"""Write a copy of a checkpoint whose last layer moves the residual stream `factor` times as far
(its attention and MLP output projections scaled): a movement profile that jumps at the end, the
shape spec §2 describes in pretrained LLMs, so that C_model < 1.

usage: python distill_kink.py SRC DST FACTOR
"""

import sys
import uuid
from dataclasses import replace

import torch

from grow_cli.checkpoint.model_io import model_from_checkpoint, save_model_checkpoint
from grow_cli.layout import Layout
from grow_cli.runtime.distributed import init_distributed, shutdown

if __name__ == "__main__":
    source, target, factor = sys.argv[1], sys.argv[2], float(sys.argv[3])
    init_distributed(tp=1)
    try:
        model, info = model_from_checkpoint(source, Layout(1, 1, 1))
        last = model.decoder.layers[-1]
        with torch.no_grad():
            last.self_attention.linear_proj.weight.mul_(factor)
            last.mlp.linear_fc2.weight.mul_(factor)
        save_model_checkpoint(target, model, replace(info, checkpoint_id=uuid.uuid4().hex))
    finally:
        shutdown()
