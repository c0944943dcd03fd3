"""Content hashes of every checkpoint grow writes, checked by every reader.

A flipped or lost block inside a `.distcp` shard still unpickles into numbers (weights of 1e6,
a plausible loss line), so nothing downstream notices; only a hash of what was written does.
After a checkpoint is complete, and before it is renamed into place, rank 0 hashes each item DCP
stored (one tensor chunk or object: its file, byte range and key come from DCP's own `.metadata`
index) and each small file beside them (`common.pt`, `.metadata`, `metadata.json`) into
`grow_checksums.json`. A reader verifies the whole checkpoint once per process before using it,
so a mismatch is one line naming the file and the tensor instead of silently wrong weights or a
torch traceback. Checkpoints without the record (written by Megatron-LM or an older grow) are
read as they are.

xxh3-64 runs at memory speed, so verification is on by default; `grow --no-verify-checksums`
(environment GROW_VERIFY_CHECKSUMS=0, inherited by torchrun's workers) turns it off.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import xxhash

from grow_cli.errors import GrowError

CHECKSUMS_FILE = "grow_checksums.json"
ALGORITHM = "xxh3_64"
VERIFY_ENV = "GROW_VERIFY_CHECKSUMS"
_SIDE_FILES = ("common.pt", ".metadata", "metadata.json")
_BLOCK = 16 << 20
_verified: dict[Path, int] = {}  # checkpoint -> mtime_ns of the record it passed


@dataclass(frozen=True)
class StoredItem:
    """One byte range DCP wrote: what it holds (`key` at `offset` in the tensor) and its hash."""

    file: str
    start: int
    length: int
    key: str
    offset: tuple[int, ...] | None
    digest: str

    def describe(self) -> str:
        where = "" if not self.offset or not any(self.offset) else f" at offset {list(self.offset)}"
        return f"{self.key}{where}"


@dataclass(frozen=True)
class FileDigest:
    name: str
    size: int
    digest: str


def verification_enabled() -> bool:
    return os.environ.get(VERIFY_ENV, "1") != "0"


def _hash_range(handle, start: int, length: int) -> str:
    """xxh3 of `length` bytes at `start`, read into one reused buffer (about twice as fast as
    `read()`, which allocates a fresh bytes object per block)."""
    handle.seek(start)
    hasher = xxhash.xxh3_64()
    buffer = memoryview(bytearray(min(_BLOCK, max(length, 1))))
    left = length
    while left > 0:
        got = handle.readinto(buffer[: min(len(buffer), left)])
        if not got:
            break  # truncated: the digest of what is there cannot match
        hasher.update(buffer[:got])
        left -= got
    return hasher.hexdigest()


def check_shard_files(directory: Path, storage_data: dict) -> None:
    """Every shard file DCP's index (`storage_data`) names is there and long enough."""
    ends: dict[str, int] = {}
    for info in storage_data.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    missing = sorted(name for name in ends if not (directory / name).is_file())
    if missing:
        raise GrowError(f"{directory} is missing shard files {', '.join(missing)}: incomplete or damaged checkpoint")
    for name, needed in ends.items():
        if (directory / name).stat().st_size < needed:
            raise GrowError(f"{directory}/{name} is truncated: the checkpoint is corrupted")


def _stored_ranges(directory: Path) -> list[tuple[str, int, int, str, tuple[int, ...] | None]]:
    """(file, start, length, key, tensor offset) of every item in DCP's index of `directory`,
    after checking that the files it names are complete."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(directory)).read_metadata()
    check_shard_files(directory, metadata.storage_data)
    return sorted(
        (info.relative_path, info.offset, info.length, index.fqn, tuple(index.offset) if index.offset is not None else None)
        for index, info in metadata.storage_data.items()
    )


def _hash_file_items(directory: Path, ranges: list) -> list[StoredItem]:
    with open(directory / ranges[0][0], "rb") as handle:
        return [StoredItem(f, s, n, k, o, _hash_range(handle, s, n)) for f, s, n, k, o in ranges]


def _hash_items(directory: Path) -> list[StoredItem]:
    """Every stored item's digest, one thread per shard file (hashing releases the GIL)."""
    by_file: dict[str, list] = {}
    for entry in _stored_ranges(directory):
        by_file.setdefault(entry[0], []).append(entry)
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(by_file)))) as pool:
        results = pool.map(lambda ranges: _hash_file_items(directory, ranges), by_file.values())
        return [item for items in results for item in items]


def _hash_side_files(directory: Path) -> list[FileDigest]:
    digests = []
    for name in _SIDE_FILES:
        path = directory / name
        if path.is_file():
            with open(path, "rb") as handle:
                size = path.stat().st_size
                digests.append(FileDigest(name, size, _hash_range(handle, 0, size)))
    return digests


def record_checksums(directory: str | Path) -> None:
    """Rank 0, once every rank's files are complete: write the checkpoint's hash record."""
    directory = Path(directory)
    record = {
        "algorithm": ALGORITHM,
        "files": [asdict(d) for d in _hash_side_files(directory)],
        "items": [asdict(item) for item in _hash_items(directory)],
    }
    (directory / CHECKSUMS_FILE).write_text(json.dumps(record) + "\n")


def _damaged(directory: Path, what: str) -> GrowError:
    return GrowError(
        f"{directory}/{what} does not match the checksum recorded when it was written: the checkpoint is "
        "damaged; restore it from a copy or re-create it (grow --no-verify-checksums reads it anyway)"
    )


def verify_checkpoint(directory: str | Path) -> bool:
    """Check `directory` against its hash record (once per process); False when it has none.

    Raises a GrowError naming the first damaged file (and the tensor in it)."""
    directory = Path(directory)
    record_path = directory / CHECKSUMS_FILE
    if not record_path.is_file():
        return False
    stamp = record_path.stat().st_mtime_ns
    if _verified.get(directory.resolve()) == stamp:
        return True
    try:
        record = json.loads(record_path.read_text())
        files = [FileDigest(**d) for d in record["files"]]
        expected = [StoredItem(**{**d, "offset": tuple(d["offset"]) if d["offset"] is not None else None}) for d in record["items"]]
    except (ValueError, KeyError, TypeError):
        raise GrowError(f"{record_path} is not a grow checksum record; the checkpoint is damaged") from None
    if record.get("algorithm") != ALGORITHM:
        raise GrowError(f"{record_path} uses checksum {record.get('algorithm')!r}; this grow knows {ALGORITHM}: upgrade grow")
    actual = {d.name: d for d in _hash_side_files(directory)}
    for digest in files:
        if actual.get(digest.name) != digest:
            raise _damaged(directory, digest.name)
    found = {(i.file, i.start): i for i in _hash_items(directory)}
    for item in expected:
        if found.get((item.file, item.start)) != item:
            raise _damaged(directory, f"{item.file}: tensor {item.describe()}")
    _verified[directory.resolve()] = stamp
    return True


def check_integrity(directory: str | Path) -> None:
    """What readers call: verify `directory` unless the user opted out."""
    if verification_enabled():
        verify_checkpoint(directory)


def sound_checkpoint(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (None: it is complete and verifies)."""
    for name in _SIDE_FILES:
        if not (checkpoint / name).is_file():
            return f"it has no {name}"
    if verification_enabled():
        try:
            verify_checkpoint(checkpoint)
        except GrowError as error:
            return str(error).split(": the checkpoint is damaged")[0]
    return None


def newest_sound(checkpoints: list[Path]) -> tuple[Path | None, list[str]]:
    """The newest of `checkpoints` (oldest first) that is sound, and why each newer one is not."""
    skipped = []
    for checkpoint in reversed(checkpoints):
        reason = sound_checkpoint(checkpoint)
        if reason is None:
            return checkpoint, skipped
        skipped.append(f"{checkpoint.name} is unusable ({reason})")
    return None, skipped
