"""Two gloo ranks: grow_kernels.linear_divergence with the head split by vocabulary (TP=2)
against the same op on the whole head (TP=1), for every target kind.

Usage: torchrun --nproc-per-node 2 divergence_ranks.py
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from grow_kernels import linear_divergence


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(3)  # the same problem on both ranks
    layers, tokens, width, vocab, teacher_width = 3, 21, 16, 2 * 77, 12
    hidden = torch.randn(layers * tokens, width, generator=generator)
    head = torch.randn(vocab, width, generator=generator)
    teacher_hidden = torch.randn(tokens, teacher_width, generator=generator)
    teacher_head = torch.randn(vocab, teacher_width, generator=generator)
    labels = torch.randint(0, vocab, (layers * tokens,), generator=generator)
    scale = torch.randn(layers * tokens, generator=generator)
    head[5] = head[vocab // 2 + 5]  # tied maxima across the two shards: argmax must keep the first
    hidden[0] = head[5]
    shard = slice(rank * vocab // world, (rank + 1) * vocab // world)
    targets = {
        "labels": {},
        "forward": {"teacher_hidden": teacher_hidden, "teacher_head": teacher_head},
        "reverse": {"teacher_hidden": teacher_hidden, "teacher_head": teacher_head, "direction": "reverse"},
        "logits": {"teacher_logits": teacher_hidden @ teacher_head.T},
    }
    for name, target in targets.items():
        results = []
        for group, part in ((None, slice(None)), (dist.group.WORLD, shard)):
            x = hidden.clone().requires_grad_()
            w = head[part].clone().requires_grad_()
            local = {k: (v[:, part] if k == "teacher_logits" else v[part] if k == "teacher_head" else v)
                     for k, v in target.items()}
            stats = linear_divergence(x, w, labels=labels, group=group, token_chunk=8, vocab_chunk=20, **local)
            (stats.loss * scale).sum().backward()
            results.append((stats, x.grad, w.grad))
        (full, full_x, full_w), (split, split_x, split_w) = results
        for field in ("loss", "logsumexp", "entropy", "target_logit", "kl"):
            torch.testing.assert_close(getattr(split, field), getattr(full, field), rtol=0, atol=2e-5, equal_nan=True,
                                       msg=lambda m: f"{name} {field}: {m}")
        assert torch.equal(split.argmax, full.argmax), name
        assert split.argmax[0] == 5, name
        torch.testing.assert_close(split_x, full_x, rtol=0, atol=2e-5)
        torch.testing.assert_close(split_w, full_w[shard], rtol=0, atol=2e-5)
    if rank == 0:
        print("ok", ", ".join(targets))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
