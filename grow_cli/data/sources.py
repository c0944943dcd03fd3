"""Where `grow data prepare` reads documents from: local files, a Hugging Face hub dataset, or the
shipped Shakespeare corpus.

Everything that can be checked before writing a byte is checked in `resolve_source` (files exist,
formats are known, parquet has the text column, the hub is reachable in principle), so a bad
input fails in a second with one line and leaves nothing behind. Documents come out in a fixed
order (files sorted by path, rows in file order), which is what makes `prepare` deterministic.
"""

from __future__ import annotations

import glob
import gzip
import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from grow_cli.data.corpus import CORPUS_NAME, shakespeare_files
from grow_cli.errors import GrowError

TEXT_SUFFIXES = (".txt",)
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
# Plain-text and JSON formats may also be gzip-compressed (FILE.jsonl.gz).
SUPPORTED = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_TRUE = {"1", "true", "yes", "on"}


def _format_of(path: Path) -> str | None:
    """The data suffix of `path` ('.jsonl' for x.jsonl.gz) or None when unsupported."""
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
        allowed = TEXT_SUFFIXES + JSON_SUFFIXES
    else:
        allowed = SUPPORTED
    if suffixes and suffixes[-1] in allowed:
        return suffixes[-1]
    return None


@dataclass(frozen=True)
class LocalFiles:
    """Files in a fixed order: a .txt file is one document; .jsonl/.json/.parquet rows are documents."""

    files: tuple[Path, ...]
    text_key: str

    @property
    def known_documents(self) -> int | None:
        """The document count when it is known without reading (every file is plain text)."""
        if all(_format_of(path) in TEXT_SUFFIXES for path in self.files):
            return len(self.files)
        return None

    def descriptions(self) -> tuple[str, ...]:
        return tuple(str(path) for path in self.files)

    def documents(self) -> Iterator[str]:
        for path in self.files:
            kind = _format_of(path)
            try:
                if kind in TEXT_SUFFIXES:
                    with _open_text(path) as stream:
                        yield stream.read()
                elif kind in JSON_SUFFIXES:
                    yield from _json_documents(path, self.text_key)
                else:
                    yield from _parquet_documents(path, self.text_key)
            except UnicodeDecodeError as error:
                raise GrowError(
                    f"{path}:{_first_undecodable_line(path)} is not UTF-8 ({error.reason}); convert the file "
                    "to UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove the line"
                ) from None


@dataclass(frozen=True)
class HubDataset:
    """A `datasets` hub dataset, streamed (nothing is downloaded up front)."""

    repo_id: str
    name: str | None
    split: str
    text_key: str

    known_documents = None  # a stream's length is unknown until it ends
    files: tuple[Path, ...] = ()  # no local files

    def descriptions(self) -> tuple[str, ...]:
        config = f":{self.name}" if self.name else ""
        return (f"hf://{self.repo_id}{config}[{self.split}]",)

    def documents(self) -> Iterator[str]:
        import datasets

        try:
            stream = datasets.load_dataset(self.repo_id, name=self.name, split=self.split, streaming=True)
        except Exception as error:  # datasets raises many kinds for unknown ids/configs/splits/network
            raise GrowError(
                f"cannot open hub dataset {self.repo_id} (name={self.name}, split={self.split}): "
                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            ) from None
        for index, row in enumerate(stream):
            yield _text_of(row, self.text_key, f"{self.repo_id} row {index}")


Source = LocalFiles | HubDataset


def resolve_source(
    inputs: list[str], text_key: str = "text", name: str | None = None, split: str = "train"
) -> Source:
    """Turn --input values into a document source, checking everything that can be checked now."""
    if not inputs:
        raise GrowError("no --input given: pass files, a directory, a glob, a hub dataset id or `shakespeare`")
    if inputs == [CORPUS_NAME] and not Path(CORPUS_NAME).exists():
        return LocalFiles(tuple(shakespeare_files()), text_key)
    if len(inputs) == 1 and _looks_like_hub_id(inputs[0]):
        _check_hub_reachable(inputs[0])
        return HubDataset(inputs[0], name, split, text_key)
    files: list[Path] = []
    for item in inputs:
        files += _expand(item)
    unique = list(dict.fromkeys(files))
    for path in unique:
        if _format_of(path) in PARQUET_SUFFIXES:
            _check_parquet_column(path, text_key)
    return LocalFiles(tuple(unique), text_key)


def _looks_like_hub_id(item: str) -> bool:
    path = Path(item)
    return (
        not path.exists()
        and _HUB_ID.match(item) is not None
        and _GLOB_CHARS.search(item) is None
        and _format_of(path) is None
    )


def _check_hub_reachable(repo_id: str) -> None:
    """Fail at once when the hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in _TRUE:
            raise GrowError(
                f"{repo_id!r} is not a local path, and streaming it from the Hugging Face hub needs "
                f"network access but {variable}=1 is set: unset it on a machine with network, "
                f"or pass local .jsonl/.parquet/.txt files"
            )


def _expand(item: str) -> list[Path]:
    """One --input value (file, directory or glob) as sorted supported files."""
    if _GLOB_CHARS.search(item):
        matches = [Path(match) for match in sorted(glob.glob(os.path.expanduser(item), recursive=True))]
        files = [path for path in matches if path.is_file() and _format_of(path) is not None]
        if not files:
            raise GrowError(f"--input {item!r} matches no {'/'.join(SUPPORTED)} files")
        return files
    path = Path(item).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p) is not None)
        if not files:
            raise GrowError(f"directory {path} holds no {'/'.join(SUPPORTED)} files")
        return files
    if not path.exists():
        raise GrowError(f"input {path} does not exist (expected files, a directory, a glob, a hub id or `shakespeare`)")
    if _format_of(path) is None:
        raise GrowError(f"input {path}: unsupported format; use {'/'.join(SUPPORTED)} (optionally .gz for text/JSON)")
    return [path]


def _check_parquet_column(path: Path, text_key: str) -> None:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as error:  # pyarrow raises ArrowInvalid/OSError for non-parquet bytes
        raise GrowError(f"{path} is not a readable parquet file ({error})") from None
    if text_key not in names:
        raise GrowError(f"{path} has no column {text_key!r} (columns: {', '.join(names)}); pass --text-key")


def _first_undecodable_line(path: Path) -> int:
    """The 1-based number of the first line of `path` that is not UTF-8 (decoding reads ahead in
    blocks, so the decoder's own position says nothing about the line)."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as stream:
        for number, line in enumerate(stream, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _text_of(record: object, text_key: str, where: str) -> str:
    if not isinstance(record, dict) or text_key not in record:
        raise GrowError(f"{where} has no key {text_key!r}; pass --text-key with the field holding the text")
    text = record[text_key]
    if not isinstance(text, str):
        raise GrowError(f"{where}: field {text_key!r} is {type(text).__name__}, not text")
    return text


def _json_documents(path: Path, text_key: str) -> Iterator[str]:
    """JSON lines, or a .json file holding one array of records."""
    with _open_text(path) as stream:
        head = stream.read(1)
        while head and head.isspace():
            head = stream.read(1)
        if head == "[":
            try:
                records = json.loads(head + stream.read())
            except json.JSONDecodeError as error:
                raise GrowError(f"{path} is not valid JSON ({error})") from None
            for index, record in enumerate(records):
                yield _text_of(record, text_key, f"{path} record {index}")
            return
        lines = itertools.chain([head + stream.readline()], stream)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise GrowError(f"{path}:{number} is not valid JSON ({error.msg})") from None
            yield _text_of(record, text_key, f"{path}:{number}")


def _parquet_documents(path: Path, text_key: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(columns=[text_key], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text
