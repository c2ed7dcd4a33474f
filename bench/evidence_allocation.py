"""The lecture's claims about signal allocation, measured on ShapesWorld at equal step budgets.

Pairs of pretraining runs that differ in one allocation choice, everything else equal (model,
data, seed, steps, batch): uniform vs logit-normal timesteps; no shift vs per-bucket shift
when training on two resolutions (evaluated at the larger); 64 px and up, patch 4,
because at 32 px even a perfect generator loses colours in the VAE round trip; a curriculum (simple captions
first) vs none; REPA vs none (ShapesEval every --eval-every steps: the first step that reaches
--target, the paper's "steps to reach a quality"). Prints a table with whatever the numbers are.

    .venv/bin/python bench/evidence_allocation.py [--steps 1500] [--preset small] [--only density,shift,curriculum,repa]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import Collect, scratch_project, table

BASE = """kind = "pretrain"
name = "{name}"
[data]
dataset = "shapesworld"
[model]
size = "{preset}"
patch = 4
[allocation.timesteps]
kind = "{density}"
[allocation.shift]
kind = "{shift}"
base_resolution = 64
{stages}
[repa]
enabled = {repa}
block = 1
[optim]
batch_size = {batch}
lr = 0.003
warmup = 100
ema = 0.995
seed = {seed}
[schedule]
log_every = 50
checkpoint_every = 100000
sample_every = 100000
eval_every = {eval_every}
eval_images = {eval_images}
[preview.sampler]
steps = 20
cfg = 3.0
width = {eval_size}
height = {eval_size}
"""


def stages(kind: str, steps: int, buckets: str) -> str:
    if kind == "curriculum":
        half = steps // 2
        return (f'[[curriculum]]\nname = "simple"\nsteps = {half}\nbuckets = {buckets}\ncomplexity = [1, 2]\n'
                f'[[curriculum]]\nname = "all"\nsteps = {steps - half}\nbuckets = {buckets}\ncomplexity = [1, 4]\n')
    return f'[[curriculum]]\nname = "all"\nsteps = {steps}\nbuckets = {buckets}\ncomplexity = [1, 4]\n'


_RUNS: dict[tuple, dict] = {}


def run(project: Path, name: str, args, *, density="logit_normal", shift="none", curriculum="none", repa=False, buckets="[[64, 64]]", eval_size=64) -> dict:
    """One training run; the same settings under another claim's name reuse the first run (the
    baseline, logit-normal with no curriculum and no REPA, is shared by three claims)."""
    key = (density, shift, curriculum, repa, buckets, eval_size)
    if key in _RUNS:
        return {**_RUNS[key], "name": name, "shared_with": _RUNS[key]["name"]}
    _RUNS[key] = _run(project, name, args, density=density, shift=shift, curriculum=curriculum, repa=repa, buckets=buckets, eval_size=eval_size)
    return _RUNS[key]


def _run(project: Path, name: str, args, *, density: str, shift: str, curriculum: str, repa: bool, buckets: str, eval_size: int) -> dict:
    from backend.recipes import loads_recipe
    from backend.store import Project
    from backend.train.pretrain import run_pretrain

    text = BASE.format(name=name, preset=args.preset, density=density, shift=shift, stages=stages(curriculum, args.steps, buckets),
                       repa=str(repa).lower(), batch=args.batch, seed=args.seed, eval_every=args.eval_every, eval_images=args.eval_images,
                       eval_size=eval_size)
    recipe = loads_recipe(text)
    rep = Collect(quiet=not args.verbose)
    t0 = time.perf_counter()
    with Project.open(project) as proj:
        summary = run_pretrain(proj, recipe, Path(tempfile.mkdtemp(prefix=f"ev-{name}-")), rep, resume=False)
    curve = rep.series("shapes_eval/overall")
    single = rep.series("shapes_eval/single_object")
    reach = next((s for s, v in curve if v >= args.target), None)
    return {"name": name, "seconds": round(time.perf_counter() - t0), "final_overall": curve[-1][1] if curve else None,
            "final_single": single[-1][1] if single else None, "steps_to_target": reach, "curve": curve,
            "categories": (summary.get("shapes_eval") or {}).get("categories")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-images", type=int, default=80)
    ap.add_argument("--target", type=float, default=0.4, help="ShapesEval overall that counts as 'reached'")
    ap.add_argument("--only", default="density,shift,curriculum,repa")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    project = scratch_project(args.images, resolution=None)
    wanted = set(args.only.split(","))
    results = []
    if "density" in wanted:
        results += [("timesteps", run(project, "uniform", args, density="uniform")), ("timesteps", run(project, "logit-normal", args))]
    if "shift" in wanted:
        two = "[[64, 64], [128, 128]]"
        results += [("shift (64+128 px, eval 128)", run(project, "no-shift", args, buckets=two, eval_size=128)),
                    ("shift (64+128 px, eval 128)", run(project, "per-bucket-shift", args, shift="per_bucket", buckets=two, eval_size=128))]
    if "curriculum" in wanted:
        results += [("curriculum", run(project, "no-curriculum", args)), ("curriculum", run(project, "curriculum", args, curriculum="curriculum"))]
    if "repa" in wanted:
        results += [("REPA", run(project, "no-repa", args)), ("REPA", run(project, "repa", args, repa=True))]
    rows = [[claim, r["name"], f"{r['final_overall']:.3f}", f"{r['final_single']:.3f}" if r["final_single"] is not None else "-",
             r["steps_to_target"] or f">{args.steps}", r["seconds"]] for claim, r in results]
    print(table(rows, ["claim", "run", "ShapesEval", "single object", f"steps to {args.target}", "seconds"]))
    out = {"steps": args.steps, "preset": args.preset, "batch": args.batch, "seed": args.seed, "target": args.target,
           "results": [{"claim": c, **r} for c, r in results]}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
