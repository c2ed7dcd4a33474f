"""Job rows and their life: created from a recipe, executed by a worker, ended in a state.

The CLI's ``run`` and the service's job runner both go through ``execute_job``: one code path
for a job whether it was started from a terminal or from the Studio. Each kind of recipe has
one runner function in ``RUNNERS``.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.recipes import RecipeBase, dumps_recipe, loads_recipe
from backend.store import Project, atomic_write_text, dumps

STATES = ("queued", "running", "paused", "stopped", "done", "failed", "interrupted")
FINAL = ("stopped", "done", "failed")
Runner = Callable[[Project, RecipeBase, Path, Any, bool], dict[str, Any]]


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def create_job(project: Project, recipe: RecipeBase, name: str | None = None) -> int:
    """A queued job row with its run folder and a copy of its recipe."""
    text = dumps_recipe(recipe, comments=False)
    with project.transaction():
        job_id = int(project.db["jobs"].insert({"kind": recipe.kind, "name": name or recipe.name or recipe.kind, "recipe": text, "state": "queued"}).last_pk)
        run_dir = project.root / "runs" / f"job-{job_id:05d}"
        project.db["jobs"].update(job_id, {"run_dir": str(run_dir.relative_to(project.root))})
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "recipe.toml", dumps_recipe(recipe))
    return job_id


def job_row(project: Project, job_id: int) -> dict[str, Any]:
    row = project.db.execute("SELECT * FROM jobs WHERE id = ?", [job_id]).fetchone()
    if row is None:
        raise KeyError(f"no job {job_id}")
    cols = [c[0] for c in project.db.execute("SELECT * FROM jobs LIMIT 0").description]
    return dict(zip(cols, row))


def set_state(project: Project, job_id: int, state: str, **fields: Any) -> None:
    if state not in STATES:
        raise ValueError(f"unknown job state {state}")
    with project.transaction():
        project.db["jobs"].update(job_id, {"state": state, **fields})


def _run_pretrain(project: Project, recipe: RecipeBase, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.train.pretrain import run_pretrain

    return run_pretrain(project, recipe, run_dir, reporter, resume=resume)  # type: ignore[arg-type]


def _run_import(project: Project, recipe: RecipeBase, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.data.importer import import_sources

    report = import_sources(
        project, recipe.dataset, recipe.sources, category_from=recipe.category_from,  # type: ignore[attr-defined]
        max_pixels=recipe.limits.max_pixels, min_side=recipe.limits.min_side,  # type: ignore[attr-defined]
        progress=lambda i, n: reporter.progress(i, n),
    )
    reporter.log(report.summary())
    return report.to_json()


def _run_sample(project: Project, recipe: RecipeBase, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.sample.cli import run_sample_recipe

    return run_sample_recipe(project, recipe, reporter)  # type: ignore[arg-type]


def _run_world(project: Project, recipe: RecipeBase, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.demo import add_world_data

    return add_world_data(project, recipe, log=reporter.log, progress=reporter.progress)  # type: ignore[arg-type]


RUNNERS: dict[str, Runner] = {"pretrain": _run_pretrain, "import": _run_import, "sample": _run_sample, "world": _run_world}


def is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def execute_job(project: Project, job_id: int, *, resume: bool = True, echo: bool = True) -> dict[str, Any]:
    """Run a job in this process; its row says how it ended (done, stopped, paused or failed)."""
    from backend.train.reporter import DbReporter, Reporter

    row = job_row(project, job_id)
    recipe = loads_recipe(row["recipe"], f"job {job_id}")
    runner = RUNNERS.get(recipe.kind)
    if runner is None:
        raise ValueError(f"job {job_id}: no runner for recipe kind {recipe.kind!r} yet")
    run_dir = project.resolve(row["run_dir"] or f"runs/job-{job_id:05d}")
    run_dir.mkdir(parents=True, exist_ok=True)
    main = is_main_rank()
    reporter = DbReporter(project, job_id, run_dir / "log.txt", echo=echo) if main else Reporter()
    if main:
        set_state(project, job_id, "running", pid=os.getpid(), started=row["started"] or now_iso(), heartbeat=time.time(), error=None, control=None)
    try:
        summary = runner(project, recipe, run_dir, reporter, resume)
    except BaseException as exc:
        if main:
            has_ckpt = (run_dir / "checkpoints" / "latest").exists()
            reporter.log("".join(traceback.format_exception(exc)))
            state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            set_state(project, job_id, state, error=f"{type(exc).__name__}: {exc}", ended=now_iso(), resumable=int(has_ckpt), pid=None)
        raise
    if main:
        state = summary.get("state", "done")
        atomic_write_text(run_dir / "summary.json", dumps(summary) + "\n")
        progress = 1.0 if state == "done" else _progress(project, job_id)
        final = {"step": int(summary["step"])} if isinstance(summary.get("step"), int) else {}  # the step its checkpoint holds
        set_state(project, job_id, state, ended=now_iso() if state in FINAL else None, resumable=int(state in ("paused", "stopped")),
                  pid=None, progress=progress, **final)
        if isinstance(reporter, DbReporter):
            reporter.close()
    return summary


def _progress(project: Project, job_id: int) -> float:
    row = project.db.execute("SELECT progress FROM jobs WHERE id = ?", [job_id]).fetchone()
    return float(row[0] or 0.0)


def delete_run(project: Project, job_id: int) -> None:
    row = job_row(project, job_id)
    if row["run_dir"]:
        shutil.rmtree(project.resolve(row["run_dir"]), ignore_errors=True)
    with project.transaction():
        project.db["jobs"].delete(job_id)
