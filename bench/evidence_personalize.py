"""DreamBooth-LoRA from the shipped base, with and without prior preservation: subject fidelity,
subject shown, prompt fidelity in new contexts, class preservation (strict ShapesEval on the eval
prompts naming the class, base vs personalized on the same seeds), leakage, cost.

A fresh project imports the ShapesWorld subject (5 renders); each run is the product's own
``personalize`` job, in a child process so its wall time (class images included: the first run
draws them, later runs of the same model and prompt read the cache) and peak memory are its own.
The base's figures come from the run's own measurement of the base on the same seeds; the
references' similarity to each other is the fidelity ceiling. Every run's labelled grid
(instance prompt, context prompts, class prompt; green = check passed) is saved beside the table.

    .venv/bin/python bench/evidence_personalize.py --steps 300 --json bench/results/evidence_personalize.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, table

OUT = REPO / "bench" / "results" / "personalize"


def setup(work: Path) -> Path:
    from backend.data.importer import import_sources
    from backend.stages.world import install_shipped_base
    from backend.store import Project
    from backend.world.export import export_world, subject_folder

    root = work / "proj"
    if not root.exists():
        with Project.init(root) as project:
            install_shipped_base(project, log=lambda m: None)
            export_world(work / "world", 2, 0, subject=True)
            import_sources(project, "subject", [subject_folder(work / "world")])
    return root


def one_run(args: argparse.Namespace) -> None:
    """Child: one personalize job; writes its summary, wall time and peak memory as JSON."""
    import torch

    from backend.jobs import create_job, execute_job
    from backend.recipes.personalize import PersonalizeRecipe
    from backend.store import Project

    torch.set_num_threads(args.threads)
    with Project.open(Path(args.workdir) / "proj") as project:
        recipe = PersonalizeRecipe(name=args.name, steps=args.steps, lr=args.lr, eval_every=args.steps, eval_images=args.eval_images,
                                   class_eval_images=args.class_eval, sample_every=0, prior={"mode": args.prior, "class_images": args.class_images}, lora={"rank": args.rank})
        t0 = time.perf_counter()
        out = execute_job(project, create_job(project, recipe), echo=False)
        wall = time.perf_counter() - t0
    Path(args.result).write_text(json.dumps({"name": args.name, "prior": args.prior, "wall_s": wall, "summary": out,
                                             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--priors", default="class_images,none", help="one run per prior mode: class_images, frozen, none")
    ap.add_argument("--class-images", type=int, default=100)
    ap.add_argument("--eval-images", type=int, default=32)
    ap.add_argument("--class-eval", type=int, default=64, help="strict ShapesEval images on the class's eval prompts")
    ap.add_argument("--tag", default="", help="suffix of the run names (several settings in one work folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="", help=argparse.SUPPRESS)
    ap.add_argument("--prior", default="", help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one_run(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="signal-personalize-"))
    print(f"work folder {work}", flush=True)
    root = setup(work)
    runs = []
    for prior in args.priors.split(","):
        name = f"prior-{prior}{args.tag}"
        result = work / f"{name}.json"
        if not result.exists():
            subprocess.run([sys.executable, __file__, "--one", "--name", name, "--prior", prior, "--result", str(result), "--workdir", str(work),
                            "--steps", str(args.steps), "--lr", str(args.lr), "--rank", str(args.rank), "--class-images", str(args.class_images),
                            "--eval-images", str(args.eval_images), "--class-eval", str(args.class_eval), "--threads", str(args.threads)], check=True)
        runs.append(json.loads(result.read_text()))
    OUT.mkdir(parents=True, exist_ok=True)
    first = runs[0]["summary"]
    base = first["base_subject_eval"]
    card = json.loads((root / first["path"] / "card.json").read_text())
    rows = [["base (shapes-base)", f"{base['fidelity']:.3f} ± {base['fidelity_sd']:.3f}", f"{base['shown']:.2f}", f"{base['context']:.2f}",
             f"{base['class_strict']:.3f} ± {base['class_strict_se']:.3f}", f"{base['leakage']:.2f}", "-", "-", "-"]]
    for r in runs:
        s = r["summary"]["subject_eval"]
        rows.append([r["name"], f"{s['fidelity']:.3f} ± {s['fidelity_sd']:.3f}", f"{s['shown']:.2f}", f"{s['context']:.2f}",
                     f"{s['class_strict']:.3f} ± {s['class_strict_se']:.3f}", f"{s['leakage']:.2f}", f"{r['wall_s']:.0f} s",
                     f"{r['peak_rss_mb']:.0f} MB", f"{r['summary'].get('adapter_bytes', 0) / 1024:.0f} KiB"])
        shutil.copy(root / r["summary"]["path"] / "samples.png", OUT / f"{r['name']}.png")
    run_dirs = sorted((root / "runs").iterdir())
    if run_dirs and (run_dirs[0] / "base_samples.png").exists():
        shutil.copy(run_dirs[0] / "base_samples.png", OUT / "base.png")
    header = ["model", "subject fidelity", "subject shown", "context prompts", "class strict (circle prompts)", "leakage", "wall (2 cores)",
              "peak RSS", "adapter"]
    print(table(rows, header))
    print(f"fidelity ceiling (references to each other): {card['fidelity_ceiling']:.3f}; {args.eval_images} images per prompt; "
          f"class strict on the first {args.class_eval} eval images whose prompt names a circle")
    for r in runs:
        print(r["name"], "per context prompt:", json.dumps(r["summary"]["subject_eval"]["per_check"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "lr": args.lr, "rank": args.rank, "class_images": args.class_images,
                                               "eval_images": args.eval_images, "ceiling": card["fidelity_ceiling"], "base": base,
                                               "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
