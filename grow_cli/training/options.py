"""The options of `grow pretrain` and `grow slurm`, each declared once (flag, help, default).

`PretrainOptions` is what the user typed for the run (None = "take it from the plan or the
default below"); both commands take it, and `grow slurm` forwards it to the job's `grow pretrain`.
`SlurmOptions` (the allocation and the script) belong to `grow slurm` only, `ReportOptions` (how
the result is printed) to both without being forwarded. The defaults that depend on the plan
live here too, so the help text and `resolve_config` say the same thing.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

from grow_cli.options import option
from grow_cli.runtime.fusions import CROSS_ENTROPY
from grow_cli.shape import DEFAULT_SEQ_LEN
from grow_cli.training.slurm import SlurmJob

DEFAULT_LR = 3.0e-4  # the reference method's from-scratch rate (spec §1)
DEFAULT_GLOBAL_BATCH = 32
DEFAULT_MICRO_BATCH = 1

MODEL = "Model (a plan stage, or --size / shape flags)"
RUN = "Data, output and length"
OPT = "Optimisation"
PAR = "Parallelism and precision"
SPEED = "Speed (fused kernels, overlap, micro batch from memory)"
LOG = "Logging and checkpoints"
SLURM = "SLURM job"


@dataclass(frozen=True, kw_only=True)  # keyword-only: the fields follow the help panels
class PretrainOptions:
    """The flags of one training run as given; None means "take it from the plan or the default"."""

    plan: Annotated[Optional[str], option("--plan", "Plan file written by `grow plan --out`.", MODEL)] = None
    stage: Annotated[Optional[str], option("--stage", "Plan stage: number (1, 2...) or name (2B).", MODEL)] = None
    size: Annotated[Optional[str], option("--size", "Without a plan: model size, e.g. 2M or 1B (preset or auto-shaped).", MODEL)] = None
    hidden: Annotated[Optional[int], option("--hidden", "Without a plan: hidden size.", MODEL)] = None
    ffn: Annotated[Optional[int], option("--ffn", "Without a plan: FFN size.", MODEL)] = None
    layers: Annotated[Optional[int], option("--layers", "Without a plan: number of layers.", MODEL)] = None
    heads: Annotated[Optional[int], option("--heads", "Without a plan: attention heads.", MODEL)] = None
    kv_groups: Annotated[Optional[int], option("--kv-groups", "KV groups (GQA); default: one per head.", MODEL)] = None
    head_dim: Annotated[Optional[int], option("--head-dim", "Head dimension; default hidden / heads.", MODEL)] = None
    seq_len: Annotated[Optional[int], option("--seq-len", f"Sequence length (default: the plan's, else {DEFAULT_SEQ_LEN}).", MODEL)] = None
    init: Annotated[
        Optional[str],
        option("--init", "Start from this checkpoint's weights (e.g. `grow expand` output); fresh optimizer and schedule.", MODEL),
    ] = None
    vocab: Annotated[
        Optional[int],
        option("--vocab", "Tokenizer size (before padding) of a Megatron-LM --init whose args do not tell it (e.g. HuggingFaceTokenizer); default: --data's tokenizer, so rarely needed.", MODEL),
    ] = None
    from_scratch: Annotated[
        bool, option("--from-scratch", "Train a plan stage that grows from an earlier one from random weights instead of --init.", MODEL)
    ] = False
    data: Annotated[str, option("--data", "Prepared data prefix (`grow data prepare --out PREFIX`).", RUN)]
    out: Annotated[str, option("--out", "Run directory: checkpoints, metrics.jsonl, tensorboard/.", RUN)]
    iters: Annotated[Optional[int], option("--iters", "Optimizer steps (default: the plan stage's token budget).", RUN)] = None
    tokens: Annotated[Optional[str], option("--tokens", "Token budget instead of --iters, e.g. 20B.", RUN)] = None
    resume: Annotated[
        bool, option("--resume/--no-resume", "Resume from --out's latest checkpoint; --no-resume refuses a directory that has one.", RUN)
    ] = True
    seed: Annotated[int, option("--seed", "Seed of initialisation and data order (a run continuing --init's data keeps its order).", RUN)] = 1234
    data_start: Annotated[
        Optional[str],
        option("--data-start", "First sample to train on: 'continue' (default: after the samples --init's lineage read, on the same data) or a position, e.g. 0.", RUN),
    ] = None
    lr: Annotated[Optional[float], option("--lr", f"Peak learning rate (default: the plan's, else {DEFAULT_LR:g}).", OPT)] = None
    min_lr: Annotated[Optional[float], option("--min-lr", "Final learning rate of the cosine decay (default lr/10).", OPT)] = None
    warmup_iters: Annotated[Optional[int], option("--warmup-iters", "Linear warmup steps (default: the plan's, else 1%).", OPT)] = None
    global_batch: Annotated[
        Optional[int], option("--global-batch", f"Sequences per optimizer step (default: the plan's, else {DEFAULT_GLOBAL_BATCH}).", OPT)
    ] = None
    micro_batch: Annotated[
        Optional[int], option("--micro-batch", f"Sequences per forward pass per GPU (default: the plan's, else {DEFAULT_MICRO_BATCH}).", OPT)
    ] = None
    weight_decay: Annotated[float, option("--weight-decay", "AdamW weight decay (not on norms).", OPT)] = 0.1
    clip_grad: Annotated[float, option("--clip-grad", "Gradient-norm clipping threshold.", OPT)] = 1.0
    tp: Annotated[Optional[int], option("--tp", "Tensor-parallel size (default: the plan's, else 1).", PAR)] = None
    pp: Annotated[Optional[int], option("--pp", "Pipeline-parallel size (default: the plan's, else 1).", PAR)] = None
    attention: Annotated[str, option("--attention", "Core attention: sdpa, te (Transformer Engine) or local.", PAR)] = "sdpa"
    dtype: Annotated[Optional[str], option("--dtype", "bf16 or fp32 (default: bf16 on CUDA, fp32 on CPU).", PAR)] = None
    sequence_parallel: Annotated[
        Optional[bool],
        option("--sequence-parallel/--no-sequence-parallel", "Megatron sequence parallelism (default: on when TP > 1 on GPU).", PAR),
    ] = None
    distributed_optimizer: Annotated[
        bool, option("--distributed-optimizer/--no-distributed-optimizer", "Shard optimizer state over DP ranks (ZeRO-1).", PAR)
    ] = True
    recompute: Annotated[str, option("--recompute", "Activation recomputation: none, selective or full.", PAR)] = "none"
    peak_tflops: Annotated[
        Optional[float], option("--peak-tflops", "Peak dense TFLOP/s per device for MFU (default: known GPUs).", PAR)
    ] = None
    gpu: Annotated[
        Optional[str],
        option("--gpu", "Without --micro-batch: the largest micro batch whose planned memory fits this GPU (h100, h200, a100).", SPEED),
    ] = None
    fused_swiglu: Annotated[
        Optional[bool], option("--fused-swiglu/--no-fused-swiglu", "megatron's torch.compile'd SwiGLU (default: on on GPU, off on CPU).", SPEED)
    ] = None
    cross_entropy: Annotated[
        Optional[str],
        option("--cross-entropy", f"Loss kernel: {', '.join(CROSS_ENTROPY)} (default: te with Transformer Engine, else native on GPU, plain on CPU).", SPEED),
    ] = None
    rope_fusion: Annotated[
        Optional[bool], option("--rope-fusion/--no-rope-fusion", "Transformer Engine's fused rotary embedding (default: on with TE on GPU).", SPEED)
    ] = None
    grad_accum_fusion: Annotated[
        Optional[bool],
        option("--grad-accum-fusion/--no-grad-accum-fusion", "Weight-gradient GEMM accumulates into the fp32 gradient (TE or Apex; default: on where available).", SPEED),
    ] = None
    overlap_grad_reduce: Annotated[
        Optional[bool], option("--overlap-grad-reduce/--no-overlap-grad-reduce", "Reduce gradients during backward (default: on on GPU).", SPEED)
    ] = None
    overlap_param_gather: Annotated[
        Optional[bool],
        option("--overlap-param-gather/--no-overlap-param-gather", "Distributed optimizer: gather updated weights during the next forward (default: on on GPU with DP > 1).", SPEED),
    ] = None
    bucket_size: Annotated[
        Optional[int], option("--bucket-size", "Parameters per gradient-reduce bucket (default: megatron's max(40M, 1M x DP)).", SPEED)
    ] = None
    grad_dtype: Annotated[
        Optional[str],
        option("--grad-dtype", "Gradient buffer and reduction dtype, fp32 or bf16 (default: bf16 only where it is exact, see docs/training.md).", SPEED),
    ] = None
    compile: Annotated[
        bool, option("--compile/--no-compile", "torch.compile each transformer layer (default off: unmeasured, see docs/benchmarks.md).", SPEED)
    ] = False
    log_interval: Annotated[int, option("--log-interval", "Log every N steps.", LOG)] = 10
    eval_interval: Annotated[int, option("--eval-interval", "Validate every N steps (and at the end).", LOG)] = 1000
    eval_iters: Annotated[int, option("--eval-iters", "Global batches of validation data per validation.", LOG)] = 10
    save_interval: Annotated[int, option("--save-interval", "Checkpoint every N steps (and at the end).", LOG)] = 1000
    keep_last: Annotated[int, option("--keep-last", "Checkpoints to keep (the newest is never deleted).", LOG)] = 2
    exit_interval: Annotated[
        Optional[int], option("--exit-interval", "Checkpoint and stop when the iteration is a multiple of N.", LOG)
    ] = None
    quiet: Annotated[bool, option("--quiet", "No progress bar or log lines (metrics files are still written).", LOG)] = False


@dataclass(frozen=True)
class ReportOptions:
    """How the command reports on stdout (not forwarded to a SLURM job)."""

    as_json: Annotated[bool, option("--json", "Print the summary as JSON on stdout.", LOG)] = False


@dataclass(frozen=True)
class SlurmOptions:
    """The allocation and the script of `grow slurm`; the run itself is `PretrainOptions`."""

    nodes: Annotated[int, option("--nodes", "Nodes to allocate.", SLURM)] = 1
    gpus_per_node: Annotated[int, option("--gpus-per-node", "GPUs (processes) per node.", SLURM)] = 8
    time: Annotated[Optional[str], option("--time", "Job time limit, e.g. 24:00:00.", SLURM)] = None
    partition: Annotated[Optional[str], option("--partition", "SLURM partition.", SLURM)] = None
    account: Annotated[Optional[str], option("--account", "SLURM account.", SLURM)] = None
    cpus_per_task: Annotated[Optional[int], option("--cpus-per-task", "CPUs per node task.", SLURM)] = None
    signal_lead: Annotated[
        int, option("--signal-lead", "Seconds before the time limit at which to checkpoint and requeue.", SLURM)
    ] = SlurmJob.signal_lead_s
    setup: Annotated[
        Optional[list[str]], option("--setup", "Shell line to run before srun (repeatable), e.g. 'source venv/bin/activate'.", SLURM)
    ] = None
    script: Annotated[Optional[str], option("--script", "Where to write the script (default OUT/pretrain.sbatch).", SLURM)] = None
    submit: Annotated[bool, option("--submit", "Submit the script with sbatch.", SLURM)] = False
    force: Annotated[bool, option("--force", "Replace an existing script.", SLURM)] = False

    def job(self, out: str) -> SlurmJob:
        """The allocation for the run directory `out`."""
        return SlurmJob(
            nodes=self.nodes, gpus_per_node=self.gpus_per_node, out=Path(out).expanduser().resolve(),
            time=self.time, partition=self.partition, account=self.account, cpus_per_task=self.cpus_per_task,
            signal_lead_s=self.signal_lead, setup=tuple(self.setup or ()),
        )
