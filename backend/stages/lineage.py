"""Where a stage's output model joins the project: its sample grid beside the weights and its row in
``models`` with the parent it came from (lineage), written in one transaction. Shared by the stages
that save models (align, personalize, distill) so the lineage rule lives in one place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backend.store import Project


def register_model(project: Project, folder: Path, kind: str, name: str, parent: str, card: dict[str, Any], reporter: Any,
                   grid: Any = None) -> int:
    """Save ``grid`` (a PIL image, if any) as ``samples.png`` in ``folder`` and insert the model's row,
    its parent found by path; returns the new model's id."""
    if grid is not None:
        grid.save(folder / "samples.png")
    row = project.db.execute("SELECT id FROM models WHERE path = ?", [parent.rstrip("/")]).fetchone()
    with project.transaction():
        return int(project.db["models"].insert({"kind": kind, "name": name, "path": str(folder.relative_to(project.root)),
                                                "parent_id": row[0] if row else None, "job_id": getattr(reporter, "job_id", None),
                                                "card": json.dumps(card)}).last_pk)
