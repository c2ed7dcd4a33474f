"""The ``import`` stage: a user's folders (or archives) into a dataset, with a report of what was skipped and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.recipes import ImportRecipe
from backend.store import Project


def run(project: Project, recipe: ImportRecipe, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.data.importer import import_sources

    report = import_sources(
        project, recipe.dataset, recipe.sources, category_from=recipe.category_from,
        max_pixels=recipe.limits.max_pixels, min_side=recipe.limits.min_side,
        progress=lambda i, n: reporter.progress(i, n),
    )
    reporter.log(report.summary())
    return report.to_json()
