"""Where benchmark results go: each run appends one section to docs/benchmarks.md.

`GROW_BENCH_REPORT=FILE` sends the sections to FILE instead: on a lent device machine the repo is
a copy that is thrown away, so `bench/gpu_check.py` collects them under $OUT and
`bench/gpu_check_record.py` appends them to the real docs/benchmarks.md once they are back.
"""

from __future__ import annotations

import os
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nMeasured numbers; each section says when, where and how.\n"
REPORT_ENV = "GROW_BENCH_REPORT"


def append_section(text: str) -> None:
    """Append `text` (a markdown section) to docs/benchmarks.md (or $GROW_BENCH_REPORT), creating it if needed."""
    redirect = os.environ.get(REPORT_ENV)
    doc = Path(redirect) if redirect else DOC
    doc.parent.mkdir(parents=True, exist_ok=True)
    if not redirect and (not doc.exists() or doc.stat().st_size == 0):
        doc.write_text(HEADER)
    with doc.open("a") as handle:
        handle.write("\n" + text.rstrip("\n") + "\n")
