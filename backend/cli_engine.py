"""CLI for the engine: import, run a recipe, run a job as a worker, sample from a model."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from backend.cli import _size, command, fail


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", type=Path, help="folders or files")
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--dataset", default="default")
    p.add_argument("--category-from", choices=("metadata", "folder", "none"), default="metadata")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


@command("import", "import folders of images and captions into a project dataset", _import_args)
def _import(args: argparse.Namespace) -> int:
    from backend.data.importer import import_sources
    from backend.store import Project

    def progress(i: int, n: int) -> None:
        print(f"\r[import] {i}/{n}", end="", file=sys.stderr, flush=True)

    with Project.open(args.project) as project:
        try:
            report = import_sources(project, args.dataset, args.sources, category_from=args.category_from, progress=progress)
        except FileNotFoundError as exc:
            return fail(str(exc))
    print(file=sys.stderr)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.summary())
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", type=Path)
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--name", default=None, help="job name (default: the recipe's name)")


@command("run", "validate a recipe, create a job and run it here (multi-process through accelerate launch)", _run_args)
def _run(args: argparse.Namespace) -> int:
    from backend.jobs import create_job
    from backend.recipes import load_recipe
    from backend.store import Project

    recipe = load_recipe(args.recipe)
    with Project.open(args.project) as project:
        job_id = create_job(project, recipe, args.name)
    print(f"job {job_id} ({recipe.kind})", file=sys.stderr)
    return launch_worker(args.project, job_id, getattr(recipe, "compute", None))


def launch_worker(project: Path, job_id: int, compute: Any = None, resume: bool = True) -> int:
    """Run a job: in this process, or as data-parallel processes under accelerate (``compute``: the recipe's section)."""
    processes = int(getattr(compute, "processes", 1))
    if processes <= 1 and int(getattr(compute, "machines", 1)) <= 1:
        return _execute(project, job_id, resume)
    from backend.jobs import worker_command

    cmd = worker_command(project, job_id, compute, resume)
    return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // processes)))})


def _execute(project: Path, job_id: int, resume: bool) -> int:
    from backend.jobs import execute_job
    from backend.store import Project

    with Project.open(project) as proj:
        summary = execute_job(proj, job_id, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--job", type=int, default=None, help="the job to run")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--standby", action="store_true", help="load the libraries first, then run the job whose id comes on standard input "
                                                          "(the service keeps one such worker ready)")


@command("worker", "run one job of a project (the service and 'run' start this)", _worker_args)
def _worker(args: argparse.Namespace) -> int:
    nice = int(os.environ.get("SIGNAL_JOB_NICE", "0") or 0)
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)  # before torch starts its threads, which inherit it
    job = args.job
    if args.standby:
        from backend.jobs import await_standby_job

        job = await_standby_job()
        if job is None:
            return 0
    if job is None:
        return fail("give --job N (or --standby)")
    return _execute(args.project, job, not args.fresh)


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder, run folder or checkpoint")
    p.add_argument("--project", type=Path, default=None, help="resolve project-relative names against this project")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--eval-prompts", action="store_true", help="render the ShapesEval prompt set instead (names carry prompt ids)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--shift", type=float, default=None)
    p.add_argument("--size", type=_size, default=(32, 32), help="WIDTHxHEIGHT")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--enhance", default="", help="rewrite prompts first: 'shapes' (the embedded rewriter) or a local language model folder")


@command("sample", "generate images from any model, run or checkpoint", _sample_args)
def _sample(args: argparse.Namespace) -> int:
    from backend.recipes import SampleRecipe
    from backend.recipes.sampling import SamplerSettings
    from backend.stages.sample import run_sample_recipe, sample_eval_set
    from backend.store import Project

    if not args.prompt and not args.eval_prompts:
        return fail("give --prompt (repeatable) or --eval-prompts")
    sampler = SamplerSettings(steps=args.steps, cfg=args.cfg, shift=args.shift, width=args.size[0], height=args.size[1])
    recipe = SampleRecipe(model=args.model, prompts=args.prompt or ["-"], seeds=args.seeds, sampler=sampler, out=str(args.out.resolve()),
                          enhance=args.enhance)
    project = Project.open(args.project) if args.project else None
    try:
        summary = sample_eval_set(project, recipe) if args.eval_prompts else run_sample_recipe(project, recipe)
    except (FileNotFoundError, ValueError, NotImplementedError) as exc:
        return fail(str(exc))
    finally:
        if project:
            project.close()
    print(json.dumps(summary, indent=2))
    return 0


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", type=Path, required=True, help="project folder this service serves")
    p.add_argument("--create", action="store_true", help="create the project if the folder holds none")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    p.add_argument("--port", type=int, default=0, help="port (0 = a free one)")
    p.add_argument("--token", default=None, help="bearer token (default: fresh random; or SIGNAL_BACKEND_TOKEN)")
    p.add_argument("--slots", type=int, default=1, help="jobs that may run at once (one per device)")


@command("serve", "run the HTTP service for a project (loopback, token, discovery file)", _serve_args)
def _serve(args: argparse.Namespace) -> int:
    from backend.service.server import ServiceRunning, serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host} exposes the service beyond this machine; the token is the only guard", file=sys.stderr)
    try:
        return serve(args.project, args.host, args.port, args.token or os.environ.get("SIGNAL_BACKEND_TOKEN"), args.slots, args.create)
    except ServiceRunning as exc:
        return fail(str(exc))


def _curate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--near-threshold", type=int, default=None, help="perceptual-hash bits (of 256) for near duplicates (default 20)")
    p.add_argument("--min-side", type=int, default=None)
    p.add_argument("--max-aspect", type=float, default=None)
    p.add_argument("--min-blur", type=float, default=None, help="flag images whose Laplacian variance is below this")
    p.add_argument("--json", action="store_true")


@command("curate", "flag duplicates, near duplicates and filtered items of a dataset (nothing is deleted)", _curate_args)
def _curate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from backend.data.curate import CurationSettings, curate
    from backend.store import Project

    with Project.open(args.project) as project:
        stored = project.db.execute("SELECT curation FROM datasets WHERE name = ?", [args.dataset]).fetchone()
        base = asdict(CurationSettings.from_json(json.loads(stored[0]) if stored and stored[0] else None))
        for key in ("near_threshold", "min_side", "max_aspect", "min_blur"):
            if getattr(args, key) is not None:
                base[key] = getattr(args, key)
        report = curate(project, args.dataset, CurationSettings(**base))
    print(json.dumps(report.to_json(), indent=2) if args.json else report.summary())
    return 0


def _add_shipped_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", type=Path, required=True)


@command("models add-shipped", "list the shipped base model and reward prior in a project (copied into its models/)", _add_shipped_args)
def _add_shipped(args: argparse.Namespace) -> int:
    from backend.stages.world import install_shipped_base, install_shipped_reward_prior
    from backend.store import Project

    with Project.open(args.project) as project:
        install_shipped_base(project)
        install_shipped_reward_prior(project)
    return 0


def _tiny_folder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("family", choices=["sd3", "flux"])
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)


@command("tiny-folder", "write a tiny random SD3 or FLUX.1 folder in the stock diffusers layout (tests, dry runs without real weights)",
         _tiny_folder_args)
def _tiny_folder(args: argparse.Namespace) -> int:
    from backend.models.tiny_folders import build_tiny_folder

    if args.out.exists() and any(args.out.iterdir()):
        return fail(f"{args.out} is not empty")
    print(build_tiny_folder(args.out, args.family, seed=args.seed))
    return 0
