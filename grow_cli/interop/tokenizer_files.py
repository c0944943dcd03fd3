"""Hugging Face tokenizer files for grow's tokenizers: tiktoken encodings converted from their BPE
ranks, Hugging Face tokenizers copied.

transformers' GPT-2 tokenizer reads `vocab.json` (token string -> id) and `merges.txt` (one merge
per line, in priority order). Both follow from tiktoken's mergeable ranks alone:

* a token's string is its bytes written through GPT-2's byte-to-unicode table (printable bytes
  stand for themselves, the others map to code points from 256 up), and its id is its rank;
* BPE applies merges lowest rank first, so the merge that creates token t is found by running
  BPE on t's bytes with only the ranks below t's: exactly two parts remain, and they are the
  merge, at priority rank(t) - 256 (the 256 single bytes come first).

`tokenizer.json` (the fast tokenizer that vLLM, TGI and TRL load directly) is built from the same
vocab and merges with the `tokenizers` library: the encoding's own split pattern (GPT-2's,
Llama 3's...), byte-level mapping, no prefix space, the encoding's special tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from grow_cli.data.tokenizer_record import HUGGINGFACE
from grow_cli.errors import GrowError

# Zephyr-style turns (the format of the UltraChat SFT -> UltraFeedback DPO recipe): plain-text role
# markers, so GPT-2's vocabulary needs no new tokens, and end-of-text closing every turn, so a
# fine-tuned model stops where generation_config.json says it should.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# The files a Hugging Face tokenizer directory may hold; `grow import` copies these, `grow export` writes them.
HF_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "added_tokens.json", "tokenizer.model", "chat_template.jinja",
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse table: a byte-level token string's characters back to its bytes."""
    return {char: byte for byte, char in bytes_to_unicode().items()}


def _token_string(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _merge_parts(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The pair whose merge creates `token`: BPE on its bytes with ranks below its own."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best_rank, best_index = limit, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_index = rank, i
        if best_index < 0:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    if len(parts) != 2:
        raise GrowError(f"token {token!r} cannot be built from lower-ranked tokens: not a byte-level BPE encoding")
    return parts[0], parts[1]


@dataclass(frozen=True)
class ByteLevelBPE:
    """vocab (token string -> id), merges (pairs of token strings, highest priority first) and specials."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    special_tokens: dict[str, int]


def byte_level_bpe(encoding) -> ByteLevelBPE:
    """Vocab and merges of a tiktoken `Encoding` whose single bytes are ranks 0..255 (GPT-2's layout)."""
    ranks = {token: encoding.encode_single_token(token) for token in encoding.token_byte_values()}
    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    if sorted(r for t, r in by_rank if len(t) == 1) != list(range(256)) or by_rank[-1][1] != len(by_rank) - 1:
        raise GrowError(f"tokenizer {encoding.name} is not laid out like GPT-2's BPE (bytes first, dense ranks)")
    vocab = {_token_string(token): rank for token, rank in by_rank}
    merges = []
    for token, _rank in by_rank[256:]:
        left, right = _merge_parts(ranks, token)
        merges.append((_token_string(left), _token_string(right)))
    specials = {name: encoding.encode_single_token(name) for name in encoding.special_tokens_set}
    return ByteLevelBPE(vocab, merges, specials)


def _fast_tokenizer_json(bpe: ByteLevelBPE, pattern: str) -> str:
    """The `tokenizer.json` of a tiktoken encoding, built with the `tokenizers` library: its split
    `pattern` (isolated matches, as tiktoken's regex yields them), then byte-level mapping without
    a second regex, then BPE that takes a whole word found in the vocabulary as one token before
    merging (`ignore_merges`, tiktoken's own shortcut), so the ids are tiktoken's."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.BPE(vocab=bpe.vocab, merges=bpe.merges, fuse_unk=False, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    # `tokenizers` gives added tokens the next free ids in list order: add them in id order.
    by_id = sorted(bpe.special_tokens.items(), key=lambda item: item[1])
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name, _ in by_id])
    moved = [name for name, i in by_id if tokenizer.token_to_id(name) != i]
    if moved:
        raise GrowError(f"special token {moved[0]!r} does not directly follow the BPE ranks; it cannot be exported")
    return tokenizer.to_str(pretty=True)


def write_config_files(
    out_dir: Path, eos_name: str, special_tokens: dict[str, int], max_length: int, tokenizer_class: str
) -> list[str]:
    """tokenizer_config.json and special_tokens_map.json, which `AutoTokenizer` reads next to the
    tokenizer: the end-of-text token doubles as BOS, EOS, UNK and padding, as in GPT-2's own
    release (the data has no BOS: prepare puts EOS between documents). The chat template only
    matters once the model is fine-tuned on conversations (TRL, vLLM's chat API)."""
    special = {"bos_token": eos_name, "eos_token": eos_name, "unk_token": eos_name, "pad_token": eos_name}
    config = {
        "tokenizer_class": tokenizer_class,
        "model_max_length": max_length,
        "add_prefix_space": False,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {"content": name, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                     "single_word": False}
            for name, i in special_tokens.items()
        },
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return ["tokenizer_config.json", "special_tokens_map.json"]


def write_tokenizer_files(tokenizer, out_dir: str | Path, max_length: int) -> list[str]:
    """Write Hugging Face tokenizer files for grow's `tokenizer` (any kind) into `out_dir`, so that
    `AutoTokenizer.from_pretrained(out_dir)` encodes like training did. Returns the names written.

    A Hugging Face tokenizer is copied with the files that came with it; a tiktoken encoding is
    converted (vocab.json and merges.txt as well when it splits like GPT-2, which transformers'
    slow GPT2Tokenizer hard-codes). `max_length` is the model's context length.
    """
    out_dir = Path(out_dir)
    if tokenizer.record.kind == HUGGINGFACE:
        return _copy_hf_files(Path(tokenizer.source), out_dir, tokenizer.record.eos, max_length)
    encoding = tokenizer.encoding
    bpe = byte_level_bpe(encoding)
    written = []
    if encoding._pat_str == _gpt2_pattern():
        (out_dir / "vocab.json").write_text(json.dumps({**bpe.vocab, **bpe.special_tokens}, ensure_ascii=False))
        merges = "\n".join(f"{left} {right}" for left, right in bpe.merges)
        (out_dir / "merges.txt").write_text("#version: 0.2\n" + merges + "\n", encoding="utf-8")
        written += ["vocab.json", "merges.txt"]
        tokenizer_class = "GPT2Tokenizer"
    else:
        tokenizer_class = "PreTrainedTokenizerFast"
    (out_dir / "tokenizer.json").write_text(_fast_tokenizer_json(bpe, encoding._pat_str), encoding="utf-8")
    written.append("tokenizer.json")
    return written + write_config_files(out_dir, tokenizer.record.eos, bpe.special_tokens, max_length, tokenizer_class)


def _gpt2_pattern() -> str:
    from tiktoken_ext.openai_public import r50k_pat_str

    return r50k_pat_str


def _copy_hf_files(tokenizer_json: Path, out_dir: Path, eos_name: str, max_length: int) -> list[str]:
    """tokenizer.json and whichever of its companion files lie next to it; the two config files
    are written when the source has none (a bare tokenizer.json)."""
    import shutil

    written = []
    for name in HF_TOKENIZER_FILES:
        source = tokenizer_json if name == "tokenizer.json" else tokenizer_json.parent / name
        if source.is_file():
            shutil.copyfile(source, out_dir / name)
            written.append(name)
    if "tokenizer_config.json" not in written:
        from tokenizers import Tokenizer

        added = Tokenizer.from_file(str(tokenizer_json)).get_added_tokens_decoder()
        specials = {token.content: i for i, token in added.items() if token.special}
        written += write_config_files(out_dir, eos_name, specials, max_length, "PreTrainedTokenizerFast")
    return written
