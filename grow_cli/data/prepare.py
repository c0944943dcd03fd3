"""`grow data prepare`: documents in, megatron-core indexed datasets out.

Pipeline: the main process reads documents in a fixed order and groups them into chunks; a pool
of worker processes tokenizes the chunks (at most two per worker in flight, so a streamed hub
dataset never piles up in memory); results come back in submission order, so the output is the
same for any number of workers. Every document gets EOS appended and goes, whole, to the train or
the valid split. Both splits are written with megatron's `IndexedDatasetBuilder` under temporary
names and renamed at the end; the sidecar (`info.py`) is written last, so a prefix with a sidecar
is always complete.

Split rule: document i goes to valid when a seeded hash of (seed, i) falls below
`valid_fraction`. If that leaves valid empty while `valid_fraction` > 0, the last document goes to
valid instead of train (small corpora such as the 42 Shakespeare works still get a validation
document). The rule needs no document count, so it works on streams.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from grow_cli.data.info import SPLITS, DataInfo, SplitInfo, output_paths, split_prefix, write_data_info
from grow_cli.data.sources import Source, resolve_source
from grow_cli.data.tokenizer import DEFAULT_TOKENIZER, Tokenizer, load_tokenizer
from grow_cli.errors import GrowError

# A chunk (the unit of work sent to a worker) closes at this many characters or documents.
CHUNK_CHARS = 1_000_000
CHUNK_DOCUMENTS = 1024


@dataclass(frozen=True)
class PrepareConfig:
    """Everything `grow data prepare` takes (see its --help)."""

    inputs: tuple[str, ...]
    out: str
    tokenizer: str = DEFAULT_TOKENIZER
    tokenizer_file: str | None = None
    eos: str | None = None
    split_pattern: str | None = None
    special_tokens: tuple[str, ...] | None = None
    workers: int = 1
    valid_fraction: float = 0.01
    text_key: str = "text"
    split: str = "train"
    name: str | None = None
    max_documents: int | None = None
    seed: int = 1234
    force: bool = False


@dataclass(frozen=True)
class PrepareResult:
    """What was written and how fast."""

    info: DataInfo
    seconds: float
    workers: int
    skipped_empty: int

    @property
    def tokens_per_second(self) -> float:
        total = self.info.train.tokens + self.info.valid.tokens
        return total / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "prefix": self.info.prefix,
            **self.info.to_json(),
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens_per_second, 1),
            "workers": self.workers,
            "skipped_empty_documents": self.skipped_empty,
        }


def token_dtype(vocab_size: int) -> type[numpy.number]:
    """The .bin element type: uint16 while every id (< vocab_size) fits in it, else int32.

    Both are element types megatron's `.idx` header records (DType codes 8 and 4), so the dataset
    reads back with the right type; megatron's own `DType.optimal_dtype` switches at 65500, which
    would store vocabularies of 65500..65536 tokens in twice the space for no reason.
    """
    return numpy.uint16 if vocab_size <= 2**16 else numpy.int32


@dataclass(frozen=True)
class PrepareJob:
    """A validated `grow data prepare` request (tokenizer loaded, inputs resolved, outputs free):
    nothing has been written yet."""

    config: PrepareConfig
    prefix: Path
    tokenizer: Tokenizer
    source: Source

    @property
    def dtype(self) -> type[numpy.number]:
        return token_dtype(self.tokenizer.vocab_size)

    @property
    def expected_documents(self) -> int | None:
        known = self.source.known_documents
        limit = self.config.max_documents
        if known is None:
            return limit
        return known if limit is None else min(known, limit)


def prepare_job(config: PrepareConfig) -> PrepareJob:
    """Check every argument, the inputs and the outputs; GrowError before anything is written."""
    if not 0.0 <= config.valid_fraction < 1.0:
        raise GrowError(f"--valid-fraction must be in [0, 1), got {config.valid_fraction}")
    if config.workers < 1:
        raise GrowError(f"--workers must be at least 1, got {config.workers}")
    if config.max_documents is not None and config.max_documents < 1:
        raise GrowError(f"--max-documents must be at least 1, got {config.max_documents}")
    prefix = Path(os.path.abspath(os.path.expanduser(config.out)))
    if config.out.endswith(os.sep) or prefix.is_dir():
        raise GrowError(f"--out is a path prefix such as data/fineweb (files PREFIX_train.bin ...), not a directory: {config.out}")
    tokenizer = load_tokenizer(
        config.tokenizer, config.tokenizer_file, eos=config.eos, pattern=config.split_pattern,
        special_tokens=config.special_tokens,
    )
    source = resolve_source(list(config.inputs), config.text_key, config.name, config.split)
    outputs = output_paths(prefix)
    inputs = {path.resolve() for path in source.files}
    clash = [str(path) for path in outputs if path.resolve() in inputs]
    if clash:
        raise GrowError(f"--out {config.out} would overwrite input {clash[0]}; choose another prefix")
    existing = [str(path) for path in outputs if path.exists()]
    if existing and not config.force:
        raise GrowError(f"{existing[0]} already exists; pass --force to overwrite or choose another --out")
    return PrepareJob(config, prefix, tokenizer, source)


def prepare(job: PrepareJob, on_progress: Callable[[int, int, float], None] | None = None) -> PrepareResult:
    """Tokenize and write; `on_progress(documents, tokens, seconds)` is called after every chunk."""
    with warnings.catch_warnings():
        # megatron.core's package import warns that Apex/Transformer Engine are absent; neither
        # matters for writing token files.
        warnings.simplefilter("ignore", UserWarning)
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    config, tokenizer = job.config, job.tokenizer
    job.prefix.parent.mkdir(parents=True, exist_ok=True)
    temporary = job.prefix.parent / f".{job.prefix.name}.partial-{os.getpid()}"
    temporaries = output_paths(temporary)[1:]
    start = time.perf_counter()
    try:
        builders = {
            split: IndexedDatasetBuilder(split_prefix(temporary, split) + ".bin", dtype=job.dtype)
            for split in SPLITS
        }
        writer = _SplitWriter(builders, config.valid_fraction, config.seed)
        reader = _DocumentReader(job.source.documents(), config.max_documents)
        for tokens, lengths in _tokenize_chunks(reader.chunks(), tokenizer, job.dtype, config.workers):
            writer.add_chunk(tokens, lengths)
            if on_progress is not None:
                on_progress(writer.documents, writer.tokens, time.perf_counter() - start)
        writer.close()
        if writer.documents == 0:
            raise GrowError(f"no documents with text in {', '.join(config.inputs)} (check --text-key and the files)")
        for split in SPLITS:
            builders[split].finalize(split_prefix(temporary, split) + ".idx")
        info = DataInfo(
            prefix=str(job.prefix),
            tokenizer=tokenizer.record,
            dtype=numpy.dtype(job.dtype).name,
            seed=config.seed,
            valid_fraction=config.valid_fraction,
            sources=job.source.descriptions(),
            train=writer.split_info("train"),
            valid=writer.split_info("valid"),
            fingerprint=_fingerprint(temporary),
        )
        _publish(temporary, job.prefix)
        write_data_info(info)
    finally:
        for path in temporaries:
            path.unlink(missing_ok=True)
    return PrepareResult(info, time.perf_counter() - start, config.workers, reader.skipped_empty)


@dataclass
class _DocumentReader:
    """Non-empty documents, at most `limit`, grouped into chunks for the workers."""

    documents: Iterator[str]
    limit: int | None
    skipped_empty: int = 0
    taken: int = 0

    def chunks(self) -> Iterator[list[str]]:
        chunk: list[str] = []
        chars = 0
        for text in self.documents:
            if not text.strip():
                self.skipped_empty += 1
                continue
            self.taken += 1
            chunk.append(text)
            chars += len(text)
            if chars >= CHUNK_CHARS or len(chunk) >= CHUNK_DOCUMENTS:
                yield chunk
                chunk, chars = [], 0
            if self.limit is not None and self.taken >= self.limit:
                break  # before reading further: a stream is not pulled past the limit
        if chunk:
            yield chunk


@dataclass
class _SplitWriter:
    """Routes whole documents to the train/valid builders by the seeded split rule."""

    builders: dict
    valid_fraction: float
    seed: int
    counts: dict = field(default_factory=lambda: {split: [0, 0] for split in SPLITS})
    index: int = 0
    held: numpy.ndarray | None = None

    @property
    def documents(self) -> int:
        return sum(count[0] for count in self.counts.values()) + (self.held is not None)

    @property
    def tokens(self) -> int:
        held = 0 if self.held is None else len(self.held)
        return sum(count[1] for count in self.counts.values()) + held

    def add_chunk(self, tokens: numpy.ndarray, lengths: list[int]) -> None:
        offset = 0
        for length in lengths:
            document = tokens[offset : offset + length]
            offset += length
            if goes_to_valid(self.seed, self.index, self.valid_fraction):
                self._write("valid", document)
            else:
                # Hold back the latest train document: it may be needed to keep valid non-empty.
                if self.held is not None:
                    self._write("train", self.held)
                self.held = document
            self.index += 1

    def close(self) -> None:
        if self.held is None:
            return
        needs_valid = self.valid_fraction > 0 and self.counts["valid"][0] == 0 and self.counts["train"][0] > 0
        self._write("valid" if needs_valid else "train", self.held)
        self.held = None

    def split_info(self, split: str) -> SplitInfo:
        documents, tokens = self.counts[split]
        return SplitInfo(documents=documents, tokens=tokens)

    def _write(self, split: str, document: numpy.ndarray) -> None:
        self.builders[split].add_document(document, [len(document)])
        self.counts[split][0] += 1
        self.counts[split][1] += len(document)


def goes_to_valid(seed: int, index: int, fraction: float) -> bool:
    """A uniform draw in [0, 1) from (seed, document index), independent of chunking and workers."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < fraction


def encode_documents(tokenizer: Tokenizer, dtype: type[numpy.number], texts: list[str]) -> tuple[numpy.ndarray, list[int]]:
    """Token ids of each text followed by EOS, concatenated, and each document's length."""
    pieces = []
    for ids in tokenizer.encode_batch(texts):
        ids.append(tokenizer.eos_id)
        pieces.append(numpy.asarray(ids, dtype=dtype))
    return numpy.concatenate(pieces), [len(piece) for piece in pieces]


# Set once per worker process by the pool initializer (the tokenizer travels pickled).
_worker_state: tuple[Tokenizer, type[numpy.number]] | None = None


def _init_worker(tokenizer: Tokenizer, dtype: type[numpy.number]) -> None:
    global _worker_state
    _worker_state = (tokenizer, dtype)


def _encode_in_worker(texts: list[str]) -> tuple[numpy.ndarray, list[int]]:
    tokenizer, dtype = _worker_state
    return encode_documents(tokenizer, dtype, texts)


def _tokenize_chunks(
    chunks: Iterator[list[str]], tokenizer: Tokenizer, dtype: type[numpy.number], workers: int
) -> Iterator[tuple[numpy.ndarray, list[int]]]:
    """Tokenized chunks in input order; with workers > 1, a bounded window of chunks in flight."""
    if workers == 1:
        for chunk in chunks:
            yield encode_documents(tokenizer, dtype, chunk)
        return
    # spawn, not fork: the parent runs a progress-bar thread and may hold torch's threads.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer, dtype)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _fingerprint(prefix: Path) -> str:
    """sha256 of both .idx files: document lengths and offsets, which is all megatron's sample
    indices depend on, so it keys their cache."""
    digest = hashlib.sha256()
    for split in SPLITS:
        with open(split_prefix(prefix, split) + ".idx", "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _publish(temporary: Path, prefix: Path) -> None:
    """Rename the finished files into place; an old sidecar goes first so that a prefix with a
    sidecar never describes half-replaced files."""
    output_paths(prefix)[0].unlink(missing_ok=True)
    for old, new in zip(output_paths(temporary)[1:], output_paths(prefix)[1:]):
        os.replace(old, new)

