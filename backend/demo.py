"""``signal-backend demo``: the embedded lifecycle, headless.

Creates (once) the per-user demo project: ShapesWorld exported as an ordinary folder with a
few planted bad files, imported through the normal path (the report shows them rejected),
the subject imported as its own dataset; then pretrains the embedded model from scratch with
the shipped demo recipe and reports ShapesEval per category; then, from the shipped base, rates
pairs, trains a reward model, aligns with Flow-GRPO, personalizes the subject (DreamBooth-LoRA) and
distills a 4-step student (consistency distillation).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from backend.cli import command
from backend.paths import demo_project_dir, resources_dir
from backend.recipes import WorldRecipe
from backend.stages.world import add_world_data
from backend.store import Project

DEMO_IMAGES = 6000  # rendered at 64 px, the size the demo trains at: no scene is enlarged into its bucket
DEMO_SIZE = (64, 64)
DEMO_SEED = 0


def demo_recipe_path() -> Path:
    return resources_dir() / "recipes" / "demo_pretrain.toml"


def ensure_demo_project(root: Path | None = None, n: int = DEMO_IMAGES, log=print) -> Project:
    """Open the demo project, creating and importing ShapesWorld on first use."""
    root = root or demo_project_dir()
    project = Project.open(root) if (root / "project.db").exists() else Project.init(root)
    have = project.db.execute("SELECT count(*) FROM datasets WHERE name = 'shapesworld'").fetchone()[0]
    if not have:
        add_world_data(project, WorldRecipe(images=n, seed=DEMO_SEED, resolution=DEMO_SIZE, base_model=True), log=lambda m: log(f"[demo] {m}"))
    return project


def rate_and_reward(project: Project, prompts: int = 240, per_prompt: int = 3, noise: float = 0.1) -> dict:
    """The front half of the closed loop on the shipped base: pairs, ratings by the scripted rater
    through the service's API (the path a person's ratings take), a reward model on them."""
    from backend.jobs import create_job, execute_job
    from backend.recipes.pairs import PairsRecipe
    from backend.recipes.reward import RewardRecipe
    from backend.scripted_rater import ScriptedRater
    from backend.service.client import start_backend

    pairs = PairsRecipe(model="models/shapes-base", max_prompts=prompts, images_per_prompt=per_prompt)
    job = create_job(project, pairs, "demo-pairs")
    print(f"[demo] pairs: {prompts} ShapesEval prompts x {per_prompt} images from the shipped base, every pair of each prompt (job {job})")
    made = execute_job(project, job, echo=False)
    proc, client = start_backend(project.root)
    try:
        rater = ScriptedRater(client, "scripted", noise=noise)
        report = rater.rate(made["pairs"])
        print(f"[demo] scripted rater (prefers what the detector reads as faithful to the prompt, {noise:.0%} of decisions flipped): {report.summary()}")
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
    job = create_job(project, RewardRecipe(name="demo-reward", rater="scripted"), "demo-reward")
    summary = execute_job(project, job, echo=False)
    held = summary["heldout"]
    print(f"[demo] reward model models/demo-reward: held-out pairwise accuracy {held['accuracy']:.3f} against the rater (chance 0.5), "
          f"calibration error {held['ece']:.3f}, on {summary['heldout_judgements']} judgements of prompts it never saw "
          f"({summary['train_judgements']} trained on)")
    return summary


def align_on_reward(project: Project, reward: str, steps: int = 12) -> dict:
    """The back half of the loop: Flow-GRPO from the shipped base on the detector rule plus the reward
    model the ratings trained, then strict ShapesEval of the tuned model on a stratified half of the eval
    set (every category in proportion; all 960 put the demo past 30 minutes on 2 cores: 1850 s,
    2026-12-06), printed after the base's (same prompts, seeds and sampler)."""
    from backend.eval.shapes_eval import format_table, load_eval_prompts, stratified_pairs
    from backend.jobs import create_job, execute_job
    from backend.recipes.align import AlignRecipe

    every = len(stratified_pairs(load_eval_prompts()))
    recipe = AlignRecipe(method="grpo", name="demo-grpo", model="models/shapes-base", steps=steps, lr=1e-4, eval_images=480,
                         eval_every=steps, sample_every=0, grpo={"rewards": f"rule=1, {reward}=0.5"})
    job = create_job(project, recipe, "demo-align")
    print(f"[demo] Flow-GRPO from the shipped base: {steps} steps of {recipe.grpo.prompts_per_step} prompts x {recipe.grpo.group_size} images, "
          f"reward {recipe.grpo.rewards} (job {job})")
    summary = execute_job(project, job, echo=False)
    card = json.loads((project.root / summary["path"] / "card.json").read_text())
    print(f"[demo] the tuned model {summary['path']} (parent models/shapes-base), strict ShapesEval on a stratified {card['shapes_eval']['n']} "
          f"of the {every} eval images (the base above on all {every}):")
    print("    " + format_table(card["shapes_eval"]).replace("\n", "\n    "))
    print(f"[demo] its evaluation samples, labelled (green frame: strict pass): {project.root / summary['path'] / 'samples.png'}")
    return {**summary, "card": card}


def personalize_subject(project: Project, steps: int = 300) -> dict:
    """DreamBooth-LoRA of the imported subject on the shipped base, with prior preservation; the
    figures base vs personalized on the same seeds, and where the grid and the adapter are."""
    from backend.jobs import create_job, execute_job
    from backend.recipes.personalize import PersonalizeRecipe

    recipe = PersonalizeRecipe(name="demo-sks", model="models/shapes-base", steps=steps, eval_every=steps, sample_every=0)
    job = create_job(project, recipe, "demo-personalize")
    print(f"[demo] DreamBooth-LoRA (rank {recipe.lora.rank}) of the subject ('{recipe.fill(recipe.instance_prompt)}', 5 pictures) on the "
          f"shipped base, {steps} steps, prior preservation with {recipe.prior.class_images} class images (job {job})")
    t0 = time.perf_counter()
    s = execute_job(project, job, echo=False)
    after, base = s["subject_eval"], s["base_subject_eval"]
    print(f"[demo] personalization {s['path']} in {time.perf_counter() - t0:.0f} s, adapter {s['adapter_bytes'] / 1024:.0f} KiB "
          f"(diffusers LoRA format); base -> personalized on the same seeds:")
    for key, label in (("fidelity", "subject fidelity (encoder cosine to the pictures)"), ("shown", "subject shown (exact test)"),
                       ("context", "context prompts passing every check"), ("class_strict", "class strict ShapesEval (circle prompts)"),
                       ("leakage", "subject leaking into 'a circle'")):
        print(f"    {label:46s} {base[key]:.3f} -> {after[key]:.3f}")
    print(f"[demo] its samples, labelled (instance, context and class prompts): {project.root / s['path'] / 'samples.png'}")
    return s


def distill_base(project: Project, steps: int = 100) -> dict:
    """Consistency distillation of the shipped base into a 4-step student; prints teacher vs student
    latency (measured the same way) and strict ShapesEval."""
    from backend.jobs import create_job, execute_job
    from backend.recipes.distill import DistillRecipe

    recipe = DistillRecipe(name="demo-4step", method="consistency", model="models/shapes-base", target_steps=4, consistency={"steps": steps},
                           eval_images=96, eval_every=steps, sample_every=0)
    job = create_job(project, recipe, "demo-distill")
    print(f"[demo] consistency distillation of the shipped base into a 4-step student: {steps} steps, guidance folded into the student "
          f"(job {job})")
    s = execute_job(project, job, echo=False)
    lat, se = s["latency"], s.get("shapes_eval") or {}
    base = json.loads(project.db.execute("SELECT card FROM models WHERE path = 'models/shapes-base'").fetchone()[0])["shapes_eval"]
    print(f"[demo] student {s['path']}: {lat['student_s_per_image'] * 1000:.1f} ms per image at 4 steps, cfg 1; teacher "
          f"{lat['teacher_s_per_image'] * 1000:.1f} ms at 20 steps, cfg 3 (x{lat['speedup']:.1f} faster); strict ShapesEval "
          f"{se.get('overall', float('nan')):.3f} ± {se.get('se', {}).get('overall', float('nan')):.3f} on 96 images (teacher "
          f"{base['overall']:.3f} ± {base['se']['overall']:.3f} on 960)")
    return s


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", type=Path, default=None, help="project folder (default: the per-user demo project)")
    p.add_argument("--recipe", type=Path, default=None, help="pretrain recipe (default: resources/recipes/demo_pretrain.toml)")
    p.add_argument("--images", type=int, default=DEMO_IMAGES, help="ShapesWorld images to export on first use")
    p.add_argument("--align-steps", type=int, default=12, help="Flow-GRPO steps of the alignment (12 keep make demo within 30 minutes on 2 cores with the 11M base)")
    p.add_argument("--personalize-steps", type=int, default=300, help="DreamBooth-LoRA steps of the personalization at the end")


@command("demo", "run the embedded ShapesWorld lifecycle headless (data, pretraining, ShapesEval)", _demo_args)
def run_demo(args: argparse.Namespace) -> int:
    from backend.eval.shapes_eval import format_table
    from backend.jobs import create_job, execute_job
    from backend.recipes import load_recipe
    from backend.stages.world import install_shipped_base

    t0 = time.perf_counter()
    project = ensure_demo_project(args.project.resolve() if args.project else None, args.images)
    with project:
        print(f"[demo] project {project.root}")
        recipe = load_recipe(args.recipe or demo_recipe_path())
        job_id = create_job(project, recipe, "demo-pretrain")
        print(f"[demo] pretraining from scratch: job {job_id}, {recipe.total_steps} steps ({recipe.kind} recipe {args.recipe or demo_recipe_path()})")  # type: ignore[attr-defined]
        summary = execute_job(project, job_id, echo=True)
        print(json.dumps({k: v for k, v in summary.items() if k != "shapes_eval"}, indent=2))
        se = summary.get("shapes_eval") or {}
        if se:
            print("[demo] ShapesEval of the model pretrained from scratch (detector-judged prompt fidelity; strict = exactly"
                  " the promised objects, lenient = GenEval's rule, 'extra' = share with more objects than asked for):")
            print("    " + format_table(se).replace("\n", "\n    "))
            if summary.get("samples"):
                print(f"[demo] its evaluation samples, each labelled with its prompt (green frame: strict pass): {summary['samples']}")
        base = install_shipped_base(project, log=lambda m: print(f"[demo] {m}"))
        if base is not None:
            card = json.loads(project.db.execute("SELECT card FROM models WHERE id = ?", [base]).fetchone()[0])
            seconds = card.get("total_train_seconds", card.get("train_seconds", 0))  # a continued base counts both jobs
            took = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
            print(f"[demo] beside it, the shipped base (models/shapes-base: {card.get('params', 0) / 1e6:.2f}M parameters,"
                  f" {card.get('total_steps', card.get('steps'))} steps, {took} on {card.get('machine')}), which later stages start from:")
            print("    " + format_table(card["shapes_eval"]).replace("\n", "\n    "))
            rate_and_reward(project)
            align_on_reward(project, "models/demo-reward", steps=args.align_steps)
            personalize_subject(project, steps=args.personalize_steps)
            distill_base(project)
        print("[demo] not in the headless demo yet: ReFL; distillation methods other than consistency")
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s")
    return 0
