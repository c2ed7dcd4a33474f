"""Parameter types shared by the routes: ids and counters that SQLite can hold."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

MAX_INT = 2**53  # beyond this SQLite (int64) and JSON clients (double) disagree

Id = Annotated[int, Path(ge=0, le=MAX_INT)]


def like_pattern(text: str, prefix_only: bool = False) -> str:
    """A LIKE pattern matching ``text`` literally (use with ESCAPE '\\'): inside, or as a prefix."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%" if prefix_only else "%" + escaped + "%"
