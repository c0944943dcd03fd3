"""DIR/series.json: what the series is (its identity) and where each step stands.

The identity is the plan's content and the series options; a re-run whose identity differs is
refused with one line naming the first difference, because its finished steps would belong to
another series (`--force` starts over). Step states are a record for people and `--json`
(pending, running, done, failed, with times); whether a step is really done is always decided
from its output on disk (`series/checks.py`), so a state file that lags behind a killed process
is harmless.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from grow_cli.errors import GrowError

FORMAT = "grow-series/1"
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


@dataclass(frozen=True)
class StepState:
    state: str = PENDING
    started: float | None = None  # unix time
    seconds: float | None = None  # wall time of the last (or current) attempt
    attempts: int = 0
    message: str | None = None


@dataclass(frozen=True)
class SeriesState:
    identity: dict
    steps: dict[str, StepState] = field(default_factory=dict)
    format: str = FORMAT

    def step(self, name: str) -> StepState:
        return self.steps.get(name, StepState())

    def with_step(self, name: str, **changes) -> "SeriesState":
        return replace(self, steps={**self.steps, name: replace(self.step(name), **changes)})

    def to_json(self) -> dict:
        return {"format": self.format, "identity": self.identity, "steps": {k: asdict(v) for k, v in self.steps.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "SeriesState":
        if data.get("format") != FORMAT:
            raise GrowError(f"series.json has format {data.get('format')!r}, this grow reads {FORMAT}: use a new --out or --force")
        return cls(data["identity"], {k: StepState(**v) for k, v in data.get("steps", {}).items()})


def first_difference(recorded, current, path: str = "") -> str | None:
    """The first place where two JSON values differ, as `path: recorded -> current`; None if equal."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        for key in list(recorded) + [k for k in current if k not in recorded]:
            found = first_difference(recorded.get(key), current.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(recorded, list) and isinstance(current, list) and len(recorded) == len(current):
        for index, (a, b) in enumerate(zip(recorded, current)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found:
                return found
        return None
    return None if recorded == current else f"{path}: {json.dumps(recorded)} -> {json.dumps(current)}"


def load_state(path: Path, identity: dict, force: bool) -> SeriesState | None:
    """The recorded state of this series; None when there is none (or --force discards it).
    GrowError when DIR holds a series with another identity."""
    if not path.is_file():
        return None
    try:
        state = SeriesState.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        if force:
            return None
        raise GrowError(f"{path} cannot be read ({type(error).__name__}): use another --out, or --force to start over") from None
    difference = first_difference(state.identity, identity)
    if difference is None:
        return state
    if force:
        return None
    raise GrowError(f"{path.parent} holds another series ({difference}): use another --out, or --force to start over")


def save_state(path: Path, state: SeriesState) -> None:
    from grow_cli.checkpoint.atomic import write_json_atomic

    write_json_atomic(path, state.to_json())


def now() -> float:
    return time.time()
