"""grow_kernels.linear_divergence: the PyTorch reference against plain autograd over materialised
logits, the Triton kernels (under TRITON_INTERPRET=1 on CPU) against the reference, vocabulary
parallelism at 2 gloo ranks against one, and the memory bound (no [N, V] allocation)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from grow_kernels import linear_divergence

from conftest import REPO, run_ranks

MODES = ("labels", "forward", "reverse", "logits")


def make_case(dtype=torch.float32, layers=3, tokens=37, width=24, vocab=301, teacher_width=20, seed=0, scale=1.0):
    """Ragged shapes (no tile divides T or V); student rows n = k·T + t."""
    generator = torch.Generator().manual_seed(seed)
    case = {
        "hidden": (scale * torch.randn(layers * tokens, width, generator=generator)).to(dtype),
        "head": torch.randn(vocab, width, generator=generator).to(dtype),
        "teacher_hidden": (scale * torch.randn(tokens, teacher_width, generator=generator)).to(dtype),
        "teacher_head": torch.randn(vocab, teacher_width, generator=generator).to(dtype),
        "labels": torch.randint(0, vocab, (layers * tokens,), generator=generator),
        "grad": torch.randn(layers * tokens, generator=generator),
    }
    case["labels"][::4] = (case["hidden"].float() @ case["head"].float().T).argmax(-1)[::4]
    return case


def target_of(case: dict, mode: str) -> dict:
    if mode == "labels":
        return {}
    if mode == "logits":
        return {"teacher_logits": (case["teacher_hidden"] @ case["teacher_head"].T).float()}
    return {"teacher_hidden": case["teacher_hidden"], "teacher_head": case["teacher_head"], "direction": mode}


def run(case: dict, mode: str, **options):
    """The op's statistics and the gradients of Σ grad·loss w.r.t. hidden and head."""
    hidden = case["hidden"].clone().requires_grad_()
    head = case["head"].clone().requires_grad_()
    stats = linear_divergence(hidden, head, labels=case["labels"], **target_of(case, mode), **options)
    grad_hidden, grad_head = torch.autograd.grad((stats.loss * case["grad"]).sum(), [hidden, head])
    return stats, grad_hidden, grad_head


def materialised(case: dict, mode: str):
    """The same quantities by float64 autograd through full [N, V] logits."""
    hidden = case["hidden"].double().requires_grad_()
    head = case["head"].double().requires_grad_()
    logits = hidden @ head.T
    log_p = logits.log_softmax(-1)
    labels = case["labels"]
    nll = -log_p.gather(1, labels[:, None])[:, 0]
    if mode == "labels":
        loss = kl = nll
    else:
        teacher = (case["teacher_hidden"] @ case["teacher_head"].T).double()
        log_q = teacher.log_softmax(-1).repeat(hidden.size(0) // teacher.size(0), 1)  # row n -> n mod T
        pair = (log_q, log_p) if mode in ("forward", "logits") else (log_p, log_q)
        loss = kl = (pair[0].exp() * (pair[0] - pair[1])).sum(-1)
    grad_hidden, grad_head = torch.autograd.grad((loss * case["grad"].double()).sum(), [hidden, head])
    expected = {
        "loss": loss, "logsumexp": logits.logsumexp(-1), "entropy": -(log_p.exp() * log_p).sum(-1),
        "nll": nll, "argmax": logits.argmax(-1), "kl": kl,
    }
    return {k: v.detach() for k, v in expected.items()}, grad_hidden, grad_head


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("token_chunk,vocab_chunk", [(8, 30), (1000, 10**6), (1, 7)])
def test_reference_equals_autograd_over_materialised_logits(mode, token_chunk, vocab_chunk):
    case = make_case()
    stats, grad_hidden, grad_head = run(case, mode, token_chunk=token_chunk, vocab_chunk=vocab_chunk, backend="reference")
    expected, expected_hidden, expected_head = materialised(case, mode)
    for name in ("loss", "logsumexp", "entropy", "nll"):
        torch.testing.assert_close(getattr(stats, name).double(), expected[name], rtol=0, atol=1e-4, msg=name)
    assert torch.equal(stats.argmax, expected["argmax"])
    if mode == "labels":
        assert stats.kl.isnan().all()
    else:
        torch.testing.assert_close(stats.kl.double(), expected["kl"], rtol=0, atol=1e-4)
    torch.testing.assert_close(grad_hidden.double(), expected_hidden, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_head.double(), expected_head, rtol=1e-4, atol=1e-4)


def test_a_teacher_row_is_shared_by_every_layer():
    """Row n meets teacher row n mod T: a layer equal to the teacher has zero KL and gradient."""
    case = make_case(layers=2, tokens=10, width=8, vocab=50, teacher_width=8)
    case["hidden"][10:] = case["teacher_hidden"]  # layer 1 is the teacher, layer 0 is not
    case["teacher_head"] = case["head"]
    stats, grad_hidden, _ = run(case, "reverse", vocab_chunk=16)
    assert stats.kl[10:].abs().max() < 1e-5 and stats.kl[:10].min() > 1e-3
    assert grad_hidden[10:].abs().max() < 1e-5


def test_inputs_are_checked():
    case = make_case(layers=2, tokens=10, width=8, vocab=50, teacher_width=8)
    with pytest.raises(ValueError, match="multiple"):
        linear_divergence(case["hidden"][:15], case["head"], teacher_hidden=case["teacher_hidden"], teacher_head=case["teacher_head"])
    with pytest.raises(ValueError, match="target"):
        linear_divergence(case["hidden"], case["head"])
    with pytest.raises(ValueError, match="direction"):
        linear_divergence(case["hidden"], case["head"], labels=case["labels"], direction="sideways")


def test_no_vocabulary_sized_tensor_is_allocated():
    """Forward + backward at N·V = 240k logits: no single allocation reaches a tenth of the N x V
    float32 tensor the unfused op needs (the largest ones are the gradients and two tiles)."""
    case = make_case(layers=4, tokens=100, width=16, vocab=600, teacher_width=16)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run(case, "forward", token_chunk=32, vocab_chunk=64)
    largest = max(event.cpu_memory_usage for event in prof.events())
    full = case["hidden"].size(0) * case["head"].size(0) * 4
    assert 0 < largest < full / 10, (largest, full)


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU: Triton's interpreter (tests/conftest.py)


def on_device(case: dict) -> dict:
    return {k: v.to(DEVICE) for k, v in case.items()}


@needs_triton
@pytest.mark.parametrize("mode", MODES)
def test_triton_equals_reference_fp32(mode):
    case = on_device(make_case())
    reference = run(case, mode, token_chunk=16, vocab_chunk=64, backend="reference")
    fused = run(case, mode, token_chunk=16, vocab_chunk=64, backend="triton")
    for name in ("loss", "logsumexp", "entropy", "target_logit", "kl"):
        torch.testing.assert_close(getattr(fused[0], name), getattr(reference[0], name), rtol=0, atol=5e-5, equal_nan=True)
    assert torch.equal(fused[0].argmax, reference[0].argmax)
    for got, want in zip(fused[1:], reference[1:]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_triton
@pytest.mark.parametrize("mode", MODES)
def test_triton_equals_reference_bf16(mode):
    """bf16 logits carry 8 bits: where the two fp32 accumulation orders round a logit to
    different bf16 neighbours they differ by an ulp (<= |z|/128), so tolerances are ulps."""
    case = on_device(make_case(torch.bfloat16, scale=0.25))
    reference = run(case, mode, token_chunk=16, vocab_chunk=64, backend="reference")
    fused = run(case, mode, token_chunk=16, vocab_chunk=64, backend="triton")
    assert fused[0].loss.dtype == torch.float32 and fused[1].dtype == torch.bfloat16
    for name in ("loss", "logsumexp", "entropy", "target_logit", "kl"):
        torch.testing.assert_close(getattr(fused[0], name), getattr(reference[0], name), rtol=2**-6, atol=1e-2,
                                   equal_nan=True, msg=lambda m: f"{name}: {m}")
    logits = (case["hidden"] @ case["head"].T).float()
    top = logits.gather(1, fused[0].argmax[:, None])[:, 0]
    assert (top >= logits.amax(-1) - 2 ** -6).all()  # a maximum up to rounding
    # Gradients sum V terms of dz (itself rounded to bf16) that cancel (Σ_v dz = 0): an ulp's
    # difference in a logit moves them by ~1% of their largest entry (3% measured at most; a
    # wrong term moves them by O(100%)).
    for got, want in zip(fused[1:], reference[1:]):
        assert (got.float() - want.float()).abs().max() <= 5e-2 * want.float().abs().max()


@pytest.mark.slow
def test_vocabulary_parallel_two_ranks_equal_one():
    proc = run_ranks([str(REPO / "tests" / "scripts" / "divergence_ranks.py")])
    assert "ok labels, forward, reverse, logits" in proc.stdout
