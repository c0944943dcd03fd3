"""Where the offline assets live (GPT-2 BPE ranks, the Shakespeare plays).

`make install` puts them under the repository's `.cache/assets` and exports GROW_ASSETS; an
installed package looks in ~/.cache/grow/assets as well. One search order for every asset, so
the tokenizer and the corpus never disagree about which copy they use.
"""

from __future__ import annotations

import os
from pathlib import Path

# The checkout this package was imported from (an editable install): <repo>/grow_cli/data/assets.py.
_REPO_ASSETS = Path(__file__).resolve().parents[2] / ".cache" / "assets"
_USER_ASSETS = Path("~/.cache/grow/assets")


def asset_dirs() -> list[Path]:
    """The asset directories in lookup order: $GROW_ASSETS, ~/.cache/grow/assets, the checkout's."""
    dirs = []
    if os.environ.get("GROW_ASSETS"):
        dirs.append(Path(os.environ["GROW_ASSETS"]).expanduser())
    dirs.append(_USER_ASSETS.expanduser())
    dirs.append(_REPO_ASSETS)
    unique: list[Path] = []
    for directory in dirs:
        if directory not in unique:
            unique.append(directory)
    return unique


def find_asset(name: str) -> Path | None:
    """The first existing `name` (a file or directory) under the asset directories, or None."""
    for directory in asset_dirs():
        candidate = directory / name
        if candidate.exists():
            return candidate
    return None


def describe_search(name: str) -> str:
    """The places searched for `name`, for error messages."""
    return ", ".join(str(directory / name) for directory in asset_dirs())
