"""Caption edits with history, bulk find/replace (undoable as a batch), keyword categories."""

from __future__ import annotations

import re
import uuid
from typing import Any

from backend.store import Project

from .captions import caption_complexity


def edit_caption(project: Project, item_id: int, new: str, batch: str | None = None) -> dict[str, Any]:
    """Set one caption; the old text goes into ``caption_edits``."""
    row = project.db.execute("SELECT caption FROM items WHERE id = ?", [item_id]).fetchone()
    if row is None:
        raise KeyError(f"no item {item_id}")
    new = new.strip()
    if new == row[0]:
        return {"id": item_id, "caption": new, "changed": False}
    with project.transaction():
        project.db["caption_edits"].insert({"item_id": item_id, "old": row[0], "new": new, "batch": batch})
        project.db.execute("UPDATE items SET caption = ?, complexity = ? WHERE id = ?", [new, caption_complexity(new), item_id])
    return {"id": item_id, "caption": new, "changed": True}


def replace_captions(project: Project, dataset: str, find: str, replace: str, *, regex: bool = False, case: bool = True) -> dict[str, Any]:
    """Find/replace over a dataset's captions in one transaction; returns the batch id to undo it."""
    ds = project.dataset_id(dataset)
    try:
        pattern = re.compile(find if regex else re.escape(find), 0 if case else re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    if not find:
        raise ValueError("the search text is empty")
    batch = uuid.uuid4().hex[:12]
    changed = 0
    with project.transaction():
        for item_id, caption in project.db.execute("SELECT id, caption FROM items WHERE dataset_id = ?", [ds]).fetchall():
            new = pattern.sub(replace, caption or "")
            if new != caption:
                project.db["caption_edits"].insert({"item_id": item_id, "old": caption, "new": new, "batch": batch})
                project.db.execute("UPDATE items SET caption = ?, complexity = ? WHERE id = ?", [new, caption_complexity(new), item_id])
                changed += 1
    return {"batch": batch, "changed": changed}


def undo_batch(project: Project, batch: str) -> int:
    """Restore every caption a batch changed (newest edit first)."""
    rows = project.db.execute("SELECT id, item_id, old FROM caption_edits WHERE batch = ? ORDER BY id DESC", [batch]).fetchall()
    with project.transaction():
        for _edit_id, item_id, old in rows:
            project.db.execute("UPDATE items SET caption = ?, complexity = ? WHERE id = ?", [old, caption_complexity(old), item_id])
            project.db["caption_edits"].insert({"item_id": item_id, "old": "", "new": old, "batch": f"undo:{batch}"})
    return len(rows)


def caption_history(project: Project, item_id: int) -> list[dict[str, Any]]:
    cur = project.db.execute("SELECT id, old, new, batch, created FROM caption_edits WHERE item_id = ? ORDER BY id", [item_id])
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def categorise(project: Project, dataset: str, rules: dict[str, list[str]], *, overwrite: bool = False) -> dict[str, int]:
    """Keyword rules: the first category whose keyword appears (as a word) in the caption wins."""
    ds = project.dataset_id(dataset)
    compiled = [(cat, re.compile(r"\b(" + "|".join(re.escape(k) for k in kws) + r")\b", re.IGNORECASE)) for cat, kws in rules.items() if kws]
    counts: dict[str, int] = {}
    where = "" if overwrite else " AND (category IS NULL OR category = '')"
    with project.transaction():
        for item_id, caption in project.db.execute(f"SELECT id, caption FROM items WHERE dataset_id = ?{where}", [ds]).fetchall():
            for cat, pat in compiled:
                if pat.search(caption or ""):
                    project.db.execute("UPDATE items SET category = ? WHERE id = ?", [cat, item_id])
                    counts[cat] = counts.get(cat, 0) + 1
                    break
    return counts
