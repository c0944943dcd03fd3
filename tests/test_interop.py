"""grow export / grow import against transformers (LlamaForCausalLM) and megatron-core GPTModel.

References: megatron-core's own forward pass on the saved checkpoint (export), transformers'
forward pass on a model it created (import), tiktoken's GPT-2 encoding (tokenizer files), and
the original checkpoint tensors (round trip, compared exactly).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from grow_cli.checkpoint import layout
from grow_cli.checkpoint.metadata import COMMON_KEY, CheckpointInfo, read_info
from grow_cli.checkpoint.tensors import CheckpointReader, whole, write_checkpoint
from grow_cli.errors import GrowError
from grow_cli.interop.export import export_checkpoint
from grow_cli.interop.hf_config import shape_from_llama_config
from grow_cli.interop.import_ import import_llama
from grow_cli.interop.safetensors_io import INDEX_FILE, parse_size, plan_shards, write_shards
from grow_cli.shape import ModelShape

from conftest import run_grow, run_ranks

SCRIPT = Path(__file__).parent / "scripts" / "interop_megatron.py"
SEQ, BATCH = 32, 2
BASE = dict(hidden=64, ffn=176, layers=2, head_dim=16, seq_len=SEQ)
VARIANTS = {
    "mha_untied": ModelShape(heads=4, kv_groups=4, vocab=1000, rope_theta=500000.0, norm_eps=1e-5, **BASE),
    "gqa_tied": ModelShape(heads=4, kv_groups=2, vocab=1000, tied_embeddings=True, norm_eps=1e-6, **BASE),
    # heads * head_dim (32) != hidden (64): megatron's kv_channels / HF's head_dim
    "narrow_heads_tied": ModelShape(heads=2, kv_groups=1, vocab=1000, tied_embeddings=True, **BASE),
    "gqa_untied_gpt2": ModelShape(heads=4, kv_groups=2, vocab=50257, **BASE),
}
SHARD_SIZE = 300_000  # bytes: several shards for the tiny models
SAMPLE_TEXTS = [
    "Hello world",
    "  leading spaces\n\n\ttabs and   runs of   spaces  \n",
    "héllo wörld — “quotes”, 日本語, emoji 🤖 and a\u00a0non-breaking space",
    "I'm sure they'll say it's 12345 or 3.14159, OK?",
]


def _tokens() -> torch.Tensor:
    return torch.randint(0, 1000, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def _megatron(tmp: Path, jobs: list[dict], nproc: int = 1) -> None:
    tokens = tmp / "tokens.pt"
    if not tokens.exists():
        torch.save(_tokens(), tokens)
    spec = tmp / f"jobs_{len(list(tmp.glob('jobs_*.json')))}.json"
    spec.write_text(json.dumps({"tokens": str(tokens), "jobs": jobs}))
    run_ranks([str(SCRIPT), str(spec)], nproc=nproc)


def _hf_logits(directory: Path, vocab: int) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = model(_tokens()).logits
    assert logits.shape == (BATCH, SEQ, vocab)
    return logits


def _assert_close(actual: torch.Tensor, reference: torch.Tensor) -> None:
    error = (actual - reference).abs().max().item()
    scale = reference.abs().max().item()
    assert scale > 1.0, "degenerate reference logits"
    assert error <= 1e-4 * scale, f"max |delta| {error:.3g} vs max |logit| {scale:.3g}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="module")
def saved(work) -> dict[str, Path]:
    """One megatron checkpoint per variant, with megatron's logits beside it."""
    jobs = [
        {"mode": "save", "shape": shape.to_dict(), "ckpt": str(work / name), "logits": str(work / f"{name}.pt"), "seed": i}
        for i, (name, shape) in enumerate(VARIANTS.items())
    ]
    _megatron(work, jobs)
    return {name: work / name for name in VARIANTS}


@pytest.fixture(scope="module")
def exported(saved, work) -> dict[str, Path]:
    out = {}
    for name, ckpt in saved.items():
        tokenizer = "gpt2" if VARIANTS[name].vocab == 50257 else None
        out[name] = work / f"{name}_hf"
        export_checkpoint(ckpt, out[name], dtype="fp32", shard_size=SHARD_SIZE, tokenizer=tokenizer)
    return out


# ---- export: transformers reproduces megatron ----------------------------------------------------
@pytest.mark.parametrize("name", list(VARIANTS))
def test_export_gives_megatron_logits_in_transformers(name, exported, work):
    shape = VARIANTS[name]
    config = json.loads((exported[name] / "config.json").read_text())
    assert config["vocab_size"] == shape.vocab and config["num_key_value_heads"] == shape.kv_groups
    assert config["tie_word_embeddings"] == shape.tied_embeddings and config["head_dim"] == shape.head_dim
    assert shape_from_llama_config(config, "exported config") == shape
    index = json.loads((exported[name] / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1
    _assert_close(_hf_logits(exported[name], shape.vocab), torch.load(work / f"{name}.pt"))


def test_export_writes_gpt2_tokenizer_that_encodes_like_tiktoken(exported, tmp_path):
    from transformers import AutoTokenizer

    from grow_cli.data.corpus import shakespeare_files
    from grow_cli.data.tokenizer import load_tokenizer

    directory = exported["gqa_untied_gpt2"]
    config = json.loads((directory / "config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == 50256
    assert json.loads((directory / "generation_config.json").read_text())["eos_token_id"] == 50256
    reference = load_tokenizer("gpt2")
    fast = AutoTokenizer.from_pretrained(directory)  # tokenizer.json
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(directory / name, tmp_path / name)
    from_merges = AutoTokenizer.from_pretrained(tmp_path)  # vocab.json + merges.txt only
    assert fast.eos_token_id == 50256 and len(fast) == 50257
    texts = SAMPLE_TEXTS + [shakespeare_files()[0].read_text()[:20000]]
    for text in texts:
        expected = reference.encode(text)
        assert fast.encode(text, add_special_tokens=False) == expected
        assert from_merges.encode(text, add_special_tokens=False) == expected
        assert fast.decode(expected) == text
    special = "one<|endoftext|>two"
    assert fast.encode(special) == reference.encoding.encode(special, allowed_special="all")
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    rendered = fast.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|user|>\nHi<|endoftext|>\n<|assistant|>\n"
    ids = fast.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(50256) == 2


def test_export_bf16_is_the_rounded_checkpoint(saved, work):
    from safetensors import safe_open

    out = work / "bf16_hf"
    result = export_checkpoint(saved["mha_untied"], out, tokenizer=None)
    assert result.dtype == "bf16" and result.shards == 1 and not (out / INDEX_FILE).exists()
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reader = CheckpointReader(saved["mha_untied"])
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        down = f.get_tensor("model.layers.1.mlp.down_proj.weight")
        embed = f.get_tensor("model.embed_tokens.weight")
    assert down.dtype == torch.bfloat16
    assert torch.equal(down, reader.read_layer(layout.FC2, 1).to(torch.bfloat16))
    assert torch.equal(embed, reader.read_rows(layout.EMBEDDING, 0, 1000).to(torch.bfloat16))


# ---- round trip: export then import gives back the checkpoint ------------------------------------
@pytest.mark.parametrize("name", list(VARIANTS))
def test_import_of_export_reproduces_checkpoint_exactly(name, saved, exported, work):
    shape = VARIANTS[name]
    out = work / f"{name}_back"
    # small blocks: the vocabulary tensors are written in several row blocks, one of them part padding
    result = import_llama(exported[name], out, block_bytes=64 * 4 * 300)
    assert result.dtype == "fp32" and result.vocab_rows == shape.padded_vocab(1)
    original, back = CheckpointReader(saved[name]), CheckpointReader(out)
    assert set(back.tensor_keys()) == set(original.tensor_keys())
    assert set(back.object_keys()) == set(original.object_keys())
    for key in original.tensor_keys():
        a, b = original.read(key), back.read(key)
        if key in (layout.EMBEDDING, layout.OUTPUT):
            assert b.shape == (shape.padded_vocab(1), shape.hidden)
            assert torch.equal(a[: shape.vocab], b[: shape.vocab])
            assert not b[shape.vocab :].any()
        else:
            assert torch.equal(a, b), key
    before, after = read_info(saved[name]), read_info(out)
    assert after.shape == shape and after.iteration == before.iteration == 7
    assert [s.op for s in after.lineage] == ["pretrain", "import"]
    assert after.lineage[-1].source_id == before.checkpoint_id
    assert after.checkpoint_id != before.checkpoint_id


# ---- import: megatron reproduces transformers ----------------------------------------------------
HF_MODELS = {
    "hf_gqa_untied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                          rope_theta=500000.0, rms_norm_eps=1e-5),
    "hf_mha_tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
}


def _hf_model(directory: Path, seed: int, **config) -> torch.Tensor:
    """A LlamaForCausalLM made by transformers (weights std 0.2, gains ~1), saved sharded; its logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      max_position_embeddings=SEQ, head_dim=16, **config)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(1 + 0.3 * torch.randn_like(param) if "norm" in name else 0.2 * torch.randn_like(param))
    model.save_pretrained(directory, max_shard_size="200KB")
    with torch.no_grad():
        return model(_tokens()).logits


@pytest.fixture(scope="module")
def hf_imported(work) -> dict[str, tuple[Path, Path]]:
    """HF models imported with the CLI; megatron's logits of each import (TP=1)."""
    out = {}
    for i, (name, config) in enumerate(HF_MODELS.items()):
        source, ckpt = work / name, work / f"{name}_ckpt"
        torch.save(_hf_model(source, seed=10 + i, **config), work / f"{name}.hf.pt")
        proc = run_grow(["import", str(source), "--out", str(ckpt), "--json"])
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["vocab_rows"] == 1024 and summary["dtype"] == "fp32"
        out[name] = (source, ckpt)
    _megatron(work, [{"mode": "load", "ckpt": str(c), "logits": str(work / f"{n}.tp1.pt")} for n, (_, c) in out.items()])
    return out


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_imported_transformers_model_gives_same_logits_in_megatron(name, hf_imported, work):
    source, ckpt = hf_imported[name]
    assert len(list(source.glob("model-*.safetensors"))) > 1
    info = read_info(ckpt)
    assert info.shape.kv_groups == HF_MODELS[name]["num_key_value_heads"]
    assert info.shape.rope_theta == HF_MODELS[name].get("rope_theta", 10000.0)
    assert [(s.op, s.source) for s in info.lineage] == [("import", str(source))]
    _assert_close(torch.load(work / f"{name}.tp1.pt"), torch.load(work / f"{name}.hf.pt"))


@pytest.mark.slow
def test_imported_model_loads_at_tp2(hf_imported, work):
    _, ckpt = hf_imported["hf_gqa_untied"]
    _megatron(work, [{"mode": "load", "ckpt": str(ckpt), "logits": str(work / "tp2.pt")}], nproc=2)
    _assert_close(torch.load(work / "tp2.pt"), torch.load(work / "hf_gqa_untied.hf.pt"))


def test_import_keeps_bf16_source_precision(work):
    from safetensors import safe_open
    from transformers import LlamaConfig, LlamaForCausalLM

    source = work / "hf_bf16"
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=16)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(source)
    result = import_llama(source, work / "bf16_ckpt")
    assert (result.source_dtype, result.dtype) == ("bf16", "bf16")
    reader = CheckpointReader(work / "bf16_ckpt")
    with safe_open(str(source / "model.safetensors"), framework="pt") as f:
        gate, up = f.get_tensor("model.layers.0.mlp.gate_proj.weight"), f.get_tensor("model.layers.0.mlp.up_proj.weight")
    fc1 = reader.read_layer(layout.FC1, 0)
    assert fc1.dtype == torch.bfloat16 and torch.equal(fc1, torch.cat([gate, up]))


# ---- streaming -----------------------------------------------------------------------------------
def test_shards_are_written_one_at_a_time(tmp_path):
    sizes = [(f"t{i}", 400) for i in range(7)]
    shards = plan_shards(sizes, max_bytes=1000)
    assert [s.names for s in shards] == [("t0", "t1"), ("t2", "t3"), ("t4", "t5"), ("t6",)]
    assert [s.file for s in shards][0] == "model-00001-of-00004.safetensors"
    on_disk_when_yielded = []

    def stream():
        for i in range(7):
            on_disk_when_yielded.append(sum(1 for s in shards if (tmp_path / s.file).exists()))
            yield f"t{i}", torch.full((100,), float(i))

    write_shards(tmp_path, shards, stream())
    # tensor i is produced only after every earlier shard is on disk: one shard in memory at a time
    assert on_disk_when_yielded == [0, 0, 1, 1, 2, 2, 3]
    assert json.loads((tmp_path / INDEX_FILE).read_text())["metadata"]["total_size"] == 7 * 400
    assert plan_shards([("big", 5000), ("small", 1)], 1000)[0].names == ("big",)
    assert plan_shards([("a", 1), ("b", 1)], 1000)[0].file == "model.safetensors"


def test_export_files_all_have_the_default_mode(exported):
    """safetensors' own writer leaves 0600; an export directory is shared, so every file gets the
    mode a plain new file gets here (0666 less the umask, 0644 under 022)."""
    reference = exported["mha_untied"].parent / "reference-mode"
    reference.write_text("")
    want = reference.stat().st_mode & 0o777
    files = [p for p in exported["mha_untied"].iterdir() if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(want) for p in files}


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("300000") == 300000
    with pytest.raises(GrowError, match="e.g. 5GB"):
        parse_size("five gigs")


# ---- user mistakes: one line, exit 2, nothing written --------------------------------------------
def _synthetic_checkpoint(path: Path, shape: ModelShape) -> None:
    """A zero-weight grow checkpoint written without megatron (enough for export's checks)."""
    specs = layout.tensor_specs(shape, shape.padded_vocab(1))
    path.mkdir()
    write_checkpoint(
        path,
        [whole(s.key, s.shape, torch.float32) for s in specs],
        lambda piece: torch.zeros(piece.sizes),
        common={COMMON_KEY: CheckpointInfo(shape=shape).to_dict()},
        objects=layout.extra_state_objects(shape),
    )


def _assert_refused(args: list[str], out: Path, message: str) -> None:
    proc = run_grow(args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.rstrip("\n").splitlines()  # a leading blank line would count
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*incomplete"))


def test_user_mistakes_are_one_line_errors(hf_imported, saved, work, tmp_path):
    source, _ = hf_imported["hf_gqa_untied"]
    out = tmp_path / "out"

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    _assert_refused(["import", str(gpt2), "--out", str(out)], out, "GPT2LMHeadModel")

    missing = tmp_path / "missing"
    shutil.copytree(source, missing)
    last = sorted(missing.glob("model-*.safetensors"))[-1]
    last.unlink()
    _assert_refused(["import", str(missing), "--out", str(out)], out, f"{last.name}, which is missing")

    scaled = tmp_path / "scaled"
    shutil.copytree(source, scaled)
    config = json.loads((scaled / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    (scaled / "config.json").write_text(json.dumps(config))
    _assert_refused(["import", str(scaled), "--out", str(out)], out, "'llama3' RoPE scaling")

    big_vocab = tmp_path / "big_vocab"
    _synthetic_checkpoint(big_vocab, ModelShape(heads=4, kv_groups=4, vocab=50300, **BASE))
    _assert_refused(["export", str(big_vocab), "--out", str(out)], out, "does not match the gpt2 tokenizer")

    _assert_refused(["export", str(source), "--out", str(out)], out, "not a torch_dist checkpoint")

    before = sorted(p.name for p in source.iterdir())
    proc = run_grow(["import", str(source), "--out", str(source.parent), "--force"])
    assert proc.returncode == 2 and "overlaps the input" in proc.stderr
    assert sorted(p.name for p in source.iterdir()) == before

    existing = work / "mha_untied_hf"
    before = sorted(p.name for p in existing.iterdir())
    proc = run_grow(["export", str(saved["mha_untied"]), "--out", str(existing), "--tokenizer", "none"])
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--force" in proc.stderr
    assert sorted(p.name for p in existing.iterdir()) == before
