"""Where benchmark results go: each run appends one section to docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nMeasured numbers; each section says when, where and how.\n"


def append_section(text: str) -> None:
    """Append `text` (a markdown section) to docs/benchmarks.md, creating the file if needed."""
    DOC.parent.mkdir(exist_ok=True)
    if not DOC.exists() or DOC.stat().st_size == 0:
        DOC.write_text(HEADER)
    with DOC.open("a") as handle:
        handle.write("\n" + text.rstrip("\n") + "\n")
