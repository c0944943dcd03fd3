"""Append a GPU check's results, once its files are back from the device, to docs/benchmarks.md.

The device machine works on a throw-away copy of the repo, so `bench/gpu_check.py` leaves its
tables in $OUT (tables.md, status.json); this turns them into one section of docs/benchmarks.md
headed by the date, device and command, the benchmarks' own sections nested under it.

    python bench/gpu_check_record.py DIR    # DIR: the run's files_at folder (or bench/out)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from benchdoc import append_section
from gpu_check import STATUS, TABLES, CheckRecord


def section(record: CheckRecord, tables: str) -> str:
    """The record's heading and step table, then `tables` with every heading one level deeper."""
    nested = re.sub(r"^(#+) ", r"#\1 ", tables.strip(), flags=re.MULTILINE)
    return "\n".join([
        f"## GPU check: {record.device} ({record.date})",
        "",
        f"- command: `{record.command}` ({record.mode}, {record.total_s:.0f} s in all; see \"Running the GPU check\")",
        "",
        record.step_table(),
        "",
        nested,
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="folder holding the check's status.json and tables.md")
    args = parser.parse_args()
    status, tables = args.dir / STATUS, args.dir / TABLES
    if not status.exists():
        raise SystemExit(f"{status} is missing: point at the folder the GPU check wrote ($OUT or bench/out)")
    text = section(CheckRecord.load(status), tables.read_text() if tables.exists() else "")
    append_section(text)
    print(text)


if __name__ == "__main__":
    main()
