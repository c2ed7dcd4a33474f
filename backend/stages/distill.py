"""The ``distill`` stage: a few-step student from a teacher, through the one loop.

Progressive distillation (``train/distill.py``) and consistency distillation
(``train/consistency.py``) read data latents from a dataset view (pretraining's data path) and
evaluate the student at its steps with its own sampler (cfg 1: the teacher's guidance is folded in). The student is saved as an ordinary model whose card
carries its sampler (steps, guidance), names the teacher as its parent, and records strict
ShapesEval and the per-image latency of student and teacher measured the same way; ``sample`` and
the Playground read the card's sampler.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from backend.recipes.distill import DistillRecipe
from backend.store import Project


def latency(bundle, settings, net=None, images: int = 8, repeats: int = 2) -> float:
    """Seconds per image to sample (decode included) at ``settings``, best of ``repeats`` batches."""
    from backend.sample.euler import generate

    prompts, seeds = ["a red circle"] * images, list(range(images))
    generate(bundle, prompts[:1], seeds[:1], settings, net=net)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate(bundle, prompts, seeds, settings, net=net)
        best = min(best, (time.perf_counter() - t0) / images)
    return best


def run(project: Project, recipe: DistillRecipe, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.sample.euler import settings_from
    from backend.train.curriculum import view_batches
    from backend.train.distill import ProgressiveDistillation, ProgressiveSettings
    from backend.train.loop import LoopConfig, Trainer
    from backend.train.pretrain import make_evaluator, make_preview
    from backend.train.resolve import resolve_model

    torch.manual_seed(recipe.seed)
    s = recipe.sampler
    if s.width != s.height:
        raise ValueError("distill trains at a square size for now: set sampler.width = sampler.height")
    bundle, what = resolve_model(project, recipe.model, merge=True)
    p, c = recipe.progressive, recipe.consistency
    steps = recipe.total_steps
    if recipe.method == "consistency":
        from backend.train.consistency import ConsistencyDistillation, ConsistencySettings

        method: Any = ConsistencyDistillation(ConsistencySettings(schedule=c.schedule, ema=c.ema, loss=c.loss, cfg=s.cfg))
        reporter.log(f"consistency distillation of {what}: {steps} steps, teacher steps on a {c.schedule}-point schedule (cfg {s.cfg:g}), "
                     f"target EMA {c.ema:g}, {c.loss} distance; the student samples in {recipe.target_steps} jumps")
        every = max(50, min(recipe.eval_every, steps))
    else:
        settings = ProgressiveSettings(start_steps=p.start_steps, target_steps=recipe.target_steps, steps_per_round=p.steps_per_round, cfg=s.cfg)
        method = ProgressiveDistillation(settings)
        reporter.log(f"progressive distillation of {what}: {settings.rounds()} rounds of {p.steps_per_round} steps, student "
                     f"{p.start_steps} -> {recipe.target_steps} steps (its first teacher at {2 * p.start_steps} steps, cfg {s.cfg:g})")
        every = max(50, min(recipe.eval_every, p.steps_per_round))
    student_settings = settings_from(s, steps=recipe.target_steps, cfg=1.0, kind=recipe.sampler_kind)
    batches = view_batches(project, bundle, recipe.data.dataset, recipe.data.view, (s.width, s.height), recipe.data.batch_size, recipe.seed,
                           steps, reporter.log)
    evaluate = make_evaluator(bundle, student_settings, recipe.eval_images) if recipe.eval_images else None
    from backend.recipes.pretrain import PreviewSection

    preview = make_preview(bundle, PreviewSection(sampler={**s.model_dump(), "steps": recipe.target_steps, "cfg": 1.0,
                                                           "kind": recipe.sampler_kind}), reporter) if recipe.sample_every else None
    cfg = LoopConfig(steps=steps, lr=recipe.lr, weight_decay=0.0, warmup=min(20, steps // 20), ema=0.0, seed=recipe.seed, schedule="constant",
                     log_every=5, checkpoint_every=every, sample_every=recipe.sample_every,
                     eval_every=recipe.eval_every, loss_bins=8, device="auto")
    trainer = Trainer(bundle, method, batches, cfg, run_dir, reporter, preview=preview, evaluate=evaluate)
    result = trainer.run(resume=resume)
    if result.state != "done":
        return {"state": result.state, "step": result.step}
    return save_student(project, recipe, bundle, trainer, evaluate, what, reporter, student_settings) | {"step": result.step}


def save_student(project: Project, recipe: DistillRecipe, bundle, trainer, evaluate, what: str, reporter: Any, student_settings) -> dict[str, Any]:
    """The student as a model whose card carries its sampler, its teacher and both latencies."""
    from backend.sample.euler import settings_from
    from backend.train.resolve import resolve_model

    net = trainer.sampling_model
    s = recipe.sampler
    teacher_settings = settings_from(s)
    teacher, _ = resolve_model(project, recipe.model, merge=True)
    lat_student = latency(bundle, student_settings, net=net)
    lat_teacher = latency(teacher, teacher_settings)
    report = evaluate.last if evaluate is not None else None
    name = recipe.name or f"distilled-{recipe.target_steps}step-{getattr(reporter, 'job_id', 0)}"
    sampler = {"steps": recipe.target_steps, "cfg": 1.0, "width": s.width, "height": s.height, "kind": recipe.sampler_kind,
               **({"shift": s.shift} if s.shift else {})}
    card: dict[str, Any] = {"kind": "distilled", "method": recipe.method, "parent": recipe.model.rstrip("/"), "teacher_sampler": s.model_dump(),
                            "sampler": sampler, "size": [s.width, s.height], "steps": recipe.total_steps, "lr": recipe.lr,
                            recipe.method: getattr(recipe, recipe.method).model_dump(), "data": recipe.data.model_dump(), "job": getattr(reporter, "job_id", None),
                            "latency": {"student_s_per_image": round(lat_student, 5), "teacher_s_per_image": round(lat_teacher, 5),
                                        "speedup": round(lat_teacher / lat_student, 2), "device": str(next(net.parameters()).device)}}
    if report is not None:
        card["shapes_eval"] = {k: v for k, v in report.to_json().items() if k != "per_image"}
    folder = bundle.save(project.root / "models" / name, net=getattr(net, "module", net), extra={"card": card})
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    if evaluate is not None and evaluate.grid is not None:
        evaluate.grid.save(folder / "samples.png")
    parent = project.db.execute("SELECT id FROM models WHERE path = ?", [recipe.model.rstrip("/")]).fetchone()
    with project.transaction():
        model_id = int(project.db["models"].insert({"kind": "distilled", "name": name, "path": str(folder.relative_to(project.root)),
                                                    "parent_id": parent[0] if parent else None, "job_id": getattr(reporter, "job_id", None),
                                                    "card": json.dumps(card)}).last_pk)
    reporter.log(f"saved the {recipe.target_steps}-step student #{model_id} to {folder.relative_to(project.root)} (teacher {what}): "
                 + (f"strict ShapesEval {report.overall:.3f} at {recipe.target_steps} steps, cfg 1; " if report is not None else "")
                 + f"{lat_student * 1000:.1f} ms per image against the teacher's {lat_teacher * 1000:.1f} ms at {s.steps} steps "
                 f"(x{lat_teacher / lat_student:.1f})")
    out = {"state": "done", "model_id": model_id, "path": str(folder.relative_to(project.root)), "latency": card["latency"]}
    if report is not None:
        out["shapes_eval"] = card["shapes_eval"]
    return out
