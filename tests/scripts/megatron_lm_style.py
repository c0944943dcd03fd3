"""The Megatron-LM side of tests/test_megatron_lm.py, written from megatron/training at core_v0.16.1
with megatron-core only (no Megatron-LM code, no grow model code): save checkpoints the way
`save_checkpoint` does and load checkpoints the way `load_checkpoint` does.

Usage (plain python, or torchrun): megatron_lm_style.py JOBS_JSON
JOBS_JSON: {"tokens": FILE, "jobs": [...]}, each job with a "layout" [tp, pp] and a "mode":
- "save": build the model `pretrain_gpt.py` builds from "args" (a dict of Megatron-LM args),
  take its weights from "weights" (a torch_dist checkpoint, resharded by megatron-core) or draw
  them from "seed", optionally wrap it in DDP with an Adam optimizer ("optimizer": "plain" or
  "distributed"; "te_extra_state" adds Transformer Engine's extra objects), and save {model, args, iteration, checkpoint_version, optimizer,
  opt_param_scheduler, rng_state, rerun_state_machine, ...} under SAVE/iter_N + the tracker;
- "load": parse "flags" (`grow megatron-args --json`) like pretrain_gpt.py, apply
  `--use-checkpoint-args` when "use_checkpoint_args", read the tracker, check the args the way
  `check_checkpoint_args` does, load with `dist_checkpointing.load(strict=assume_ok_unexpected)`
  and `load_state_dict(strict=True)`.
Both dump logits (PP=1 only) gathered over TP, cut to "vocab", to "logits" from rank 0.
"""

import argparse
import json
import math
import os
import random
import sys
from pathlib import Path

import numpy
import torch
import torch.nn.functional as F

TRACKER = "latest_checkpointed_iteration.txt"


def megatron_args(values: dict, tp: int, pp: int) -> argparse.Namespace:
    """A Megatron-LM args Namespace: its defaults for what a Llama run leaves unset, then `values`."""
    args = dict(
        normalization="LayerNorm", norm_epsilon=1e-5, swiglu=False, add_bias_linear=True, add_qkv_bias=False,
        position_embedding_type="learned_absolute", add_position_embedding=True, rotary_base=10000,
        rotary_percent=1.0, rotary_interleaved=False, untie_embeddings_and_output_weights=False,
        group_query_attention=False, num_query_groups=1, kv_channels=None, qk_layernorm=False,
        make_vocab_size_divisible_by=128, num_experts=None, mtp_num_layers=None, apply_layernorm_1p=False,
        use_rope_scaling=False, rope_scaling_factor=8.0, squared_relu=False, ckpt_format="torch_dist",
        use_distributed_optimizer=False, tokenizer_type=None, vocab_size=None, vocab_file=None,
        consumed_train_samples=0, no_save_optim=None, no_save_rng=None,
    )
    args.update(values)
    args.update(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                world_size=torch.distributed.get_world_size(),
                data_parallel_size=torch.distributed.get_world_size() // (tp * pp))
    return argparse.Namespace(**args)


def tokenizer_vocab(args) -> int:
    """The vocabulary Megatron-LM's build_tokenizer reports for these args."""
    if args.tokenizer_type == "GPT2BPETokenizer":
        return 50257
    assert args.tokenizer_type == "NullTokenizer", args.tokenizer_type
    return args.vocab_size + 1


def padded_vocab(args) -> int:
    """_vocab_size_with_padding."""
    multiple = args.make_vocab_size_divisible_by * args.tensor_model_parallel_size
    return int(math.ceil(tokenizer_vocab(args) / multiple) * multiple)


def model_from_args(args):
    """pretrain_gpt.py's model_provider for the local spec: core_transformer_config_from_args + GPTModel."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(
        num_layers=args.num_layers, hidden_size=args.hidden_size, ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups if args.group_query_attention else None,
        kv_channels=args.kv_channels, normalization=args.normalization, layernorm_epsilon=args.norm_epsilon,
        gated_linear_unit=args.swiglu, activation_func=F.silu if args.swiglu else F.gelu,
        add_bias_linear=args.add_bias_linear, add_qkv_bias=args.add_qkv_bias, qk_layernorm=args.qk_layernorm,
        hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        pipeline_dtype=torch.float32, use_cpu_initialization=True,
        gradient_accumulation_fusion=False, masked_softmax_fusion=False, bias_activation_fusion=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, persist_layer_norm=False,
    )
    return GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization=args.normalization, qk_layernorm=args.qk_layernorm),
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
        rope_scaling=args.use_rope_scaling,
        rope_scaling_factor=args.rope_scaling_factor,
    )


def randomize(model, seed: int) -> None:
    """std 0.2 weights, norm gains around 1 (megatron's init hides swapped norms or RoPE errors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.3 * noise if "norm" in name else 0.2 * noise)


def rng_object():
    """get_rng_state for torch_dist without expert parallelism."""
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    state = {"random_rng_state": random.getstate(), "np_rng_state": numpy.random.get_state(),
             "torch_rng_state": torch.get_rng_state(), "cuda_rng_state": torch.get_rng_state(),
             "rng_tracker_states": tensor_parallel.get_cuda_rng_tracker().get_states()}
    return ShardedObject("rng_state", [state],
                         (parallel_state.get_pipeline_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_world_size()),
                         (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()),
                         replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True))


def rerun_object():
    """The rerun state machine's torch_dist state (one object per rank)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    state = {"mode": "disabled", "rerun_requested": False, "checkpoint_requested": False, "restart_again_requested": False,
             "continue_requested": False, "rng_states": None}
    return ShardedObject("rerun_state_machine_state", state, (torch.distributed.get_world_size(),),
                         (torch.distributed.get_rank(),), replica_id=0)


def te_extra_state(args) -> dict:
    """The `_extra_state` entries a Transformer Engine spec adds to the local spec's (PP=1 only):
    TEDotProductAttention's per layer and TENorm's for the final norm (FP8 metadata: bytes)."""
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    replica = parallel_state.get_tensor_model_parallel_rank()
    layers = args.num_layers
    objects = {
        f"te.core_attention.{layer}": ShardedObject("decoder.layers.self_attention.core_attention._extra_state",
                                                    torch.arange(4, dtype=torch.uint8), (layers,), (layer,), replica_id=replica)
        for layer in range(layers)
    }
    objects["te.final_norm"] = ShardedObject("decoder.final_layernorm._extra_state", torch.arange(4, dtype=torch.uint8),
                                             (1,), (0,), replica_id=replica)
    return objects


def with_optimizer(model, kind: str):
    """DDP + megatron's Adam (distributed or not), stepped once so its state exists."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    distributed = kind == "distributed"
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(use_distributed_optimizer=distributed), model)
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-4, use_distributed_optimizer=distributed), [ddp])
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner.init_state_fn(inner.optimizer, inner.config)
        for group in inner.optimizer.param_groups:
            for param in group["params"]:
                inner.optimizer.state[param].setdefault("step", torch.tensor(1.0))
    return ddp, optimizer


def save(job: dict, tp: int, pp: int) -> object:
    from megatron.core import dist_checkpointing, parallel_state

    args = megatron_args(job["args"], tp, pp)
    args.use_distributed_optimizer = job.get("optimizer") == "distributed"
    args.padded_vocab_size = padded_vocab(args)
    model = model_from_args(args)
    if "weights" in job:
        loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, job["weights"])
        model.load_state_dict(loaded["model"])
    else:
        randomize(model, job["seed"])
    metadata = {"distrib_optim_sharding_type": "dp_reshardable"} if args.use_distributed_optimizer else {}
    dp_group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    state = {"args": args, "checkpoint_version": 3.0, "iteration": job["iteration"],
             "num_floating_point_operations_so_far": 0, "rng_state": rng_object(), "rerun_state_machine": rerun_object()}
    if job.get("optimizer"):
        ddp, optimizer = with_optimizer(model, job["optimizer"])
        state["model"] = ddp.module.sharded_state_dict(metadata={**metadata, "dp_cp_group": dp_group})
        state["optimizer"] = optimizer.sharded_state_dict(state, metadata={**metadata, "dp_cp_group": dp_group})
        state["opt_param_scheduler"] = {"max_lr": 1e-4, "num_steps": job["iteration"]}
    else:
        state["model"] = model.sharded_state_dict(metadata={"dp_cp_group": dp_group})
    if job.get("te_extra_state"):
        state["model"].update(te_extra_state(args))
    directory = Path(job["save_dir"]) / f"iter_{job['iteration']:07d}"
    if torch.distributed.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(state, str(directory), content_metadata=metadata or None)
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        (Path(job["save_dir"]) / TRACKER).write_text(str(job["iteration"]))
    return model, tokenizer_vocab(args)


def parse_flags(flags: list[str], tp: int, pp: int) -> argparse.Namespace:
    """The subset of pretrain_gpt.py's parser that `grow megatron-args` emits (same names, defaults)."""
    parser = argparse.ArgumentParser()
    for name in ("--num-layers", "--hidden-size", "--ffn-hidden-size", "--num-attention-heads", "--kv-channels",
                 "--num-query-groups", "--seq-length", "--max-position-embeddings", "--rotary-base"):
        parser.add_argument(name, type=int)
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    parser.add_argument("--norm-epsilon", type=float, default=1e-5)
    parser.add_argument("--rope-scaling-factor", type=float, default=8.0)
    parser.add_argument("--position-embedding-type", default="learned_absolute")
    parser.add_argument("--normalization", default="LayerNorm")
    parser.add_argument("--ckpt-format", default="torch_dist")
    parser.add_argument("--load")
    for name in ("--use-mcore-models", "--group-query-attention", "--swiglu", "--untie-embeddings-and-output-weights",
                 "--use-rope-scaling", "--finetune", "--no-load-optim", "--no-load-rng"):
        parser.add_argument(name, action="store_true")
    parser.add_argument("--disable-bias-linear", action="store_false", dest="add_bias_linear")
    parsed = parser.parse_args(flags)
    args = megatron_args({}, tp, pp)
    for key, value in vars(parsed).items():
        setattr(args, key, value)
    return args


MODEL_ARGS_FORCED = ("num_query_groups", "group_query_attention", "position_embedding_type", "add_position_embedding",
                     "rotary_base", "rotary_percent", "rotary_interleaved", "add_bias_linear", "add_qkv_bias",
                     "squared_relu", "swiglu", "untie_embeddings_and_output_weights", "apply_layernorm_1p",
                     "normalization", "num_experts")
MODEL_ARGS_UNSET = ("num_layers", "hidden_size", "ffn_hidden_size", "seq_length", "num_attention_heads", "kv_channels",
                    "max_position_embeddings", "padded_vocab_size")


def load(job: dict, tp: int, pp: int) -> object:
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.dist_checkpointing.validation import StrictHandling

    args = parse_flags(job["flags"], tp, pp)
    args.tokenizer_type, args.vocab_size = job["tokenizer_type"], job.get("vocab_size")
    load_dir = Path(job["load_dir"])
    text = (load_dir / TRACKER).read_text().strip()  # read_metadata
    release = text == "release"
    iteration = 0 if release else int(text)
    name = "release" if release else f"iter_{iteration:07d}"
    directory = load_dir / name
    assert dist_checkpointing.check_is_distributed_checkpoint(str(directory)), directory
    common = dist_checkpointing.load_common_state_dict(str(directory))
    checkpoint_args = common["args"]
    if job.get("use_checkpoint_args"):  # load_args_from_checkpoint
        for key in MODEL_ARGS_FORCED:
            if getattr(checkpoint_args, key, None) is not None:
                setattr(args, key, getattr(checkpoint_args, key))
        for key in MODEL_ARGS_UNSET:
            if getattr(args, key, None) is None and getattr(checkpoint_args, key, None) is not None:
                setattr(args, key, getattr(checkpoint_args, key))
    if getattr(args, "padded_vocab_size", None) is None:  # build_tokenizer
        args.padded_vocab_size = padded_vocab(args)
    metadata = dist_checkpointing.load_content_metadata(preloaded_state_dict=common) or {}
    model = model_from_args(args)
    dp_group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    request = {"args": args, "checkpoint_version": 3.0,
               "model": model.sharded_state_dict(metadata={**metadata, "dp_cp_group": dp_group})}
    state = dist_checkpointing.load(request, str(directory), strict=StrictHandling.ASSUME_OK_UNEXPECTED)
    if not (args.finetune or release):
        iteration = state["iteration"]  # a checkpoint without it makes Megatron-LM exit
        for key in ("num_layers", "hidden_size", "num_attention_heads"):  # check_checkpoint_args
            assert getattr(checkpoint_args, key) == getattr(args, key), key
        assert getattr(checkpoint_args, "add_position_embedding", True) == args.add_position_embedding
    assert state["checkpoint_version"] >= 3.0
    model.load_state_dict(state["model"], strict=True)
    report = {"iteration": iteration, "padded_vocab_size": args.padded_vocab_size,
              "checkpoint_padded_vocab_size": checkpoint_args.padded_vocab_size, "norm_epsilon": args.norm_epsilon,
              "checkpoint_norm_epsilon": checkpoint_args.norm_epsilon}
    if torch.distributed.get_rank() == 0 and job.get("report"):
        Path(job["report"]).write_text(json.dumps(report))
    return model, tokenizer_vocab(args)


def logits(model, tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    model.eval()
    positions = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
    with torch.no_grad():
        out = model(tokens, positions, None)
    return gather_from_tensor_model_parallel_region(out)[..., :vocab]


def main() -> None:
    from grow_cli.runtime.distributed import init_distributed, shutdown

    spec = json.loads(Path(sys.argv[1]).read_text())
    tokens = torch.load(spec["tokens"])
    for job in spec["jobs"]:
        tp, pp = job["layout"]
        init_distributed(tp=tp, pp=pp)
        model, vocab = (save if job["mode"] == "save" else load)(job, tp, pp)
        if job.get("logits") and pp == 1:
            out = logits(model, tokens, vocab)
            if torch.distributed.get_rank() == 0:
                torch.save(out, job["logits"])
    shutdown()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
