"""Save a tiny GPTModel with megatron at the launch's TP/PP, or load one and dump its logits.

Usage (under torchrun): checkpoint_roundtrip.py save|load CKPT_DIR TP LOGITS_OUT
"""

import sys

import torch

from grow_cli.checkpoint.metadata import CheckpointInfo
from grow_cli.checkpoint.model_io import model_from_checkpoint, save_model_checkpoint
from grow_cli.runtime.distributed import init_distributed, shutdown
from grow_cli.runtime.model import build_gpt_model
from grow_cli.shape import ModelShape

SHAPE = ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=2, head_dim=16, vocab=1000, seq_len=32)


def main() -> None:
    mode, path, tp, logits_out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    runtime = init_distributed(tp=tp)
    if mode == "save":
        model = build_gpt_model(SHAPE, runtime.layout)
        save_model_checkpoint(path, model, CheckpointInfo(shape=SHAPE), force=True)
    else:
        model, _ = model_from_checkpoint(path, runtime.layout)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, SHAPE.vocab, (2, SHAPE.seq_len), generator=generator)
    positions = torch.arange(SHAPE.seq_len).expand(2, -1)
    with torch.no_grad():
        logits = model(tokens, positions, None)
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    logits = gather_from_tensor_model_parallel_region(logits)[..., : SHAPE.vocab]
    if runtime.rank == 0:
        torch.save(logits, logits_out)
    shutdown()


if __name__ == "__main__":
    main()
