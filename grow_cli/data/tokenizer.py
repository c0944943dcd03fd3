"""Tokenizers: tiktoken's BPE encodings, loaded without the network when the ranks are on disk.

tiktoken downloads its rank files on first use, which a cluster node or a CI box without internet
cannot do. GPT-2's ranks ship with `make install` (the openai-whisper source package carries them
as `gpt2.tiktoken`), so the default tokenizer is built from that local file with GPT-2's own
split pattern and `<|endoftext|>` = 50256: it encodes exactly like `tiktoken.get_encoding("gpt2")`.
`cl100k_base` and `o200k_base` come from tiktoken itself (its cache, TIKTOKEN_CACHE_DIR, or the
network).

Text is encoded with `encode_ordinary`: a literal "<|endoftext|>" inside a document is text, not
a document boundary; only `prepare` appends the real EOS id after each document.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from grow_cli.data.assets import describe_search, find_asset
from grow_cli.errors import GrowError

ENDOFTEXT = "<|endoftext|>"
GPT2_RANKS_FILE = "gpt2.tiktoken"
# Seconds tiktoken may spend per network attempt: a firewalled node must fail, not hang.
_NETWORK_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class EncodingSpec:
    """What the model side needs to know about an encoding without loading it."""

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
    """The spec of a supported encoding; GrowError naming the choices otherwise."""
    if name not in ENCODINGS:
        choices = ", ".join(ENCODINGS)
        raise GrowError(f"unknown tokenizer {name!r}: choose one of {choices}")
    return ENCODINGS[name]


def vocab_size_of(name: str) -> int:
    """The vocabulary size of encoding `name` (no file is read): the model's vocab must equal it."""
    return encoding_spec(name).vocab_size


@dataclass(frozen=True)
class Tokenizer:
    """One tiktoken encoding plus the facts the data and model code need (vocab size, EOS)."""

    name: str
    source: str
    encoding: tiktoken.Encoding = field(repr=False, compare=False)

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def eos_id(self) -> int:
        return self.encoding.eot_token

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings inside it are encoded as plain text."""
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode([int(i) for i in ids])


def load_tokenizer(name: str = DEFAULT_TOKENIZER, tokenizer_file: str | Path | None = None) -> Tokenizer:
    """Load encoding `name`.

    GPT-2 lookup order: `tokenizer_file`, then gpt2.tiktoken in $GROW_ASSETS,
    ~/.cache/grow/assets and the checkout's .cache/assets, then tiktoken's cache or download.
    """
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
    return Tokenizer(name=name, source="tiktoken", encoding=encoding)


def _gpt2_from_ranks(path: Path) -> Tokenizer:
    """GPT-2's encoding from a ranks file in tiktoken's format (base64 token, rank per line)."""
    from tiktoken_ext.openai_public import r50k_pat_str

    spec = ENCODINGS["gpt2"]
    try:
        ranks = load_tiktoken_bpe(str(path))
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise GrowError(f"{path} is not a tiktoken ranks file ({error}); reinstall it with `make install`") from None
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
    return Tokenizer(name="gpt2", source=str(path), encoding=encoding)


def _tiktoken_encoding(name: str) -> tiktoken.Encoding:
    """tiktoken.get_encoding with a bounded socket timeout (tiktoken's own requests have none)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_NETWORK_TIMEOUT_S)
    try:
        return tiktoken.get_encoding(name)
    finally:
        socket.setdefaulttimeout(previous)
