"""``signal-backend demo``: the embedded lifecycle, headless, on whatever exists so far."""

from __future__ import annotations

import argparse
import time

from backend.cli import command
from backend.paths import demo_project_dir
from backend.store import Project


def ensure_demo_project() -> Project:
    """Open the per-user demo project, creating it on first use."""
    root = demo_project_dir()
    if (root / "project.db").exists():
        return Project.open(root)
    return Project.init(root)


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", type=str, default=None, help="project folder (default: the per-user demo project)")


@command("demo", "run the embedded ShapesWorld lifecycle headless", _demo_args)
def run_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    project = Project.open(args.project) if args.project else ensure_demo_project()
    with project:
        print(f"[demo] project {project.root} (schema {project.applied_migrations()[-1]})")
        print("[demo] stages not built yet: ShapesWorld export and import, pretraining, evaluation")
    print(f"[demo] done in {time.perf_counter() - t0:.1f} s")
    return 0
