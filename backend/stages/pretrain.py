"""The ``pretrain`` stage: the curriculum run of ``train/pretrain.py`` as a job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.recipes import PretrainRecipe
from backend.store import Project


def run(project: Project, recipe: PretrainRecipe, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.train.pretrain import run_pretrain

    return run_pretrain(project, recipe, run_dir, reporter, resume=resume)
