"""The run directory `grow pretrain --out RUN` writes, and finding a checkpoint from what a user types.

A run directory holds `run.json` (the run's identity and settings, written once), `iter_0000100/`...
(torch_dist checkpoints, each complete once renamed into place), `latest` (the name of the newest,
replaced atomically after each save), `metrics.jsonl`, `tensorboard/` and, at exit,
`summary.json`. Training writes it, eval and series read it: every name is defined here only.

Every command that reads a checkpoint accepts a checkpoint, a run directory or its `latest`, so
`grow expand runs/2B`, `grow expand runs/2B/latest` and `grow expand runs/2B/iter_0040000` all work.

Megatron-LM finds a checkpoint only through `latest_checkpointed_iteration.txt` in its save
directory (an iteration number, or `release` for the `release/` directory) and silently starts
from random weights without it. So grow writes that tracker next to `latest` in every directory
holding checkpoints, and honours it when reading: a Megatron-LM save directory works as it is.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Protocol

from grow_cli.checkpoint.atomic import _barrier, _is_main, atomic_directory, write_json_atomic, write_text_atomic
from grow_cli.errors import GrowError

LATEST_FILE = "latest"
TRACKER_FILE = "latest_checkpointed_iteration.txt"  # Megatron-LM's `latest`
RELEASE = "release"  # Megatron-LM's name for a checkpoint without training state
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_CHECKPOINT = r"iter_(\d{7,})"
_CHECKPOINT_NAME = re.compile(f"^{_CHECKPOINT}$")
# What a run directory may hold besides run.json (a `grow slurm` script and its logs come first).
_RUN_ENTRY = re.compile(
    "^("
    + "|".join(re.escape(name) for name in (LATEST_FILE, TRACKER_FILE, METRICS_FILE, SUMMARY_FILE, TENSORBOARD_DIR))
    + rf"|{_CHECKPOINT}|\..+|slurm-.*\.out|.*\.sbatch)$"
)


class RunSpec(Protocol):
    """What the run directory needs to know about a run (grow_cli.training.config.TrainConfig)."""

    out: Path
    resume: bool

    def identity(self) -> dict: ...

    def to_dict(self) -> dict: ...


# ---- checkpoints of a run ----------------------------------------------------------------
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


def tracked_checkpoint(save_dir: Path) -> Path | None:
    """The checkpoint Megatron-LM's tracker in `save_dir` names (None without a tracker); a
    GrowError for a tracker that is unreadable or names a checkpoint that is not there."""
    tracker = Path(save_dir) / TRACKER_FILE
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if text == RELEASE:
        name = RELEASE
    elif text.isdigit():
        name = checkpoint_name(int(text))
    else:
        raise GrowError(f"{tracker} holds {text[:40]!r}, neither an iteration nor 'release'; fix or remove it")
    if not (tracker.parent / name / "metadata.json").is_file():
        raise GrowError(
            f"{tracker} names {name}, but {tracker.parent / name} is not a complete checkpoint; "
            "point the tracker at an existing iteration or pass that iteration's directory"
        )
    return tracker.parent / name


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory `path` means; unchanged when it names nothing we recognise."""
    path = Path(path)
    if (path / "metadata.json").is_file():
        return path
    if path.name in (LATEST_FILE, TRACKER_FILE) and path.is_file():
        if path.name == LATEST_FILE:
            return path.parent / path.read_text().strip()
        path = path.parent
    tracked = tracked_checkpoint(path) if path.is_dir() else None
    if tracked is not None:
        return tracked
    if (path / RELEASE / "metadata.json").is_file():
        return path / RELEASE
    return latest_checkpoint(path) or path


def run_directory(checkpoint: str | Path) -> Path | None:
    """The `grow pretrain` run directory holding `checkpoint` (None for a standalone checkpoint).
    Lineage records keep paths as typed, so a run directory or its `latest` is resolved first."""
    path = resolve_checkpoint(checkpoint)
    if _CHECKPOINT_NAME.match(path.name) and (path.parent / METRICS_FILE).is_file():
        return path.parent
    return None


def write_latest(run_dir: Path, name: str) -> None:
    """Point `latest` and Megatron-LM's tracker at the checkpoint `name` (`iter_N` or `release`)."""
    write_text_atomic(Path(run_dir) / LATEST_FILE, name + "\n")
    match = _CHECKPOINT_NAME.match(name)
    write_text_atomic(Path(run_dir) / TRACKER_FILE, (str(int(match.group(1))) if match else RELEASE) + "\n")


@contextlib.contextmanager
def release_checkpoint(out: str | Path, *, force: bool, what: str):
    """Collective: yield the directory a standalone checkpoint (expand, import) is written into,
    `OUT/release/`, so that `OUT` is what Megatron-LM's `--load` expects (the tracker says
    `release`: weights without training state); `OUT` appears complete or not at all."""
    with atomic_directory(out, force=force, what=what) as tmp:
        checkpoint = tmp / RELEASE
        if _is_main():
            checkpoint.mkdir()
        _barrier()
        yield checkpoint
        if _is_main():
            write_latest(tmp, RELEASE)


def prune_checkpoints(run_dir: Path, keep_last: int, protect: Path) -> list[Path]:
    """Delete all but the `keep_last` newest complete checkpoints; never `protect`."""
    found = [path for _, path in run_checkpoints(run_dir)]
    doomed = [path for path in found[: max(0, len(found) - keep_last)] if path != protect]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ---- the run's identity ------------------------------------------------------------------
def check_run_directory(run: RunSpec) -> Path | None:
    """Validate `run.out` for this run and return the checkpoint to resume from (None: start).

    Read-only (every rank may call it): refuses a directory that holds something else, another
    run, or this run with different settings; refuses to resume under --no-resume.
    """
    out = run.out
    if out.exists() and not out.is_dir():
        raise GrowError(f"--out {out} is a file; give a directory")
    if not out.exists():
        return None
    run_file = out / RUN_FILE
    if not run_file.is_file():
        foreign = sorted(entry.name for entry in out.iterdir() if not _RUN_ENTRY.match(entry.name))
        if foreign:
            raise GrowError(
                f"--out {out} holds other files ({', '.join(foreign[:3])}) and no grow run ({RUN_FILE}); pick a new directory"
            )
        return None
    try:
        recorded = json.loads(run_file.read_text())["identity"]
    except (ValueError, KeyError, TypeError):
        raise GrowError(f"{run_file} is not a grow run record; pick a new --out") from None
    mine = run.identity()
    if recorded.get("shape") != mine["shape"] or recorded.get("stage") != mine["stage"]:
        raise GrowError(
            f"--out {out} holds another run (stage {recorded.get('stage')}, shape "
            f"{_describe(recorded.get('shape'))}); this run is stage {mine['stage']}, {_describe(mine['shape'])}: pick another --out"
        )
    changed = [key for key in mine if recorded.get(key) != mine[key]]
    if changed:
        key = changed[0]
        raise GrowError(
            f"--out {out} holds this run started with {key}={recorded.get(key)} (now {mine[key]}); "
            f"resume with the same settings or pick another --out"
        )
    resume = latest_checkpoint(out)
    if resume is not None and not run.resume:
        raise GrowError(
            f"--out {out} already holds checkpoints of this run (latest {resume.name}); "
            "drop --no-resume to continue it, or pick another --out"
        )
    return resume


def _describe(shape: dict | None) -> str:
    from grow_cli.shape import ModelShape

    try:
        return ModelShape.from_dict(shape).describe()
    except Exception:
        return "unknown"


def write_run_record(run: RunSpec) -> None:
    """Rank 0: create the run directory, record the run (once; identical on resume) and drop
    the previous attempt's summary (a summary always describes the latest attempt)."""
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / SUMMARY_FILE).unlink(missing_ok=True)
    path = run.out / RUN_FILE
    if not path.exists():
        write_json_atomic(path, {"identity": run.identity(), "config": run.to_dict()})


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json_atomic(Path(run_dir) / SUMMARY_FILE, summary)


def read_summary(run_dir: Path) -> dict | None:
    """The run's `summary.json` (None when the last attempt did not get to write one)."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_metrics(path: Path, kind: str | None = None, tail_bytes: int | None = None) -> list[dict]:
    """The records of a `metrics.jsonl` (all, or those of `kind`: "run", "train", "valid"), in order.

    A line that does not parse is skipped rather than fatal: a killed job leaves its last line cut
    short, and a read of only the last `tail_bytes` (cheap progress on a long run) starts inside a
    line. A file not written yet has no records.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with path.open("rb") as handle:
        if tail_bytes is not None:
            handle.seek(max(0, path.stat().st_size - tail_bytes))
        text = handle.read().decode(errors="replace")
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (kind is None or record.get("kind") == kind):
            records.append(record)
    return records
