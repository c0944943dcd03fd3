"""Tokenizers: tiktoken encodings, tiktoken rank files and Hugging Face tokenizer.json files, all
loaded from local files when they are on disk, so that a node without internet can use them.

`--tokenizer SPEC` is one of
* a tiktoken encoding name: `gpt2` (built from the gpt2.tiktoken ranks that `make install` ships,
  with GPT-2's split pattern and `<|endoftext|>` = 50256, so it encodes exactly like
  `tiktoken.get_encoding("gpt2")`), `cl100k_base`, `o200k_base` (tiktoken's cache or the network);
* a tiktoken rank file (base64 token and rank per line, Llama 3's `tokenizer.model`): Llama 3's
  split pattern and its 256 special tokens after the ranks are the defaults, as in Meta's loader;
* a Hugging Face `tokenizer.json`, or a directory holding one (read with the `tokenizers` library;
  the directory's tokenizer_config.json names the EOS token).

The document separator is the tokenizer's EOS token (`eos`, overridable). tiktoken text is encoded
with `encode_ordinary`, so a literal "<|endoftext|>" inside a document is text, not a boundary;
Hugging Face tokenizers encode as `tokenizer.encode(text, add_special_tokens=False)` does. Every
tokenizer carries its `TokenizerRecord` (kind, file, sha256, vocabulary, EOS), which the data
sidecar and the checkpoint store so that later commands reload the very same tokenizer.
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import tiktoken

from grow_cli.data.assets import describe_search, find_asset
from grow_cli.data.tokenizer_record import (
    CHECKPOINT_TOKENIZER_DIR,
    HUGGINGFACE,
    RANKS,
    TIKTOKEN,
    TokenizerRecord,
    file_sha256,
)
from grow_cli.errors import GrowError

ENDOFTEXT = "<|endoftext|>"
GPT2_RANKS_FILE = "gpt2.tiktoken"
HF_TOKENIZER_FILE = "tokenizer.json"
# Seconds tiktoken may spend per network attempt: a firewalled node must fail, not hang.
_NETWORK_TIMEOUT_S = 20.0

# Meta's Llama 3 tokenizer (llama/tokenizer.py): split pattern and the 256 special tokens that
# follow the 128000 ranks; the base model's document separator is <|end_of_text|>.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)),
)
# EOS names tried, in order, when neither --eos nor a tokenizer_config.json names one.
_EOS_CANDIDATES = ("<|end_of_text|>", ENDOFTEXT, "</s>", "<eos>", "<|eot_id|>")


@dataclass(frozen=True)
class EncodingSpec:
    """What the model side needs to know about a named encoding without loading it."""

    name: str
    vocab_size: int
    eos_id: int


ENCODINGS: dict[str, EncodingSpec] = {
    "gpt2": EncodingSpec("gpt2", vocab_size=50257, eos_id=50256),
    "cl100k_base": EncodingSpec("cl100k_base", vocab_size=100277, eos_id=100257),
    "o200k_base": EncodingSpec("o200k_base", vocab_size=200019, eos_id=199999),
}
DEFAULT_TOKENIZER = "gpt2"

# Hard facts about GPT-2's encoding, checked on every local load so a wrong ranks file is caught.
_GPT2_PROBE = ("Hello world", [15496, 995])


def encoding_spec(name: str) -> EncodingSpec:
    """The spec of a named encoding; GrowError naming every accepted form otherwise."""
    if name not in ENCODINGS:
        choices = ", ".join(ENCODINGS)
        raise GrowError(
            f"unknown tokenizer {name!r}: choose one of {choices}, a tokenizer.json (or a directory "
            f"holding one) or a tiktoken rank file such as Llama 3's tokenizer.model"
        )
    return ENCODINGS[name]


def vocab_size_of(name: str) -> int:
    """The vocabulary size of encoding `name` (no file is read): the model's vocab must equal it."""
    return encoding_spec(name).vocab_size


@dataclass(frozen=True)
class Tokenizer:
    """A loaded tokenizer and its record; subclasses wrap tiktoken or `tokenizers`."""

    record: TokenizerRecord

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def source(self) -> str:
        """The file it was read from, or `tiktoken` for an encoding tiktoken fetched itself."""
        return self.record.path or "tiktoken"

    @property
    def vocab_size(self) -> int:
        return self.record.vocab_size

    @property
    def eos_id(self) -> int:
        return self.record.eos_id

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (the libraries parallelise this with their own threads)."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_bytes(self, token: int) -> bytes:
        """The bytes token id `token` stands for in decoded text (for bits per byte)."""
        raise NotImplementedError


@dataclass(frozen=True)
class TiktokenTokenizer(Tokenizer):
    encoding: tiktoken.Encoding = field(repr=False, compare=False, kw_only=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings inside it are encoded as plain text."""
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode([int(i) for i in ids])

    def token_bytes(self, token: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token)


@dataclass(frozen=True)
class HFTokenizer(Tokenizer):
    backend: object = field(repr=False, compare=False, kw_only=True)  # tokenizers.Tokenizer

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self, token: int) -> bytes:
        """Byte-level BPE tokens map back through GPT-2's byte table; other models' pieces are
        measured by what they decode to."""
        from grow_cli.interop.tokenizer_files import unicode_to_bytes

        piece = self.backend.id_to_token(token)
        if piece is None:
            return b""
        table = unicode_to_bytes()
        if all(char in table for char in piece):
            return bytes(table[char] for char in piece)
        return self.backend.decode([token], skip_special_tokens=False).encode("utf-8")


def load_tokenizer(
    spec: str = DEFAULT_TOKENIZER,
    tokenizer_file: str | Path | None = None,
    *,
    eos: str | None = None,
    pattern: str | None = None,
    special_tokens: tuple[str, ...] | None = None,
) -> Tokenizer:
    """Load the tokenizer `spec` names (see the module docstring).

    GPT-2 lookup order: `tokenizer_file`, then gpt2.tiktoken in $GROW_ASSETS,
    ~/.cache/grow/assets and the checkout's .cache/assets, then tiktoken's cache or download.
    `pattern` and `special_tokens` apply to rank files only; `eos` overrides the EOS token.
    """
    path = Path(spec).expanduser()
    if spec not in ENCODINGS and path.exists():
        if tokenizer_file is not None:
            raise GrowError("--tokenizer-file only applies to --tokenizer gpt2; pass the file as --tokenizer")
        if path.is_dir():
            if (path / HF_TOKENIZER_FILE).is_file():
                return _from_hf_file(path / HF_TOKENIZER_FILE, eos)
            raise GrowError(f"directory {path} holds no {HF_TOKENIZER_FILE}; pass a Hugging Face tokenizer directory")
        if path.suffix == ".json":
            return _from_hf_file(path, eos)
        return _from_rank_file(path, pattern, special_tokens, eos)
    if pattern is not None or special_tokens is not None:
        raise GrowError("--split-pattern and --special-tokens apply to tiktoken rank files only")
    tokenizer = _from_encoding_name(spec, tokenizer_file)
    if eos is not None and eos != tokenizer.record.eos:
        raise GrowError(f"{spec}'s document separator is {tokenizer.record.eos!r}; drop --eos {eos}")
    return tokenizer


def load_recorded(
    record: TokenizerRecord, copies: tuple[Path, ...] = (), tokenizer_file: str | Path | None = None
) -> Tokenizer:
    """The tokenizer a record describes: read from a file in `copies` with the recorded content
    (a checkpoint's own `tokenizer/` folder), else from the recorded path, whose content must
    still be what it was. A named tiktoken encoding is looked up as `load_tokenizer` does
    (`tokenizer_file`: GPT-2's ranks), since its ids do not depend on where the file lies."""
    if record.kind == TIKTOKEN:
        return _from_encoding_name(record.name, tokenizer_file)
    candidates = [*copies, *([Path(record.path)] if record.path else [])]
    for candidate in candidates:
        if candidate.is_file() and file_sha256(candidate) == record.sha256:
            if record.kind == HUGGINGFACE:
                tokenizer = _from_hf_file(candidate, record.eos)
            else:
                tokenizer = _from_rank_file(candidate, record.pattern, record.special_tokens, record.eos)
            return tokenizer
    raise GrowError(
        f"tokenizer file {record.path} ({record.name}, sha256 {str(record.sha256)[:12]}...) is missing or has "
        f"changed since the data/model was made: restore it at that path"
    )


def model_tokenizer(checkpoint: str | Path, record: TokenizerRecord | None, tokenizer_file: str | Path | None = None) -> Tokenizer:
    """The tokenizer checkpoint `checkpoint` was trained with: its record, read from the copy in
    the checkpoint's `tokenizer/` folder when there is one; GPT-2 for checkpoints of an older grow,
    which recorded none and could only train on GPT-2 data. `grow import` keeps the folder in the
    save directory, beside the checkpoint's `release/`, so the parent is looked at too."""
    if record is None:
        return load_tokenizer(DEFAULT_TOKENIZER, tokenizer_file)
    name = Path(record.path).name if record.path else None
    copies = tuple(folder / CHECKPOINT_TOKENIZER_DIR / name for folder in (Path(checkpoint), Path(checkpoint).parent)) if name else ()
    return load_recorded(record, copies, tokenizer_file)


def _from_encoding_name(name: str, tokenizer_file: str | Path | None) -> TiktokenTokenizer:
    spec = encoding_spec(name)
    if tokenizer_file is not None:
        if name != "gpt2":
            raise GrowError(
                f"--tokenizer-file holds GPT-2 BPE ranks and only applies to --tokenizer gpt2; "
                f"{name} is read from tiktoken's cache (set TIKTOKEN_CACHE_DIR for offline use)"
            )
        path = Path(tokenizer_file).expanduser()
        if not path.is_file():
            raise GrowError(f"tokenizer file {path} does not exist; pass the path of gpt2.tiktoken")
        return _gpt2_from_ranks(path)
    if name == "gpt2":
        path = find_asset(GPT2_RANKS_FILE)
        if path is not None and path.is_file():
            return _gpt2_from_ranks(path)
    try:
        encoding = _tiktoken_encoding(name)
    except Exception as error:  # tiktoken raises requests/OS/value errors when it cannot fetch
        if name == "gpt2":
            raise GrowError(
                f"GPT-2 BPE ranks not found ({describe_search(GPT2_RANKS_FILE)}) and tiktoken "
                f"could not fetch them ({type(error).__name__}): run `make install` or pass "
                f"--tokenizer-file PATH/gpt2.tiktoken"
            ) from None
        raise GrowError(
            f"tokenizer {name} is not in tiktoken's cache and could not be downloaded "
            f"({type(error).__name__}): run once with network access or set TIKTOKEN_CACHE_DIR "
            f"to a directory holding its cached ranks"
        ) from None
    if encoding.n_vocab != spec.vocab_size or encoding.eot_token != spec.eos_id:
        raise GrowError(f"tiktoken's {name} has vocab {encoding.n_vocab}, expected {spec.vocab_size}")
    record = TokenizerRecord(kind=TIKTOKEN, name=name, vocab_size=spec.vocab_size, eos=ENDOFTEXT, eos_id=spec.eos_id)
    return TiktokenTokenizer(record, encoding=encoding)


def read_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken rank file (base64 token, space, rank per line), read here rather than through
    tiktoken's `load_tiktoken_bpe`, which caches local files by path and would return stale ranks
    after the file changes."""
    ranks: dict[bytes, int] = {}
    try:
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise GrowError(
            f"{path}:{number} is not a tiktoken rank line (base64 token, space, rank): {type(error).__name__}"
        ) from None
    if not ranks:
        raise GrowError(f"{path} holds no ranks: not a tiktoken rank file")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise GrowError(f"{path}: the ranks are not 0..{len(ranks) - 1} without gaps: not a tiktoken rank file")
    return ranks


def _gpt2_from_ranks(path: Path) -> TiktokenTokenizer:
    """GPT-2's encoding from a ranks file in tiktoken's format (base64 token, rank per line)."""
    from tiktoken_ext.openai_public import r50k_pat_str

    spec = ENCODINGS["gpt2"]
    try:
        ranks = read_ranks(path)
    except GrowError as error:
        raise GrowError(f"{error}; reinstall it with `make install`") from None
    wrong = f"{path} does not hold GPT-2's BPE ranks; reinstall it with `make install`"
    if len(ranks) != spec.vocab_size - 1:
        raise GrowError(f"{wrong} ({len(ranks)} ranks, expected {spec.vocab_size - 1})")
    encoding = tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: spec.eos_id},
        explicit_n_vocab=spec.vocab_size,
    )
    text, expected = _GPT2_PROBE
    if encoding.encode_ordinary(text) != expected:
        raise GrowError(f"{wrong} ({text!r} does not encode to {expected})")
    record = TokenizerRecord(
        kind=TIKTOKEN, name="gpt2", vocab_size=spec.vocab_size, eos=ENDOFTEXT, eos_id=spec.eos_id,
        path=str(path), sha256=file_sha256(path),
    )
    return TiktokenTokenizer(record, encoding=encoding)


def _from_rank_file(
    path: Path, pattern: str | None, special_tokens: tuple[str, ...] | None, eos: str | None
) -> TiktokenTokenizer:
    """A rank file with its split pattern and special tokens (ids right after the ranks)."""
    import regex

    path = path.resolve()
    ranks = read_ranks(path)
    specials = LLAMA3_SPECIAL_TOKENS if special_tokens is None else tuple(special_tokens)
    special_ids = {token: len(ranks) + i for i, token in enumerate(specials)}
    try:
        regex.compile(pattern or LLAMA3_PATTERN)
    except regex.error as error:
        raise GrowError(f"--split-pattern is not a valid regular expression ({error})") from None
    eos = _choose_eos(eos, special_ids, path)
    encoding = tiktoken.Encoding(
        name=path.name, pat_str=pattern or LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=special_ids
    )
    record = TokenizerRecord(
        kind=RANKS, name=path.name, vocab_size=len(ranks) + len(specials), eos=eos, eos_id=special_ids[eos],
        path=str(path), sha256=file_sha256(path), pattern=pattern, special_tokens=special_tokens,
    )
    return TiktokenTokenizer(record, encoding=encoding)


def _from_hf_file(path: Path, eos: str | None) -> HFTokenizer:
    """A `tokenizers` tokenizer.json; the EOS comes from `eos`, the neighbouring
    tokenizer_config.json, or the usual end-of-text names."""
    from tokenizers import Tokenizer as Backend

    path = path.resolve()
    try:
        backend = Backend.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for malformed JSON/models
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GrowError(f"{path} is not a Hugging Face tokenizer.json ({first})") from None
    vocab = backend.get_vocab(with_added_tokens=True)
    eos = _choose_eos(eos or _configured_eos(path.parent), vocab, path)
    record = TokenizerRecord(
        kind=HUGGINGFACE, name=_display_name(path), vocab_size=max(vocab.values()) + 1, eos=eos,
        eos_id=vocab[eos], path=str(path), sha256=file_sha256(path),
    )
    return HFTokenizer(record, backend=backend)


def _display_name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.name == HF_TOKENIZER_FILE else path.name


def _configured_eos(directory: Path) -> str | None:
    """The eos_token of a transformers tokenizer_config.json next to the tokenizer, if any."""
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        token = json.loads(config.read_text()).get("eos_token")
    except (json.JSONDecodeError, AttributeError):
        raise GrowError(f"{config} is not valid JSON; fix it or pass --eos TOKEN") from None
    return token.get("content") if isinstance(token, dict) else token


def _choose_eos(eos: str | None, vocab: dict[str, int], where: Path) -> str:
    if eos is not None:
        if eos not in vocab:
            raise GrowError(f"EOS token {eos!r} is not in the vocabulary of {where}; pass an existing --eos TOKEN")
        return eos
    for candidate in _EOS_CANDIDATES:
        if candidate in vocab:
            return candidate
    raise GrowError(f"{where} has none of the usual end-of-text tokens ({', '.join(_EOS_CANDIDATES)}): pass --eos TOKEN")


def _tiktoken_encoding(name: str) -> tiktoken.Encoding:
    """tiktoken.get_encoding with a bounded socket timeout (tiktoken's own requests have none)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_NETWORK_TIMEOUT_S)
    try:
        return tiktoken.get_encoding(name)
    finally:
        socket.setdefaulttimeout(previous)
