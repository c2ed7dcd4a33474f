"""Parameter types shared by the routes: ids and counters that SQLite can hold."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_INT = 2**53  # beyond this SQLite (int64) and JSON clients (double) disagree

Id = Annotated[int, Path(ge=0, le=MAX_INT)]
Count = Annotated[int, Query(ge=0, le=MAX_INT)]
