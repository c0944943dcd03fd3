"""grow eval's logit lens through the fused op (grow_kernels.linear_divergence: every layer against the
labels and against a reference layer as teacher) against a naive version that materialises every
layer's logits."""

from __future__ import annotations

import pytest
import torch

from grow_cli.evaluation.lens import lens_stats


def naive(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reference: int = -1):
    logits = (hidden.double() @ weight.double().T)  # [L, T, V]
    logprobs = logits.log_softmax(-1)
    rows = torch.arange(targets.numel())
    return {
        "logsumexp": logits.logsumexp(-1),
        "nll": -logprobs[:, rows, targets],
        "argmax": logits.argmax(-1),
        "entropy": -(logprobs.exp() * logprobs).sum(-1),
        "kl": (logprobs[reference].exp() * (logprobs[reference] - logprobs)).sum(-1),
    }


@pytest.mark.parametrize(
    "token_chunk,vocab_chunk,reference",
    [(1000, 10**6, -1), (7, 129, -1), (64, 1000, 1), (1, 333, 0)],
)
def test_streamed_stats_equal_materialised(token_chunk, vocab_chunk, reference):
    generator = torch.Generator().manual_seed(0)
    layers, tokens, hidden_size, vocab = 4, 150, 32, 1000
    hidden = 2.0 * torch.randn(layers, tokens, hidden_size, generator=generator)
    weight = torch.randn(vocab, hidden_size, generator=generator)
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[::3] = (hidden[-1] @ weight.T).argmax(-1)[::3]  # some targets are the last layer's argmax
    stats = lens_stats(hidden, weight, targets, reference=reference, token_chunk=token_chunk, vocab_chunk=vocab_chunk)
    expected = naive(hidden, weight, targets, reference)
    torch.testing.assert_close(stats.logsumexp.double(), expected["logsumexp"], rtol=0, atol=5e-5)
    torch.testing.assert_close(stats.nll.double(), expected["nll"], rtol=0, atol=5e-5)
    torch.testing.assert_close(stats.entropy.double(), expected["entropy"], rtol=0, atol=1e-4)
    torch.testing.assert_close(stats.kl.double(), expected["kl"], rtol=0, atol=2e-4)
    assert torch.equal(stats.argmax, expected["argmax"])
    assert stats.kl[reference].abs().max() < 1e-4
    accuracy = (stats.argmax[-1] == targets).float().mean()
    assert 0.3 < accuracy < 0.5  # the constructed third, plus chance


def test_ties_pick_the_first_index_like_argmax():
    hidden = torch.ones(1, 3, 2)
    weight = torch.zeros(10, 2)
    weight[[2, 7]] = 1.0  # two equal maxima, in different vocabulary tiles
    stats = lens_stats(hidden, weight, torch.tensor([7, 2, 0]), vocab_chunk=4)
    assert stats.argmax.tolist() == [[2, 2, 2]]


def test_single_layer_and_shape_errors():
    hidden = torch.randn(5, 8)
    weight = torch.randn(20, 8)
    stats = lens_stats(hidden[None], weight, torch.arange(5), vocab_chunk=6)
    assert stats.nll.shape == (1, 5)
    torch.testing.assert_close(stats.nll[0], torch.nn.functional.cross_entropy(hidden @ weight.T, torch.arange(5), reduction="none"))
    with pytest.raises(ValueError):
        lens_stats(hidden[None], torch.randn(20, 9), torch.arange(5))
    with pytest.raises(ValueError):
        lens_stats(hidden[None], weight, torch.arange(4))


def test_bf16_inputs_accumulate_in_fp32():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 40, 16, generator=generator).bfloat16()
    weight = torch.randn(3000, 16, generator=generator).bfloat16()
    targets = torch.randint(0, 3000, (40,), generator=generator)
    stats = lens_stats(hidden, weight, targets, token_chunk=16, vocab_chunk=512)
    assert stats.logsumexp.dtype == torch.float32
    logits = (hidden @ weight.T).float()  # the same bf16 matmul, then exact fp32 softmax
    torch.testing.assert_close(stats.logsumexp, logits.logsumexp(-1), rtol=0, atol=1e-4)
