"""`signal-backend base` chains two recipes in `make base`: run again, a finished one is left alone."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from conftest import run_cli, tiny_pretrain_recipe


def test_base_does_not_retrain_or_reship_a_finished_recipe(shapes_project: Path, tmp_path: Path):
    project = tmp_path / "proj"
    shutil.copytree(shapes_project, project)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(tiny_pretrain_recipe(name="tiny-base", steps=2, eval_images=2))
    run_cli("run", str(recipe), "--project", str(project), check=True)
    out = tmp_path / "shipped"

    proc = run_cli("base", "--recipe", str(recipe), "--project", str(project), "--out", str(out), check=True)

    assert "already finished" in proc.stdout and "--again" in proc.stdout
    jobs = sqlite3.connect(project / "project.db").execute("SELECT name, state FROM jobs WHERE name = 'tiny-base'").fetchall()
    assert jobs == [("tiny-base", "done")]  # no second job was created (the copied project may hold other jobs)
    assert not out.exists()  # and nothing was measured or shipped over the model already there
