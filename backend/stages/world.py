"""The ``world`` stage: render ShapesWorld, import it through the normal path, curate it.

A job of this kind is how the demo and the base project get their data, so the import and
curation a user's own folder goes through are the ones the embedded world goes through too.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from backend.paths import shipped_base_dir, shipped_reward_prior_dir
from backend.recipes import WorldRecipe
from backend.store import Project


def add_world_data(project: Project, recipe: WorldRecipe, log=print, progress=None) -> dict:
    """Export ShapesWorld into ``exports/<dataset>``, import it through the normal path, curate it."""
    from backend.data.curate import curate
    from backend.data.importer import import_sources
    from backend.world.export import export_world, subject_folder

    export = project.root / "exports" / recipe.dataset
    t0 = time.perf_counter()
    export_world(export, recipe.images, recipe.seed, subject=recipe.subject, defects=recipe.defects, resolution=recipe.resolution,
                 progress=(lambda i, n: progress(i, 2 * n)) if progress else None)
    log(f"exported {recipe.images} ShapesWorld images{' (+ planted bad files)' if recipe.defects else ''} to {export} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    report = import_sources(project, recipe.dataset, [export], progress=(lambda i, n: progress(n + i, 2 * n)) if progress else None)
    log(f"import ({time.perf_counter() - t0:.1f} s):\n" + report.summary())
    cur = curate(project, recipe.dataset)
    log("curation:\n" + cur.summary())
    if recipe.subject:
        import_sources(project, "subject", [subject_folder(export)])
        log("imported the DreamBooth subject's 5 renders as dataset 'subject'")
    if recipe.base_model:
        install_shipped_base(project, log)
        install_shipped_reward_prior(project, log)
    return {"state": "done", "import": report.to_json(), "curation": {k: v for k, v in cur.to_json().items() if not k.endswith("clusters")}}


def install_shipped_base(project: Project, log=print) -> int | None:
    """Copy the shipped base into ``project/models`` and list it, so the Playground and later stages
    find it there (no route serves files outside a project). Once per project."""
    return install_shipped(project, shipped_base_dir(), "base", log, missing="`make base` trains it")


def install_shipped_reward_prior(project: Project, log=print) -> int | None:
    """The shipped reward prior, listed as a reward model: the Playground scores with it before any rating."""
    return install_shipped(project, shipped_reward_prior_dir(), "reward", log, missing="`signal-backend reward pretrain` trains it")


def install_shipped(project: Project, src: Path, kind: str, log=print, missing: str = "") -> int | None:
    name = src.name
    if not (src / "card.json").exists():
        log(f"no shipped {name} yet (resources/models/{name}); {missing}")
        return None
    row = project.db.execute("SELECT id FROM models WHERE name = ?", [name]).fetchone()
    if row:
        return int(row[0])
    dest = project.root / "models" / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    card = json.loads((src / "card.json").read_text())
    with project.transaction():
        model_id = int(project.db["models"].insert({"kind": kind, "name": name, "path": f"models/{name}", "parent_id": None,
                                                    "job_id": None, "card": json.dumps(card)}).last_pk)
    figure = (f"strict ShapesEval {card['shapes_eval']['overall']:.3f}" if "shapes_eval" in card else
              f"zero-shot accuracy {card['zero_shot']['accuracy']:.3f}" if "zero_shot" in card else "")
    log(f"added the shipped {name} as model #{model_id}" + (f" ({figure})" if figure else ""))
    return model_id


def run(project: Project, recipe: WorldRecipe, run_dir: Any, reporter: Any, resume: bool) -> dict[str, Any]:
    return add_world_data(project, recipe, log=reporter.log, progress=reporter.progress)
