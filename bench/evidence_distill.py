"""Distillation from the shipped base, measured against the teacher: strict ShapesEval (±), FD to true
renders, latency per image, training wall time.

A project gets ShapesWorld data (the latents progressive distillation noises to its schedule's
points) and the shipped base; each method runs as the product's own ``distill`` job in a child
process (its wall time and peak memory its own). Every model is then scored the same way on the
first ``--images`` images of the stratified ShapesEval order: the teacher at 20 and 40 steps (CFG 3)
as anchors, the teacher cut down to the student's steps (CFG 3 and CFG 1) as the control a
distillation must beat, and each student at its own steps (CFG 1). Latency is the best of two
timed batches of 8 images, decode included, in this process. Grids are saved beside the table.

Runs are ``method:steps`` pairs (``--runs consistency:4,dmd:1,...``); each trains from the shipped
base with the given budget (``--steps-per-round`` for progressive, ``--<method>-steps`` otherwise).

    .venv/bin/python bench/evidence_distill.py --json bench/results/evidence_distill.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, table

OUT = REPO / "bench" / "results" / "distill"


def setup(work: Path, images: int) -> Path:
    from backend.recipes import WorldRecipe
    from backend.stages.world import add_world_data
    from backend.store import Project

    root = work / "proj"
    if not root.exists():
        with Project.init(root) as project:
            add_world_data(project, WorldRecipe(images=images, seed=0, resolution=(64, 64), base_model=True), log=lambda m: None)
    return root


def one_run(args: argparse.Namespace) -> None:
    import torch

    from backend.jobs import create_job, execute_job
    from backend.recipes.distill import DistillRecipe
    from backend.store import Project

    torch.set_num_threads(args.threads)
    with Project.open(Path(args.workdir) / "proj") as project:
        recipe = DistillRecipe(name=args.name, method=args.method, target_steps=args.target,
                               progressive={"start_steps": max(args.start, args.target), "steps_per_round": args.steps_per_round},
                               consistency={"steps": args.consistency_steps}, dmd={"steps": args.dmd_steps, "fake_updates": args.fake_updates},
                               ladd={"steps": args.ladd_steps},
                               reflow={"pairs": args.pairs, "reflow_steps": args.reflow_steps, "distill_steps": args.instaflow_steps},
                               lr=args.lr, eval_images=0, sample_every=0)
        t0 = time.perf_counter()
        out = execute_job(project, create_job(project, recipe), echo=False)
        wall = time.perf_counter() - t0
    Path(args.result).write_text(json.dumps({"name": args.name, "wall_s": wall, "summary": out, "steps": recipe.total_steps,
                                             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_name(method: str, target: int, args: argparse.Namespace) -> str:
    budget = {"progressive": f"{args.start}to{target}-{args.steps_per_round}", "consistency": args.consistency_steps, "dmd": args.dmd_steps,
              "ladd": args.ladd_steps, "reflow": f"{args.pairs}p-{args.reflow_steps}" + (f"+{args.instaflow_steps}" if target == 1 else "")}[method]
    return f"{method}-{target}step-{budget}"


def assess(folder: Path, label: str, steps: int, cfg: float, n: int, kind: str = "euler") -> dict:
    from backend.eval.model_eval import evaluate_model, fd_to_renders, labelled_grid
    from backend.models.family import load_model
    from backend.sample.euler import SampleSettings
    from backend.stages.distill import latency

    bundle = load_model(folder)
    settings = SampleSettings(width=64, height=64, steps=steps, cfg=cfg, kind=kind)
    report, images, pairs, _ = evaluate_model(bundle, settings, n)
    OUT.mkdir(parents=True, exist_ok=True)
    take = list(range(min(32, len(images))))
    labelled_grid([images[i] for i in take], [pairs[i][0].prompt for i in take], [report.per_image[i]["pass"] for i in take]).save(OUT / f"{label}.png")
    return {"label": label, "steps": steps, "cfg": cfg, "overall": report.overall, "se": report.se["overall"],
            "single": report.categories["single_object"], "single_se": report.se["single_object"], "fd": fd_to_renders(images, pairs),
            "latency_s": latency(bundle, settings), "images": len(images)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="consistency:4,consistency:1,dmd:1,dmd:4,ladd:4,ladd:1,reflow:1,reflow:4,progressive:4",
                    help="comma-separated method:steps (methods: progressive, consistency, reflow, dmd, ladd)")
    ap.add_argument("--start", type=int, default=16, help="progressive: the first round's student steps")
    ap.add_argument("--steps-per-round", type=int, default=100)
    ap.add_argument("--consistency-steps", type=int, default=300)
    ap.add_argument("--dmd-steps", type=int, default=300)
    ap.add_argument("--fake-updates", type=int, default=5)
    ap.add_argument("--ladd-steps", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=1024, help="reflow: teacher couplings")
    ap.add_argument("--reflow-steps", type=int, default=300)
    ap.add_argument("--instaflow-steps", type=int, default=200, help="reflow at 1 step: the one-step phase")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--images", type=int, default=240, help="eval images per model (the stratified order's head)")
    ap.add_argument("--world", type=int, default=3000, help="ShapesWorld images for the data latents")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="progressive", help=argparse.SUPPRESS)
    ap.add_argument("--target", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one_run(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="signal-distill-"))
    print(f"work folder {work}", flush=True)
    root = setup(work, args.world)
    runs = {}
    forwarded = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("start", "steps_per_round", "consistency_steps", "dmd_steps", "fake_updates",
                                                                         "ladd_steps", "pairs", "reflow_steps", "instaflow_steps", "lr", "threads")]
    for spec in args.runs.split(","):
        method, target = spec.split(":")
        name = run_name(method, int(target), args)
        result = work / f"{name}.json"
        if not result.exists():
            print(f"training {name}", flush=True)
            subprocess.run([sys.executable, __file__, "--one", "--name", name, "--method", method, "--target", target, "--result", str(result),
                            "--workdir", str(work), *forwarded], check=True)
        runs[name] = (method, int(target), json.loads(result.read_text()))
        print(f"{name}: trained in {runs[name][2]['wall_s'] / 60:.1f} min", flush=True)
    base = root / "models" / "shapes-base"
    n = args.images
    targets = sorted({t for _, t, _ in runs.values()})
    rows = [assess(base, "teacher-40", 40, 3.0, n), assess(base, "teacher-20", 20, 3.0, n)]
    rows += [assess(base, f"teacher-{t}-cfg3", t, 3.0, n) for t in targets]
    rows += [assess(root / run["summary"]["path"], name, t, 1.0, n, "euler" if method in ("progressive", "reflow") else "consistency")
             for name, (method, t, run) in runs.items()]
    ref = rows[1]
    lines = [[r["label"], r["steps"], f"{r['cfg']:g}", f"{r['overall']:.3f} ± {r['se']:.3f}", f"{r['overall'] / ref['overall']:.0%}" if ref["overall"] else "-",
              f"{r['single']:.3f} ± {r['single_se']:.3f}", f"{r['fd']:.1f}", f"{r['latency_s'] * 1000:.1f} ms", f"{ref['latency_s'] / r['latency_s']:.1f}x",
              f"{runs[r['label']][2]['wall_s'] / 60:.1f} min" if r["label"] in runs else "-",
              f"{runs[r['label']][2]['peak_rss_mb']:.0f} MB" if r["label"] in runs else "-"]
             for r in rows]
    print(table(lines, ["model", "steps", "cfg", "strict overall", "of teacher-20", "single objects", "FD", "latency / image", "speed-up",
                        "training", "peak RSS"]))
    print(f"{n} images per model (stratified ShapesEval head), 2 CPU cores; training steps: "
          + ", ".join(f"{name} {run['steps']}" for name, (_, _, run) in runs.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"images": n, "runs": {k: v[2] for k, v in runs.items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
