"""What alignment does to the shipped base, at equal budget: strict ShapesEval, FD, reward, cost.

Each method runs from ``resources/models/shapes-base`` through the product's own ``align`` stage
(in a child process, so its wall time and peak memory are its own) for the same number of steps;
then every model — the base included — is scored the same way: all 960 ShapesEval images (ODE,
20 steps, CFG 3, seeds 1000 + k), strict accuracy per category with binomial ±, the shape-swap
control, FD to true renders of the same prompts, and the mean detector-rule reward (share of
promises kept). Flow-GRPO runs twice, with the KL term (β = 0.04) and without (β = 0): the second
shows what the KL holds back. Each model's labelled grid (green = strict pass) is saved beside the
table, and the in-run strict curve (96 images every ``--eval-every`` steps) is charted.

    .venv/bin/python bench/evidence_alignment.py --steps 150 --json bench/results/evidence_alignment.json

DPO, SFT (on the winners) and ReFL learn from a rated project's judgements and reward model; give
one with ``--rated`` (the demo project after ``make demo``: 712 judgements of the scripted rater, whose
hidden taste is the detector rule, so the table's mean rule reward is what the ratings prefer):

    .venv/bin/python bench/evidence_alignment.py --no-grpo --rated ~/.local/share/signal-studio/projects/shapesworld-demo \
        --methods dpo:1e-5,sft:1e-5,refl:1e-5 --steps 200 --json bench/results/evidence_alignment_rated.json
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

from common import REPO, Collect, chart, table

BASE = REPO / "resources" / "models" / "shapes-base"
OUT = REPO / "bench" / "results" / "alignment"


def one_run(args: argparse.Namespace) -> None:
    """Child: one align run; writes its summary, curve, wall time and peak memory as JSON."""
    import torch

    from backend.recipes.align import AlignRecipe
    from backend.stages import align
    from backend.store import Project

    torch.set_num_threads(args.threads)
    root = Path(args.workdir)
    project = Project.init(root / "proj") if not (root / "proj").exists() else Project.open(root / "proj")
    if args.method == "grpo":
        recipe = AlignRecipe(method="grpo", name=args.name, model=str(BASE), steps=args.steps, lr=args.lr, eval_images=96, eval_every=args.eval_every,
                             sample_every=0, seed=args.seed, grpo={"kl": args.kl, "rewards": args.rewards, "group_size": args.group, "prompts_per_step": args.prompts,
                                                                "focus": args.focus})
    else:  # the rated project's judgements (DPO, SFT on winners) or its reward model (ReFL)
        recipe = AlignRecipe(method=args.method, name=args.name, model=str(BASE), steps=args.steps, lr=args.lr, eval_images=96,
                             eval_every=args.eval_every, sample_every=0, seed=args.seed, beta=args.beta,
                             refl={"reward": args.refl_reward, "margin": args.refl_margin, "shift": args.refl_shift,
                                   "reward_weight": args.refl_weight})
    class Watch(Collect):  # the log file shows the run as it goes
        def metrics(self, step: int, values: dict[str, float]) -> None:
            super().metrics(step, values)
            shown = {k: round(float(v), 3) for k, v in values.items() if k in ("grpo/reward_mean", "grpo/kl", "grpo/advantage_collapse",
                                                                               "shapes_eval/overall", "step_s", "dpo/heldout_implicit_accuracy",
                                                                               "refl/reward")
                     or k.startswith("grpo/focus/")}
            print(step, shown, file=sys.stderr, flush=True)

    rep = Watch(quiet=False)
    t0 = time.perf_counter()
    out = align.run(project, recipe, root / "runs" / args.name, rep, resume=True)
    wall = time.perf_counter() - t0
    res = {"name": args.name, "method": args.method, "kl": args.kl, "lr": args.lr, "focus": args.focus, "seed": args.seed, "rewards": args.rewards,
           "steps": args.steps, "wall_s": wall, "path": str(project.root / out["path"]),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "curve": rep.series("shapes_eval/overall"), "reward": rep.series("grpo/reward_mean"), "kl_curve": rep.series("grpo/kl"),
           "collapse": rep.series("grpo/advantage_collapse"), "dpo_heldout_accuracy": rep.series("dpo/heldout_implicit_accuracy"),
           "dpo_train_accuracy": rep.series("dpo/implicit_accuracy"), "refl_reward": rep.series("refl/reward"), "refl_margin": args.refl_margin,
           "refl_shift": args.refl_shift, "refl_weight": args.refl_weight,
           "focus_shares": {k.split("/")[-1]: rep.series(k) for k in sorted({k for _, k, _ in rep.rows}) if k.startswith("grpo/focus/")}}
    Path(args.result).write_text(json.dumps(res))


def run_plan(part: str, rewards: str) -> tuple[float, float, float, int, str]:
    """'KL:LR[:FOCUS[:SEED[:REWARDS]]]' -> (kl, lr, focus, seed, rewards); REWARDS joins its parts with '+'."""
    kl, lr, *rest = part.split(":")
    return (float(kl), float(lr), float(rest[0]) if rest else 0.0, int(rest[1]) if len(rest) > 1 else 0,
            rest[2].replace("+", ",") if len(rest) > 2 else rewards)


def assess(folder: Path, label: str, n: int | None = None) -> dict:
    """Every eval image of a model: strict table with ±, control, FD, mean rule reward, and its grid."""
    from backend.eval.model_eval import evaluate_model, fd_to_renders, labelled_grid
    from backend.models.family import load_model
    from backend.sample.euler import SampleSettings
    from backend.train.rewards import Rewards

    bundle = load_model(folder)
    report, images, pairs, _ = evaluate_model(bundle, SampleSettings(width=64, height=64, steps=20, cfg=3.0), n)
    reward, _ = Rewards("rule")(images, [p.prompt for p, _ in pairs], [p.scene for p, _ in pairs])
    fd = fd_to_renders(images, pairs)
    OUT.mkdir(parents=True, exist_ok=True)
    take = list(range(min(48, len(images))))  # the stratified order's head: the categories take turns
    labelled_grid([images[i] for i in take], [pairs[i][0].prompt for i in take], [report.per_image[i]["pass"] for i in take]).save(OUT / f"{label}.png")
    return {"label": label, "overall": report.overall, "se": report.se, "categories": report.categories, "control": report.swap_control,
            "fd": fd, "reward": float(reward.mean()), "reward_se": float(reward.std() / len(reward) ** 0.5), "images": len(images)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--kls", default="0.04,0", help="Flow-GRPO runs, one per KL weight (at --lr)")
    ap.add_argument("--runs", default="", help="instead of --kls: 'KL:LR[:FOCUS[:SEED[:REWARDS]]],...', e.g. 0.04:1e-4,0.04:1e-4:1,"
                    "0.04:1e-4:1:0:rule=1+relation=2 (REWARDS as --rewards with '+' for ','; default --rewards)")
    ap.add_argument("--rewards", default="rule")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", action="store_true", help="start every run at once (e.g. two runs at --threads 1 on two cores); "
                    "their wall times then share the machine")
    ap.add_argument("--assess-images", type=int, default=0, help="images per model in the final table (0 = all 960)")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--base-from", default="", help="take the base's row from this earlier --json (same images) instead of scoring it again")
    ap.add_argument("--json", default="")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="", help=argparse.SUPPRESS)
    ap.add_argument("--kl", type=float, default=0.04, help=argparse.SUPPRESS)
    ap.add_argument("--focus", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="grpo", help=argparse.SUPPRESS)
    ap.add_argument("--rated", default="", help="a project with judgements (and a reward model) to copy for --methods, e.g. the demo project")
    ap.add_argument("--methods", default="", help="rating-based runs 'METHOD:LR[:SEED],...' (dpo, sft, refl) on the --rated project's judgements")
    ap.add_argument("--beta", type=float, default=100.0, help="DPO's β")
    ap.add_argument("--betas", default="", help="a DPO run per β, e.g. 20,100,500 (the β sweep; β multiplies the per-element mean flow error)")
    ap.add_argument("--refl-reward", default="models/demo-reward", help="ReFL's reward model (a folder of the rated project)")
    ap.add_argument("--refl-margin", type=float, default=None, help="ReFL's φ(r) = ReLU(margin - r) (none: φ(r) = -r)")
    ap.add_argument("--refl-shift", type=int, default=0, help="ReFL scores each image at a random translation of up to this many pixels")
    ap.add_argument("--refl-weight", type=float, default=1.0, help="ReFL's reward weight against its flow regulariser (a tiny one, "
                    "e.g. 1e-6, leaves the regulariser alone: the control for what the reward does)")
    ap.add_argument("--no-grpo", action="store_true", help="only the --methods runs (GRPO rows come from an earlier run)")
    args = ap.parse_args()
    if args.one:
        return one_run(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="signal-align-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}", flush=True)
    plan = ([run_plan(part, args.rewards) for part in args.runs.split(",")] if args.runs
            else [(float(k), args.lr, 0.0, 0, args.rewards) for k in args.kls.split(",")])
    if args.no_grpo:
        plan = []
    rated = [(m, float(lr), int(seed[0]) if seed else 0) for m, lr, *seed in (part.split(":") for part in args.methods.split(","))] if args.methods else []
    if rated:
        if not args.rated:
            raise SystemExit("--methods needs --rated PROJECT (a project with judgements, e.g. the demo project after `make demo`)")
        if not (work / "proj").exists():
            import shutil

            shutil.copytree(args.rated, work / "proj", ignore=shutil.ignore_patterns("runs", "cache", "*.lock", "service.json"))
    betas = [float(b) for b in args.betas.split(",")] if args.betas else [args.beta]  # a DPO run per β: the sweep
    jobs = [("grpo", f"grpo-kl{kl:g}-lr{lr:g}" + (f"-focus{focus:g}" if focus else "") + (f"-seed{seed}" if seed else "")
             + ("-" + rewards.replace("=", "").replace(",", "-").replace(" ", "") if rewards != args.rewards else ""), kl, lr, args.beta, focus, seed, rewards)
            for kl, lr, focus, seed, rewards in plan]
    for m, lr, seed in rated:
        tail = ((f"-margin{args.refl_margin:g}" if m == "refl" and args.refl_margin is not None else "")
                + (f"-shift{args.refl_shift}" if m == "refl" and args.refl_shift else "")
                + (f"-weight{args.refl_weight:g}" if m == "refl" and args.refl_weight != 1.0 else "") + (f"-seed{seed}" if seed else ""))
        jobs += ([(m, f"{m}-lr{lr:g}-beta{b:g}{tail}", 0.0, lr, b, 0.0, seed, args.rewards) for b in betas] if m == "dpo"
                 else [(m, f"{m}-lr{lr:g}{tail}", 0.0, lr, args.beta, 0.0, seed, args.rewards)])
    if not (work / "proj").exists():  # made once here: runs started together would race to make it
        from backend.store import Project

        Project.init(work / "proj")
    children = []
    for method, name, kl, lr, beta, focus, seed, rewards in jobs:
        result = work / f"{name}.json"
        if not result.exists():
            cmd = [sys.executable, __file__, "--one", "--name", name, "--kl", str(kl), "--result", str(result), "--workdir", str(work),
                   "--steps", str(args.steps), "--lr", str(lr), "--rewards", rewards, "--seed", str(seed), "--group", str(args.group),
                   "--prompts", str(args.prompts), "--eval-every", str(args.eval_every), "--threads", str(args.threads),
                   "--method", method, "--beta", str(beta), "--refl-reward", args.refl_reward, "--focus", str(focus)]
            if args.refl_margin is not None:
                cmd += ["--refl-margin", str(args.refl_margin)]
            if args.refl_shift:
                cmd += ["--refl-shift", str(args.refl_shift)]
            if args.refl_weight != 1.0:
                cmd += ["--refl-weight", str(args.refl_weight)]
            if args.parallel:
                children.append((subprocess.Popen(cmd, stderr=open(work / f"{name}.log", "w")), name))
            else:
                subprocess.run(cmd, check=True)
    for child, name in children:
        if child.wait():
            raise SystemExit(f"run {name} failed: see {work / (name + '.log')}")
    runs = [json.loads((work / f"{name}.json").read_text()) for _, name, *_ in jobs]
    n = args.assess_images or None
    base = None
    if args.base_from:  # the base's row from an earlier run of this bench on as many images (it is deterministic)
        base = next(m for m in json.loads(Path(args.base_from).read_text())["models"] if m["label"] == "base")
        shipped = json.loads((BASE / "card.json").read_text())["shapes_eval"]  # what the shipped base scores on every image
        if base["images"] != (n or shipped["n"]) or (n is None and base["overall"] != shipped["overall"]):
            raise SystemExit(f"{args.base_from} scored another base, or on {base['images']} images rather than {n or shipped['n']}: "
                             "leave --base-from out to score this one")
    rows = [base or assess(BASE, "base", n)] + [assess(Path(r["path"]), r["name"], n) for r in runs]
    cats = list(rows[0]["categories"])
    header = ["model", "strict overall", *cats, "control", "FD", "mean reward", "wall", "peak RSS"]
    lines = []
    for row in rows:
        run = next((r for r in runs if r["name"] == row["label"]), None)
        lines.append([row["label"], f"{row['overall']:.3f} ± {row['se']['overall']:.3f}",
                      *[f"{row['categories'][c]:.3f} ± {row['se'][c]:.3f}" for c in cats],
                      f"{row['control']:+.3f}", f"{row['fd']:.1f}", f"{row['reward']:.3f} ± {row['reward_se']:.3f}",
                      f"{run['wall_s'] / 60:.1f} min" if run else "-", f"{run['peak_rss_mb']:.0f} MB" if run else "-"])
    print(table(lines, header))
    # each result file its own charts: bench/results/evidence_alignment_focus.json -> strict_curve_focus.png
    tag = Path(args.json).stem.removeprefix("evidence_alignment") if args.json else ("" if plan else "_rated")
    series = {r["name"]: [(s, v, 0.0) for s, v in r["curve"]] for r in runs}
    if any(series.values()):
        chart(series, OUT / f"strict_curve{tag}.png", xlabel="step", ylabel="strict ShapesEval (96 images)", hlines=[(rows[0]["overall"], "base")],
              ylim=(0.0, 1.0))
    window = 10
    rew = {r["name"]: [(r["reward"][i][0], sum(v for _, v in r["reward"][max(0, i - window + 1): i + 1]) / len(r["reward"][max(0, i - window + 1): i + 1]), 0.0)
                       for i in range(0, len(r["reward"]), 5)] for r in runs}
    if any(rew.values()):
        top = max([1.0] + [v for points in rew.values() for _, v, _ in points])  # weighted rewards can pass 1
        chart(rew, OUT / f"reward_curve{tag}.png", xlabel="step", ylabel=f"rollout reward (mean of last {window} steps)", ylim=(0.0, top))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "lr": args.lr, "rewards": args.rewards, "group": args.group,
                                               "prompts_per_step": args.prompts, "plan": plan, "models": rows,
                                               "runs": [{k: v for k, v in r.items() if k != "path"} for r in runs]}, indent=1))


if __name__ == "__main__":
    main()
