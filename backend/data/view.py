"""What a training recipe sees of a dataset: the 'curated' view leaves flagged items out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from backend.store import Project

VIEWS = ("curated", "all")
KEEP_FLAGS = ("chosen_keeper",)


def excluded(flags: list[str]) -> bool:
    """Whether an item with these flags stays out of the curated view (keeper choices do not count)."""
    return any(f not in KEEP_FLAGS for f in flags)


@dataclass(frozen=True)
class ViewItem:
    id: int
    hash: str
    ext: str
    width: int
    height: int
    caption: str
    category: str
    complexity: float

    def path(self, project: Project) -> Path:
        return project.blob_path(self.hash, self.ext)


def load_view(project: Project, dataset: str, view: str = "curated") -> list[ViewItem]:
    """Items of ``dataset`` in ``view`` order by id (stable, so sampling is reproducible)."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; one of {VIEWS}")
    ds = project.dataset_id(dataset)
    rows = project.db.execute(
        "SELECT id, hash, ext, width, height, caption, category, complexity, flags FROM items WHERE dataset_id = ? ORDER BY id", [ds]
    ).fetchall()
    items = []
    for rid, h, ext, w, hh, cap, cat, cx, flags in rows:
        if view == "curated" and excluded(json.loads(flags or "[]")):
            continue
        items.append(ViewItem(rid, h, ext, w, hh, cap or "", cat or "uncategorised", float(cx or 0.0)))
    return items
