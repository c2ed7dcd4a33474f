"""Which embedded family draws shapes soonest on a CPU? Equal wall time, single objects, native 64 px.

Each variant trains through the product's own pretraining path (``run_pretrain``: the one loop,
cached latents, EMA) on single-object ShapesWorld scenes rendered at 64 px, stopped by the clock
(``--minutes`` of training each, the same for every variant), then sampled from its EMA weights
on every shape x colour single-object eval prompt (4 seeds each, 192 images) and scored strictly:
exactly one object, of the promised shape and colour. Beside the score: its ±, the shape-swap
control (0 = knows nothing of shape), the share with exactly one object, the share with exactly
one object of the promised colour, steps done, step time, parameters, and a labelled grid per variant.

    .venv/bin/python bench/family_probe.py --minutes 10 [--only unet,mmdit-p2,mmdit-p1] [--json bench/results/family_probe.json]
    .venv/bin/python bench/family_probe.py --minutes 60 --only unet,mmdit-p2     # the best two, longer
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import REPO, Collect, scratch_project, table

RECIPE = """kind = "pretrain"
name = "{name}"
[data]
dataset = "shapesworld"
[model]
family = "{family}"
size = "{size}"
{patch}
[allocation.timesteps]
kind = "logit_normal"
[allocation.shift]
kind = "none"
[[curriculum]]
name = "single objects"
steps = 1000000
buckets = [[64, 64]]
mixture = {{ single_object = 1.0 }}
[optim]
batch_size = {batch}
lr = {lr}
warmup = 100
schedule = "constant"
ema = 0.999
seed = 0
[schedule]
log_every = 20
checkpoint_every = 1000000
sample_every = 1000000
[preview.sampler]
steps = 20
cfg = {cfg}
width = 64
height = 64
"""

VARIANTS = {
    "unet": {"family": "unet", "size": "small", "patch": "", "lr": 0.002},
    "mmdit-p2": {"family": "mmdit", "size": "small", "patch": "patch = 2", "lr": 0.002},
    "mmdit-p1": {"family": "mmdit", "size": "small", "patch": "patch = 1", "lr": 0.002},
}


class Clock(Collect):
    """Stops the run (through the loop's ordinary control flag) once ``seconds`` of training passed."""

    def __init__(self, seconds: float):
        super().__init__(quiet=True)
        self.deadline: float | None = None
        self.seconds = seconds

    def progress(self, step: int, total: int) -> None:
        if self.deadline is None:  # the first progress call comes when data are built and training starts
            self.deadline = time.perf_counter() + self.seconds

    def control(self) -> str | None:
        return "stop" if self.deadline is not None and time.perf_counter() > self.deadline else None


def run(project: Path, name: str, args: argparse.Namespace, out: Path) -> dict:
    from backend.eval.model_eval import evaluate_model, labelled_grid
    from backend.recipes import dumps_recipe, loads_recipe
    from backend.sample.euler import SampleSettings
    from backend.store import Project
    from backend.train.pretrain import run_pretrain
    from backend.train.resolve import resolve_model

    v = VARIANTS[name]
    recipe = loads_recipe(RECIPE.format(name=name, batch=args.batch, cfg=args.cfg, **v))
    clock = Clock(args.minutes * 60)
    run_dir = Path(tempfile.mkdtemp(prefix=f"family-probe-{name}-"))  # checkpoints stay out of bench/results
    (run_dir / "recipe.toml").write_text(dumps_recipe(recipe))  # resolve_model rebuilds the network from it
    with Project.open(project) as proj:
        summary = run_pretrain(proj, recipe, run_dir, clock, resume=False)
    bundle, _ = resolve_model(None, str(run_dir))  # the last checkpoint's EMA weights
    steps = summary["step"]
    step_s = [val for _, val in clock.series("step_s")]
    rows = {}
    for cfg in args.cfgs:
        report, images, pairs, _ = evaluate_model(bundle, SampleSettings(64, 64, 20, cfg), categories=("single_object",))
        one = sum(len(r["detected"]) == 1 for r in report.per_image) / len(report.per_image)
        labelled_grid(images[::4], [p.prompt for p, _ in pairs[::4]], [r["pass"] for r in report.per_image[::4]]).save(out / f"{name}_cfg{cfg:g}.png")
        rows[cfg] = {"strict": report.categories["single_object"], "se": report.se["single_object"], "lenient": report.lenient["single_object"],
                     "swap_control": report.swap_control, "swap_control_se": report.swap_control_se, "one_object": one,
                     "one_right_colour": report.single_one_right_colour, "images": report.n}
    return {"variant": name, **v, "params": summary["params"], "steps": steps, "minutes": args.minutes,
            "step_s": round(sum(step_s[1:]) / max(1, len(step_s) - 1), 3) if step_s else None, "by_cfg": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--only", default="unet,mmdit-p2,mmdit-p1")
    ap.add_argument("--images", type=int, default=4000, help="single-object scenes rendered at 64 px")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cfg", type=float, default=3.0, help="guidance of the preview sampler during training")
    ap.add_argument("--cfgs", type=float, nargs="+", default=[1.0, 3.0], help="guidance scales to evaluate at")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "family_probe")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    project = scratch_project(args.images, resolution=(64, 64), categories=["single_object"])
    results = [run(project, name, args, args.out) for name in args.only.split(",")]
    rows = []
    for r in results:
        for cfg, m in r["by_cfg"].items():
            rows.append([r["variant"], f"{r['params'] / 1e6:.2f}M", r["steps"], r["step_s"], f"{cfg:g}", f"{m['strict']:.3f} ± {m['se']:.3f}",
                         f"{m['swap_control']:+.3f} ± {m['swap_control_se']:.3f}", f"{m['one_object']:.3f}", f"{m['one_right_colour']:.3f}", f"{m['lenient']:.3f}"])
    print(table(rows, ["variant", "params", "steps", "s/step", "CFG", "strict single", "shape control", "one object", "one, right colour", "lenient"]))
    if args.json:
        args.json.write_text(json.dumps({"minutes": args.minutes, "batch": args.batch, "images": args.images, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
