"""Logit-lens statistics of many layers without materialising their logits.

A logit lens projects every layer's (normalised) hidden state through the LM head. For L layers,
T tokens and a vocabulary of V, the naive way holds [L, T, V] logits: 13 layers x 4096 tokens x
50257 words is 10.7 GB in fp32. `lens_stats` streams instead: tokens in chunks, the vocabulary in
chunks, and for each (token chunk, vocabulary chunk) tile it updates running per-token statistics
with an online log-sum-exp, so at most two [token_chunk, vocab_chunk] tiles of logits exist at a
time whatever L, T and V are. The reference layer's tile is computed once per tile and shared by
every layer's KL term, so the matmul work equals the naive version's.

Per token and layer it returns what perplexity, accuracy, entropy and divergence need:

* ``logsumexp``  log Σ_v exp(z_v)             (normaliser of the layer's softmax)
* ``target_logit``  z_target                   (NLL = logsumexp - target_logit)
* ``argmax``     argmax_v z_v (first maximum)  (next-token accuracy, greedy decoding)
* ``entropy``    H(p) = logsumexp - Σ_v p_v z_v
* ``kl``         KL(p_ref ‖ p) = Σ_v p_ref,v (log p_ref,v - log p_v)
                 = logsumexp - Σ_v p_ref,v z_v - H(p_ref)

This file is the PyTorch reference implementation and the contract. A fused Triton kernel
(linear + online log-softmax + divergence in one pass over the weight, the next item on the
kernels roadmap) will slot in behind the same function on GPU and is checked against this path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LensStats", "lens_stats"]


@dataclass(frozen=True)
class LensStats:
    """Per-layer, per-token statistics, each [L, T] (float32; `argmax` int64)."""

    logsumexp: torch.Tensor
    target_logit: torch.Tensor
    argmax: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor

    @property
    def nll(self) -> torch.Tensor:
        """Negative log-likelihood of the targets, [L, T]."""
        return self.logsumexp - self.target_logit


def lens_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    reference: int = -1,
    token_chunk: int = 512,
    vocab_chunk: int = 8192,
) -> LensStats:
    """Softmax statistics of ``hidden @ weight.T`` for every layer, streamed in tiles.

    Args:
        hidden: [L, T, h] (or [T, h] for one layer) states already through the final norm.
        weight: [V, h] LM head; every row takes part in the softmax.
        targets: [T] int64 token ids in [0, V) whose logits are reported.
        reference: the layer whose distribution is the KL reference (default: the last).
        token_chunk, vocab_chunk: tile sizes; they bound memory, not the result.

    Accumulation is float32 whatever the input dtype; the matmul runs in the input dtype (as
    the model's own output layer does).
    """
    if hidden.dim() == 2:
        hidden = hidden.unsqueeze(0)
    if hidden.dim() != 3 or weight.dim() != 2 or hidden.size(-1) != weight.size(-1):
        raise ValueError(f"need hidden [L, T, h] and weight [V, h], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    layers, tokens, _ = hidden.shape
    if targets.shape != (tokens,):
        raise ValueError(f"targets must be [{tokens}], got {tuple(targets.shape)}")
    if token_chunk < 1 or vocab_chunk < 1:
        raise ValueError("token_chunk and vocab_chunk must be positive")
    reference = reference % layers
    weight = weight.to(hidden.dtype)
    pieces = [
        _tile_stats(hidden[:, start : start + token_chunk], weight, targets[start : start + token_chunk], reference, vocab_chunk)
        for start in range(0, tokens, token_chunk)
    ]
    return LensStats(*(torch.cat([piece[i] for piece in pieces], dim=1) for i in range(5)))


def _tile_stats(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reference: int, vocab_chunk: int
) -> tuple[torch.Tensor, ...]:
    """One token chunk: stream the vocabulary, keeping only running [L, c] statistics."""
    layers, count, _ = hidden.shape
    device = hidden.device
    neg_inf = torch.full((layers, count), float("-inf"), device=device)
    run_max = neg_inf.clone()  # running max of z (per layer)
    run_sum = torch.zeros(layers, count, device=device)  # Σ exp(z - run_max)
    run_dot = torch.zeros(layers, count, device=device)  # Σ exp(z - run_max) · z   (entropy)
    best = neg_inf.clone()
    best_index = torch.zeros(layers, count, dtype=torch.long, device=device)
    target_logit = torch.full((layers, count), float("nan"), device=device)
    ref_max = torch.full((count,), float("-inf"), device=device)  # running max of z_ref
    ref_sum = torch.zeros(count, device=device)  # Σ exp(z_ref - ref_max)
    cross = torch.zeros(layers, count, device=device)  # Σ exp(z_ref - ref_max) · z_l   (KL)
    rows = torch.arange(count, device=device)

    for start in range(0, weight.size(0), vocab_chunk):
        block = weight[start : start + vocab_chunk]
        ref_logits = (hidden[reference] @ block.T).float()
        new_ref_max = torch.maximum(ref_max, ref_logits.amax(dim=1))
        ref_scale = torch.exp(ref_max - new_ref_max)
        ref_weights = torch.exp(ref_logits - new_ref_max[:, None])
        ref_sum = ref_sum * ref_scale + ref_weights.sum(dim=1)
        ref_max = new_ref_max
        in_block = (targets >= start) & (targets < start + block.size(0))
        local_targets = (targets - start).clamp(0, block.size(0) - 1)
        for layer in range(layers):
            logits = ref_logits if layer == reference else (hidden[layer] @ block.T).float()
            block_max, block_arg = logits.max(dim=1)
            new_max = torch.maximum(run_max[layer], block_max)
            scale = torch.exp(run_max[layer] - new_max)
            weights = torch.exp(logits - new_max[:, None])
            run_sum[layer] = run_sum[layer] * scale + weights.sum(dim=1)
            run_dot[layer] = run_dot[layer] * scale + (weights * logits).sum(dim=1)
            run_max[layer] = new_max
            better = block_max > best[layer]  # strict: ties keep the earlier (first) index
            best[layer] = torch.where(better, block_max, best[layer])
            best_index[layer] = torch.where(better, block_arg + start, best_index[layer])
            picked = logits[rows, local_targets]
            target_logit[layer] = torch.where(in_block, picked, target_logit[layer])
            cross[layer] = cross[layer] * ref_scale + (ref_weights * logits).sum(dim=1)

    logsumexp = run_max + torch.log(run_sum)
    entropy = logsumexp - run_dot / run_sum
    ref_mean_logit = cross / ref_sum  # Σ_v p_ref,v · z_l,v
    kl = (logsumexp - ref_mean_logit - entropy[reference]).clamp_min(0.0)
    return logsumexp, target_logit, best_index, entropy, kl
