"""`grow pretrain`'s speed knobs: they reach megatron-core's own config objects, the device policy
and the installed libraries decide the defaults, what cannot run is one line, the micro batch
chosen from memory is the hand-computed one, and the log says which SDPA kernel ran.

References: megatron-core's TransformerConfig / DistributedDataParallelConfig as megatron builds
them (including megatron's own refusal of the rope fusion without Transformer Engine), closed-form
memory arithmetic, torch's SDPA dispatch under `sdpa_kernel`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from grow_cli.data.info import DataInfo, SplitInfo
from grow_cli.errors import GrowError
from grow_cli.layout import Layout
from grow_cli.runtime.cpu_compat import CPU
from grow_cli.runtime.device import CUDA
from grow_cli.runtime.fusions import Extensions, Fusions
from grow_cli.shape import PRESETS
from grow_cli.training.config import RunInputs, resolve
from grow_cli.data.tokenizer_record import TokenizerRecord
from grow_cli.training.options import PretrainOptions

NO_EXTENSIONS = Extensions()
TE = Extensions(te=True)
GPT2 = TokenizerRecord(kind="tiktoken", name="gpt2", vocab_size=50257, eos="<|endoftext|>", eos_id=0)
DATA = DataInfo(prefix="/nowhere/d", tokenizer=GPT2, dtype="uint16", seed=0,
                valid_fraction=0.1, sources=(), train=SplitInfo(1, 10**9), valid=SplitInfo(1, 10**6), fingerprint="-")


def options(**changes) -> PretrainOptions:
    base = dict(data=DATA.prefix, out="/nowhere/run", size="1B", seq_len=1024, iters=10, global_batch=16, micro_batch=4)
    base.update(changes)
    return PretrainOptions(**base)


def speed_of(world_size: int = 1, device=CUDA, extensions=NO_EXTENSIONS, **changes):
    return resolve(options(**changes), RunInputs(DATA, extensions=extensions), world_size=world_size, device=device)


def test_cuda_defaults_reach_megatron_configs():
    import torch

    from grow_cli.runtime.model import transformer_config

    config = speed_of(world_size=2, dtype="bf16", bucket_size=12_000_000)
    fusions, sync = config.speed.fusions, config.speed.grad_sync
    assert fusions == Fusions(swiglu=True, cross_entropy="native", rope=False, grad_accum=False, compile=False)
    tc = transformer_config(config.shape, Layout(), dtype=torch.bfloat16, fusions=fusions)
    assert tc.bias_activation_fusion and tc.cross_entropy_loss_fusion and tc.cross_entropy_fusion_impl == "native"
    assert not (tc.apply_rope_fusion or tc.gradient_accumulation_fusion or tc.masked_softmax_fusion or tc.persist_layer_norm)
    ddp = sync.ddp_config(config.parallel.distributed_optimizer)
    assert ddp.overlap_grad_reduce and ddp.overlap_param_gather and ddp.use_distributed_optimizer
    assert ddp.bucket_size == 12_000_000 and ddp.grad_reduce_in_fp32  # DP 2 sums gradients: fp32
    # explicit choices override the defaults
    off = speed_of(world_size=2, fused_swiglu=False, cross_entropy="plain", overlap_grad_reduce=False, overlap_param_gather=False)
    tc = transformer_config(off.shape, Layout(), fusions=off.speed.fusions)
    assert not (tc.bias_activation_fusion or tc.cross_entropy_loss_fusion)
    ddp = off.speed.grad_sync.ddp_config(True)
    assert not (ddp.overlap_grad_reduce or ddp.overlap_param_gather)


def test_transformer_engine_defaults_and_megatron_refuses_rope_fusion_without_it():
    from grow_cli.runtime.model import transformer_config

    with_te = speed_of(extensions=TE, attention="te").speed.fusions
    assert with_te == Fusions(swiglu=True, cross_entropy="te", rope=True, grad_accum=True)
    assert transformer_config(PRESETS["1B"], Layout(), fusions=replace(with_te, rope=False)).cross_entropy_fusion_impl == "te"
    # the rule "rope fusion needs TE" is megatron's own: its config refuses it here (no TE installed)
    with pytest.raises(ValueError, match="apply_rope_fusion is not available"):
        transformer_config(PRESETS["1B"], Layout(), fusions=Fusions(rope=True))
    # a SLURM job runs elsewhere (extensions unknown): TE knobs are trusted, defaults assume none
    elsewhere = speed_of(extensions=None, cross_entropy="te", rope_fusion=True).speed.fusions
    assert elsewhere.cross_entropy == "te" and elsewhere.rope and not elsewhere.grad_accum


def test_cpu_policy_forces_the_cuda_parts_off():
    config = speed_of(world_size=2, device=CPU, compile=True)
    assert config.speed.fusions == Fusions(compile=True)
    sync = config.speed.grad_sync
    assert not (sync.overlap_grad_reduce or sync.overlap_param_gather) and sync.grad_dtype == "fp32"


def test_bf16_gradients_only_where_nothing_is_summed():
    assert speed_of(dtype="bf16", global_batch=4, micro_batch=4).speed.grad_sync.grad_dtype == "bf16"
    assert speed_of(dtype="bf16", global_batch=8, micro_batch=4).speed.grad_sync.grad_dtype == "fp32"  # 2 micro-batches
    assert speed_of(world_size=2, dtype="bf16", global_batch=8).speed.grad_sync.grad_dtype == "fp32"  # DP 2
    assert speed_of(world_size=2, dtype="bf16", grad_dtype="bf16").speed.grad_sync.ddp_config(True).grad_reduce_in_fp32 is False


@pytest.mark.parametrize(
    "device, extensions, world_size, changes, message",
    [
        (CUDA, NO_EXTENSIONS, 2, dict(overlap_param_gather=True, distributed_optimizer=False), "--overlap-param-gather gathers the distributed optimizer"),
        (CUDA, NO_EXTENSIONS, 2, dict(overlap_param_gather=True, overlap_grad_reduce=False), "needs --overlap-grad-reduce"),
        (CUDA, NO_EXTENSIONS, 1, dict(cross_entropy="te"), "--cross-entropy te needs Transformer Engine"),
        (CUDA, NO_EXTENSIONS, 1, dict(rope_fusion=True), "--rope-fusion needs Transformer Engine"),
        (CUDA, NO_EXTENSIONS, 1, dict(grad_accum_fusion=True), "needs Apex's fused_weight_gradient_mlp_cuda"),
        (CUDA, NO_EXTENSIONS, 1, dict(attention="te"), "--attention te needs Transformer Engine"),
        (CUDA, NO_EXTENSIONS, 1, dict(cross_entropy="fast"), "choose one of plain, native, te"),
        (CUDA, NO_EXTENSIONS, 1, dict(grad_dtype="bf16", dtype="fp32"), "--grad-dtype bf16 needs --dtype bf16"),
        (CUDA, NO_EXTENSIONS, 1, dict(bucket_size=0), "--bucket-size must be positive"),
        (CUDA, NO_EXTENSIONS, 1, dict(gpu="h100"), "--gpu sizes the micro batch from memory, --micro-batch pins it"),
        (CPU, NO_EXTENSIONS, 1, dict(fused_swiglu=True), "--fused-swiglu is a CUDA kernel"),
        (CPU, NO_EXTENSIONS, 1, dict(cross_entropy="native"), "--cross-entropy native is a CUDA kernel"),
        (CPU, NO_EXTENSIONS, 2, dict(overlap_grad_reduce=True), "--overlap-grad-reduce needs CUDA streams"),
    ],
)
def test_infeasible_combination_is_one_line(device, extensions, world_size, changes, message):
    with pytest.raises(GrowError, match=message) as error:
        speed_of(world_size=world_size, device=device, extensions=extensions, **changes)
    assert "\n" not in str(error.value)


def hand_micro_batch(shape, dp: int, global_batch: int, capacity_gib: float) -> int:
    """planning/memory.py's model solved for b by hand: (6 + 12/DP)·N + b·s·(34·L·h + 4·V) <= capacity."""
    from grow_cli.planning.memory import params_per_gpu

    state = params_per_gpu(shape).first * (6 + 12 / dp)
    per_sequence = shape.seq_len * (34 * shape.layers * shape.hidden + 4 * shape.padded_vocab(1))
    most = math.floor((capacity_gib * 2**30 - state) / per_sequence)
    return max(b for b in range(1, global_batch // dp + 1) if (global_batch // dp) % b == 0 and b <= most)


@pytest.mark.parametrize("gpu, world_size, global_batch, seq_len", [("h100", 1, 512, 1024), ("h200", 1, 512, 1024),
                                                                     ("a100", 4, 96, 4096), ("h100", 2, 64, 2048)])
def test_micro_batch_from_memory_matches_hand_computation(gpu, world_size, global_batch, seq_len):
    from grow_cli.planning.hardware import gpu_spec
    from grow_cli.planning.memory import estimate_memory

    config = speed_of(world_size=world_size, micro_batch=None, gpu=gpu, global_batch=global_batch, seq_len=seq_len)
    spec = gpu_spec(gpu)
    expected = hand_micro_batch(config.shape, world_size, global_batch, spec.usable_gib)
    assert config.batch.micro_batch == expected > 1
    layout = config.parallel.layout
    assert estimate_memory(config.shape, layout, expected, global_batch).total_gib <= spec.usable_gib


def test_micro_batch_that_never_fits_is_one_line():
    with pytest.raises(GrowError, match="not even micro batch 1 fits NVIDIA A100") as error:
        speed_of(micro_batch=None, gpu="a100", size="8B", seq_len=8192)
    assert "\n" not in str(error.value)


def test_sdpa_reports_the_kernel_torch_dispatched_to(megatron_runtime, tiny_shape):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from grow_cli.runtime.attention import backends_used
    from grow_cli.runtime.model import build_gpt_model

    tokens = torch.randint(0, tiny_shape.vocab, (2, tiny_shape.seq_len))
    positions = torch.arange(tiny_shape.seq_len).expand(2, -1)
    for backend, name in ((SDPBackend.MATH, "math"), (SDPBackend.FLASH_ATTENTION, "flash")):
        model = build_gpt_model(tiny_shape, megatron_runtime.layout)
        assert backends_used(model) == ()
        with sdpa_kernel(backend), torch.no_grad():
            model(tokens, positions, None)
        assert backends_used(model) == (name,)


def test_compile_wraps_every_transformer_layer(megatron_runtime, tiny_shape):
    from grow_cli.runtime.model import build_gpt_model

    compiled = build_gpt_model(tiny_shape, megatron_runtime.layout, fusions=Fusions(compile=True))
    plain = build_gpt_model(tiny_shape, megatron_runtime.layout)
    assert all(layer._compiled_call_impl is not None for layer in compiled.decoder.layers)
    assert all(layer._compiled_call_impl is None for layer in plain.decoder.layers)
