"""Memory per GPU: per-rank parameters against real sharded megatron models, the rest by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grow_cli.errors import GrowError
from grow_cli.planning.hardware import gpu_spec
from grow_cli.units import GIB
from grow_cli.planning.memory import check_batch, estimate_memory, params_per_gpu, smallest_fitting_layout
from grow_cli.layout import Layout
from grow_cli.shape import PRESETS, ModelShape

HERE = Path(__file__).parent

SHAPES = [
    ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=2, head_dim=16, vocab=1000, seq_len=32),
    ModelShape(hidden=64, ffn=160, layers=4, heads=4, kv_groups=4, head_dim=16, vocab=300, seq_len=16, tied_embeddings=True),
]


@pytest.mark.slow
def test_params_per_gpu_match_sharded_megatron_models():
    from conftest import run_ranks

    proc = run_ranks([str(HERE / "scripts" / "plan_params_per_rank.py"), json.dumps([s.to_dict() for s in SHAPES])])
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 2 * len(SHAPES)
    for result in results:
        shape, tp, pp = SHAPES[result["shape"]], result["tp"], result["pp"]
        expected = params_per_gpu(shape, tp, pp)
        for pipeline_rank, count in result["ranks"]:
            is_last = pipeline_rank == pp - 1
            assert count == (expected.last if is_last else expected.first), (result, expected)


def test_params_per_gpu_add_up_to_the_model():
    for shape in (PRESETS["1B"], *SHAPES):
        vocab = shape.padded_vocab(1)
        total = shape.padded(1).param_counts().total
        tied_copy = vocab * shape.hidden if shape.tied_embeddings else 0  # PP>1 keeps a second copy
        pp = params_per_gpu(shape, 1, 2)
        assert pp.first + pp.last == total + tied_copy
        one = params_per_gpu(shape, 1, 1)
        assert one.first == one.last == total


def test_8b_memory_by_hand():
    shape = PRESETS["8B"]
    h, s, layers, vocab = 4096, 1024, 33, 51200  # 50257 padded to 128 x 8
    params = shape.param_counts().nonembedding + 2 * vocab * h  # the built model: padded rows, untied
    activations = layers * 34 * s * h + 4 * s * vocab
    single = estimate_memory(shape, Layout(), micro_batch=1, global_batch=512)
    assert single.params == params
    assert single.total_gib * GIB == pytest.approx(18 * params + activations, rel=1e-12)
    data_parallel = estimate_memory(shape, Layout(dp=8), micro_batch=1, global_batch=512)
    assert data_parallel.total_gib * GIB == pytest.approx(7.5 * params + activations, rel=1e-12)
    micro = estimate_memory(shape, Layout(dp=8), micro_batch=4, global_batch=512)
    assert micro.activations_gib == pytest.approx(4 * data_parallel.activations_gib, rel=1e-12)


def test_pipeline_first_stage_holds_microbatches_in_flight():
    shape = PRESETS["8B"]
    h, s, vocab = 4096, 1024, 51200
    layer = shape.layer_params()
    # TP 1, PP 3, DP 1: 11 layers per stage; 512 microbatches, so PP = 3 are in flight on stage 1
    estimate = estimate_memory(shape, Layout(pp=3), micro_batch=1, global_batch=512)
    first = (11 * layer + vocab * h) * 18 + 3 * 11 * 34 * s * h
    last = (11 * layer + h + vocab * h) * 18 + 11 * 34 * s * h + 4 * s * vocab
    assert estimate.stage == ("first" if first > last else "last")
    assert estimate.total_gib * GIB == pytest.approx(max(first, last), rel=1e-12)
    # with two microbatches per step only two are ever in flight
    few = estimate_memory(shape, Layout(pp=3, dp=8), micro_batch=32, global_batch=512)
    expected = (11 * layer + vocab * h) * (6 + 12 / 8) + 2 * 11 * 34 * s * 32 * h
    assert few.stage == "first" and few.total_gib * GIB == pytest.approx(expected, rel=1e-12)


def test_tensor_parallel_splits_weights_and_activations():
    shape = PRESETS["8B"]
    full, split = estimate_memory(shape, Layout(), 1, 512), estimate_memory(shape, Layout(tp=4), 1, 512)
    h = 4096
    assert split.params == 33 * ((shape.layer_params() - 2 * h) // 4 + 2 * h) + h + 2 * (51200 // 4) * h
    assert split.activations_gib == pytest.approx(full.activations_gib / 4, rel=1e-3)


def test_smallest_fitting_layout_is_smallest():
    h100 = gpu_spec("h100")
    for name, capacity in (("4B", h100.usable_gib), ("8B", h100.usable_gib), ("8B", 20.0)):
        shape = PRESETS[name]
        layout, estimate = smallest_fitting_layout(shape, capacity, micro_batch=1, global_batch=512)
        assert estimate.total_gib <= capacity
        assert estimate == estimate_memory(shape, layout, 1, 512)
        for gpus in (g for g in (1, 2, 4, 8, 16) if g < layout.world_size):
            for tp in shape.feasible_tp(8):
                for pp in (p for p in range(1, shape.layers + 1) if shape.layers % p == 0):
                    if gpus % (tp * pp) or 512 % (gpus // (tp * pp)):
                        continue
                    smaller = estimate_memory(shape, Layout(tp, pp, gpus // (tp * pp)), 1, 512)
                    assert smaller.total_gib > capacity, (name, tp, pp, gpus)


def test_batch_must_divide():
    assert check_batch(512, 2, 8) == 32
    with pytest.raises(GrowError, match="not divisible by micro batch 3 x DP 8"):
        check_batch(512, 3, 8)
