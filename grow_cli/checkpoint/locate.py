"""Finding a checkpoint from what a user types: a checkpoint, a run directory or its `latest`.

`grow pretrain` writes checkpoints as RUN/iter_0000100 (complete once renamed into place) and a
`latest` pointer file naming the newest. Every command that reads a checkpoint accepts any of
the three spellings, so `grow expand runs/2B`, `grow expand runs/2B/latest` and
`grow expand runs/2B/iter_0040000` all work.
"""

from __future__ import annotations

import re
from pathlib import Path

LATEST_FILE = "latest"
_CHECKPOINT_NAME = re.compile(r"^iter_(\d{7,})$")


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def run_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints of a run directory, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for entry in run_dir.iterdir():
        match = _CHECKPOINT_NAME.match(entry.name)
        if match and entry.is_dir() and (entry / "metadata.json").is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (by iteration, robust to a stale `latest`)."""
    found = run_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory `path` means; unchanged when it names nothing we recognise."""
    path = Path(path)
    if (path / "metadata.json").is_file():
        return path
    if path.name == LATEST_FILE and path.is_file():
        return path.parent / path.read_text().strip()
    return latest_checkpoint(path) or path
