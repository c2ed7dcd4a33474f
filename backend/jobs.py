"""Job rows and their life: created from a recipe, executed by a worker, ended in a state.

The CLI's ``run`` and the service's job runner both go through ``execute_job``: one code path
for a job whether it was started from a terminal or from the Studio. What a job of each kind runs
comes from the stage registry (``backend/stages``); every change of state goes through
``store/job_state.py``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from backend.recipes import RecipeBase, dumps_recipe, loads_recipe
from backend.stages import get_stage
from backend.store import Project, atomic_write_text, dumps, job_state
from backend.store.job_state import FINAL


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def create_job(project: Project, recipe: RecipeBase, name: str | None = None) -> int:
    """A queued job row with its run folder and a copy of its recipe; a recipe this machine cannot run
    (``preflight``: an incomplete model folder, more memory than the device has) is refused first."""
    from backend.preflight import preflight

    preflight(project, recipe)
    text = dumps_recipe(recipe, comments=False)
    with project.transaction():
        job_id = job_state.create(project.db, kind=recipe.kind, name=name or recipe.name or recipe.kind, recipe=text)
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


def worker_command(project: Path, job_id: int, compute: Any = None, resume: bool = True) -> list[str]:
    """The command line of the worker that runs a job (``compute``: the recipe's compute section, if
    it has one): one process, or ``processes`` per machine through ``accelerate launch`` (data
    parallel, DDP), on ``machines`` machines that reach ``main_address``:``main_port``."""
    tail = ["-m", "backend", "worker", "--project", str(project), "--job", str(job_id)] + ([] if resume else ["--fresh"])
    processes, machines = int(getattr(compute, "processes", 1)), int(getattr(compute, "machines", 1))
    if processes <= 1 and machines <= 1:
        return [sys.executable, *tail]
    # accelerate's torchrun launcher ('--multi_gpu') also serves CPU-only machines: each process then
    # runs with distributed type MULTI_CPU over gloo ('--cpu' would force a single process)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes * machines),
              "--num_machines", str(machines), "--mixed_precision", "no", "--dynamo_backend", "no"]
    if machines > 1:
        launch += ["--machine_rank", str(compute.machine_rank), "--main_process_ip", compute.main_address, "--main_process_port", str(compute.main_port)]
    return launch + tail


def standby_command(project: Path) -> list[str]:
    """A worker that loads the libraries every job needs, then waits on its standard input for the job
    to run (``await_standby_job``): the runner keeps one ready, so a job starts without the import wait."""
    return [sys.executable, "-m", "backend", "worker", "--project", str(project), "--standby"]


# what a job imports before its first step (about 5 s of a 2-core machine's time, most of a small
# Playground job): torch, diffusers, transformers and peft, and the modules of ours that load models
WARM_MODULES = ("torch", "diffusers", "transformers", "peft", "backend.models.family", "backend.models.text_encoder", "backend.models.lora",
                "backend.train.loop", "backend.train.resolve", "backend.sample.euler", "backend.eval.shapes_eval", "backend.world.pretrained")


def warm_up() -> None:
    """Import what jobs run, every stage's runner module included; a module that fails to import is left
    for the job that needs it to report."""
    import importlib

    from backend.stages import all_stages

    for name in (*WARM_MODULES, *sorted({s.runner.partition(":")[0] for s in all_stages()})):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the job that needs it says what is wrong, with its own log
            pass


def await_standby_job(stdin: Any = None) -> int | None:
    """The standby worker's wait: warm up, read one line ``<job id> <worker log path>``, send this process's
    output to that log and return the job's id; None at end of input (the service stopped without needing it)."""
    warm_up()
    line = (stdin or sys.stdin).readline()
    if not line.strip():
        return None
    job, _, log = line.strip().partition(" ")
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return int(job)


def is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def execute_job(project: Project, job_id: int, *, resume: bool = True, echo: bool = True) -> dict[str, Any]:
    """Run a job in this process; its row says how it ended (done, stopped, paused or failed)."""
    from backend.train.reporter import DbReporter, Reporter

    row = job_row(project, job_id)
    recipe = loads_recipe(row["recipe"], f"job {job_id}")
    try:
        runner = get_stage(recipe.kind).run()
    except KeyError as exc:
        raise ValueError(f"job {job_id}: {exc.args[0]}") from None
    run_dir = project.resolve(row["run_dir"] or f"runs/job-{job_id:05d}")
    run_dir.mkdir(parents=True, exist_ok=True)
    main = is_main_rank()
    reporter = DbReporter(project, job_id, run_dir / "log.txt", echo=echo) if main else Reporter()
    if main:
        job_state.require(project.db, job_id, "running", pid=os.getpid(), started=row["started"] or now_iso(), heartbeat=time.time(), error=None, control=None)
    try:
        summary = runner(project, recipe, run_dir, reporter, resume)
    except BaseException as exc:
        if main:
            has_ckpt = (run_dir / "checkpoints" / "latest").exists()
            reporter.log("".join(traceback.format_exception(exc)))
            state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            job_state.move(project.db, job_id, state, only_from=("running",), error=f"{type(exc).__name__}: {exc}", ended=now_iso(),
                           resumable=int(has_ckpt), pid=None)
        raise
    if main:
        state = summary.get("state", "done")
        atomic_write_text(run_dir / "summary.json", dumps(summary) + "\n")
        progress = 1.0 if state == "done" else _progress(project, job_id)
        final = {"step": int(summary["step"])} if isinstance(summary.get("step"), int) else {}  # the step its checkpoint holds
        if not job_state.move(project.db, job_id, state, only_from=("running",), ended=now_iso() if state in FINAL else None,
                              resumable=int(state in ("paused", "stopped")), pid=None, progress=progress, **final):
            reporter.log(f"job {job_id} ended as {state}, but its row had already been moved on (by the service?); left as it is")
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
