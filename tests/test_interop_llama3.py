"""Llama 3.x models in and out: llama3-scaled RoPE, tied embeddings, a 128K vocabulary, GQA 4:1.

References: transformers' `LlamaForCausalLM` on a model it created (its own llama3 RoPE code),
megatron-core's forward pass on the imported, expanded and re-exported checkpoints, and
transformers' rotary embedding for the frequencies. megatron-core fixes the llama3 constants other
than the factor at Llama 3.1/3.2's (low 1, high 4, original 8192 positions), so the tiny models use
those; with rope theta 500000 the slowed low-frequency bands turn by up to ~0.3 rad within 256
positions, which the logits show (each comparison is checked against the same model without the
scaling, which must miss by far more than the tolerance).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch

from grow_cli.checkpoint.metadata import read_info
from grow_cli.errors import GrowError
from grow_cli.interop.hf_config import SpecialTokens, llama_config, shape_from_llama_config
from grow_cli.shape import ModelShape, RopeScaling

from conftest import run_grow, run_ranks

SCRIPT = Path(__file__).parent / "scripts" / "interop_megatron.py"
VOCAB = 128256  # Llama 3's: 128000 BPE ranks + 256 special tokens
SEQ, BATCH = 256, 2
LLAMA32_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
TINY = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=16384, tie_word_embeddings=True,
            rms_norm_eps=1e-5)


def _assert_close(actual: torch.Tensor, reference: torch.Tensor, unscaled: torch.Tensor | None = None) -> None:
    """Equal within 1e-4 of the logit scale; `unscaled` (the model without rope scaling) must miss by 100x that."""
    scale = reference.abs().max().item()
    assert scale > 1.0, "degenerate reference logits"
    error = (actual - reference).abs().max().item()
    assert error <= 1e-4 * scale, f"max |delta| {error:.3g} vs max |logit| {scale:.3g}"
    if unscaled is not None:
        miss = (unscaled - reference).abs().max().item()
        assert miss > 1e-2 * scale, f"rope scaling changes the logits by only {miss:.3g}: the test cannot see it"


def _tokens() -> torch.Tensor:
    """Ids over the whole vocabulary, most above GPT-2's 50257 (rows a GPT-2-sized model lacks)."""
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def _hf_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


def _randomize(model, seed: int) -> None:
    """Weights std 0.2 and gains ~1 (transformers' init makes attention near uniform, hiding RoPE)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.3 * noise if "norm" in name else 0.2 * noise)


def _llama3_rank_file(path: Path) -> Path:
    """A Llama-3-format rank file of 128000 ranks: GPT-2's 50256, then tokens `t + byte` (valid merges)."""
    from grow_cli.data.assets import find_asset

    tokens = [base64.b64decode(line.split()[0]) for line in Path(find_asset("gpt2.tiktoken")).read_bytes().splitlines()]
    known = set(tokens)
    for suffix in (b"\x00", b"\x01"):
        tokens += [t + suffix for t in tokens[256:50256] if t + suffix not in known][: 128000 - len(tokens)]
    assert len(tokens) == 128000
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(tokens)))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llama3")


@pytest.fixture(scope="module")
def hf_source(work) -> dict:
    """A Llama-3.2-style LlamaForCausalLM made by transformers, with a 128256-token tokenizer; its logits
    with and without the rope scaling (same weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from grow_cli.data.tokenizer import load_tokenizer
    from grow_cli.interop.tokenizer_files import write_tokenizer_files

    source = work / "hf"
    model = LlamaForCausalLM(LlamaConfig(rope_parameters=dict(LLAMA32_ROPE), **TINY)).eval()
    _randomize(model, seed=3)
    model.save_pretrained(source, max_shard_size="20MB")
    tokenizer = load_tokenizer(str(_llama3_rank_file(work / "tokenizer.model")))
    write_tokenizer_files(tokenizer, source, max_length=TINY["max_position_embeddings"])
    plain = LlamaForCausalLM(LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, **TINY))
    plain.load_state_dict(model.state_dict())
    tokens = _tokens()
    torch.save(tokens, work / "tokens.pt")
    return {"dir": source, "logits": _hf_logits(model, tokens), "unscaled": _hf_logits(plain.eval(), tokens),
            "tokenizer": tokenizer}


def _megatron_logits(work: Path, ckpt: Path, name: str, nproc: int = 1) -> torch.Tensor:
    spec = work / f"{name}.json"
    spec.write_text(json.dumps({"tokens": str(work / "tokens.pt"),
                                "jobs": [{"mode": "load", "ckpt": str(ckpt), "logits": str(work / f"{name}.pt")}]}))
    run_ranks([str(SCRIPT), str(spec)], nproc=nproc)
    return torch.load(work / f"{name}.pt")


@pytest.fixture(scope="module")
def imported(hf_source, work) -> Path:
    ckpt = work / "ckpt"
    proc = run_grow(["import", str(hf_source["dir"]), "--out", str(ckpt), "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["vocab_rows"] == 129024 and summary["warnings"] == []  # 128256 padded to 1024s
    return ckpt


# ---- the rope scaling itself --------------------------------------------------------------------
def test_megatron_llama3_frequencies_equal_transformers(megatron_runtime):
    """Llama-3.2-1B's RoPE (head dim 64) as megatron builds it from the shape vs transformers' inv_freq."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from grow_cli.runtime.model import build_gpt_model

    config = LlamaConfig(**{**TINY, "head_dim": 64, "num_attention_heads": 2, "num_key_value_heads": 1},
                         rope_parameters=dict(LLAMA32_ROPE))
    shape = shape_from_llama_config(config.to_dict() | {"architectures": ["LlamaForCausalLM"]}, "config")
    assert shape.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    expected = LlamaRotaryEmbedding(config).inv_freq
    ours = build_gpt_model(shape.with_(vocab=1000), megatron_runtime.layout).rotary_pos_emb.inv_freq
    torch.testing.assert_close(ours.cpu(), expected, rtol=1e-6, atol=0)
    plain = build_gpt_model(shape.with_(vocab=1000, rope_scaling=None), megatron_runtime.layout).rotary_pos_emb.inv_freq
    assert (plain.cpu() / expected).max() > 30  # the low frequencies are slowed by the factor 32


def test_config_round_trip_in_both_transformers_generations():
    """The 4.x config.json of Llama-3.2-1B (rope_scaling + rope_theta) and grow's export of it agree."""
    hf4 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB, "hidden_size": 2048,
           "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
           "head_dim": 64, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
           "rope_theta": 500000.0, "hidden_act": "silu",
           "rope_scaling": {k: v for k, v in LLAMA32_ROPE.items() if k != "rope_theta"}}
    shape = shape_from_llama_config(hf4, "Llama-3.2-1B")
    assert shape.rope_theta == 500000.0 and shape.rope_scaling.factor == 32.0 and shape.tied_embeddings
    exported = llama_config(shape, "bf16", SpecialTokens())
    assert exported["rope_scaling"] == hf4["rope_scaling"]
    assert exported["rope_parameters"] == LLAMA32_ROPE
    assert shape_from_llama_config(exported, "export") == shape
    assert ModelShape.from_dict(json.loads(json.dumps(shape.to_dict()))) == shape
    old_record = {k: v for k, v in shape.to_dict().items() if k != "rope_scaling"}
    assert ModelShape.from_dict(old_record).rope_scaling is None


# ---- import: megatron computes transformers' logits ---------------------------------------------
def test_imported_llama3_gives_transformers_logits(hf_source, imported, work):
    info = read_info(imported)
    assert info.shape.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    assert (info.shape.vocab, info.shape.heads // info.shape.kv_groups, info.shape.tied_embeddings) == (VOCAB, 4, True)
    assert info.tokenizer is not None and info.tokenizer.vocab_size == VOCAB
    _assert_close(_megatron_logits(work, imported, "tp1"), hf_source["logits"], hf_source["unscaled"])


@pytest.mark.slow
def test_imported_llama3_gives_transformers_logits_at_tp2(hf_source, imported, work):
    _assert_close(_megatron_logits(work, imported, "tp2", nproc=2), hf_source["logits"], hf_source["unscaled"])


# ---- downstream: eval, expand, export -----------------------------------------------------------
def test_eval_with_the_models_tokenizer_is_transformers_loss(hf_source, imported, work):
    from transformers import LlamaForCausalLM

    text = work / "valid.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                    "must be in want of a wife. However little known the feelings or views of such a man may be.")
    proc = run_grow(["eval", str(imported), "--text", str(text), "--no-layers", "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    tokenizer = hf_source["tokenizer"]
    ids = torch.tensor([tokenizer.encode(text.read_text()) + [tokenizer.eos_id]])
    assert ids[0, :-1].max() < 50256 and ids[0, -1] == 128001  # the last target is the EOS row, past GPT-2's
    model = LlamaForCausalLM.from_pretrained(hf_source["dir"], dtype=torch.float32).eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).logits[0], ids[0, 1:]).item()
    assert record["loss"] == pytest.approx(loss, rel=1e-4)


def test_expand_exactly_and_export_back_to_transformers(hf_source, imported, work):
    from transformers import AutoTokenizer, LlamaForCausalLM

    grown, out = work / "grown", work / "grown_hf"
    proc = run_grow(["expand", str(imported), "--hidden", "256", "--ffn", "512", "--layers", "3", "--heads", "16",
                     "--kv-groups", "4", "--width", "iso", "--depth", "identity", "--json", "--out", str(grown)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    shape = read_info(grown).shape
    assert (shape.hidden, shape.layers, shape.rope_scaling) == (256, 3, read_info(imported).shape.rope_scaling)
    _assert_close(_megatron_logits(work, grown, "grown"), hf_source["logits"], hf_source["unscaled"])

    proc = run_grow(["export", str(grown), "--out", str(out), "--dtype", "fp32", "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"] == LLAMA32_ROPE and config["rope_scaling"]["rope_type"] == "llama3"
    assert config["vocab_size"] == VOCAB and config["tie_word_embeddings"] and config["hidden_size"] == 256
    model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    _assert_close(_hf_logits(model, _tokens()), hf_source["logits"], hf_source["unscaled"])
    text = "Hello world, naïve café"
    exported = AutoTokenizer.from_pretrained(out)
    assert exported.encode(text, add_special_tokens=False) == hf_source["tokenizer"].encode(text)


# ---- what grow cannot represent: one line, exit 2 -----------------------------------------------
def _configs() -> dict[str, tuple[dict, str]]:
    """config.json of other families / RoPE kinds, made by transformers, and the field the refusal names."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    small = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                 max_position_embeddings=64)

    def llama(rope: dict) -> dict:
        return LlamaConfig(rope_parameters=rope, **small).to_dict() | {"architectures": ["LlamaForCausalLM"]}

    return {
        "qwen2": (Qwen2Config(**small).to_dict() | {"architectures": ["Qwen2ForCausalLM"]}, "biases on its q/k/v"),
        "qwen3": (Qwen3Config(**small).to_dict(), "qk-norm"),
        "mistral": (MistralConfig(sliding_window=32, **small).to_dict(), "sliding_window=32"),
        "llama_bias": (LlamaConfig(attention_bias=True, **small).to_dict(), "attention_bias=true"),
        "llama_qk_norm": (LlamaConfig(**small).to_dict() | {"use_qk_norm": True}, "use_qk_norm=true; grow's models have no qk-norm"),
        "yarn": (llama({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4, "original_max_position_embeddings": 16}),
                 "'yarn' RoPE scaling"),
        "linear": (llama({"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "'linear' RoPE scaling"),
        "dynamic": (llama({"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}), "'dynamic' RoPE scaling"),
        "llama3_short_original": (llama({**LLAMA32_ROPE, "original_max_position_embeddings": 32}),
                                  "original_max_position_embeddings=32; megatron-core builds it only with"),
        "llama3_incomplete": (llama({"rope_type": "default", "rope_theta": 5e5})
                              | {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}},
                              "without low_freq_factor, high_freq_factor, original_max_position_embeddings"),
    }


@pytest.mark.parametrize("name", list(_configs()))
def test_unsupported_models_are_refused_naming_the_field(name, tmp_path):
    config, message = _configs()[name]
    source, out = tmp_path / name, tmp_path / "out"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    proc = run_grow(["import", str(source), "--out", str(out)])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not out.exists()


def test_rope_scaling_that_cannot_interpolate_is_refused():
    with pytest.raises(GrowError, match="low_freq_factor < high_freq_factor"):
        RopeScaling(factor=8.0, low_freq_factor=4.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
