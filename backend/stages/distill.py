"""The ``distill`` stage: a few-step student from a teacher, through the one loop.

Progressive (``train/distill.py``), consistency (``train/consistency.py``), DMD2
(``train/dmd.py``) and LADD (``train/ladd.py``) read data latents from a dataset view
(pretraining's data path); reflow (``train/reflow.py``) reads the teacher's own couplings, drawn
for the view's captions and cached. All evaluate the student at its steps with its own sampler
(cfg 1: the teacher's guidance is folded in). The student is saved as an ordinary model whose card
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

from .lineage import register_model


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


def build_method(project: Project, recipe: DistillRecipe, bundle, what: str, reporter: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The recipe's method, the batches it reads (None: the data view's) and what its card should add."""
    s, steps, n = recipe.sampler, recipe.total_steps, recipe.target_steps
    p, c = recipe.progressive, recipe.consistency
    if recipe.method == "consistency":
        from backend.train.consistency import ConsistencyDistillation, ConsistencySettings

        reporter.log(f"consistency distillation of {what}: {steps} steps, teacher steps on a {c.schedule}-point schedule (cfg {s.cfg:g}), "
                     f"target EMA {c.ema:g}, {c.loss} distance; the student samples in {n} jumps")
        return ConsistencyDistillation(ConsistencySettings(schedule=c.schedule, ema=c.ema, loss=c.loss, cfg=s.cfg)), None, {}
    if recipe.method == "dmd":
        from backend.train.dmd import DMD2, DmdSettings

        d = recipe.dmd
        reporter.log(f"DMD2 of {what}: {steps} generator updates, {d.fake_updates} fake-score updates each (a second full network), "
                     f"real score = the teacher at cfg {s.cfg:g}" + (f", GAN head on block {d.gan_block} x{d.gan_weight:g}" if d.gan_weight else "")
                     + f"; the student samples in {n} jumps")
        return DMD2(DmdSettings(student_steps=n, cfg=s.cfg, fake_updates=d.fake_updates, fake_lr=d.fake_lr, gan_weight=d.gan_weight,
                                gan_blocks=(d.gan_block,))), None, {}
    if recipe.method == "ladd":
        from backend.train.ladd import LADD, LaddSettings

        a = recipe.ladd
        reporter.log(f"LADD of {what}: {steps} student updates, discriminator heads on the teacher's blocks {a.blocks} (hinge, R1 {a.r1:g}), "
                     f"distillation term x{a.distill_weight:g} (teacher cfg {s.cfg:g}); the student samples in {n} jumps")
        return LADD(LaddSettings(student_steps=n, cfg=s.cfg, distill_weight=a.distill_weight, r1=a.r1, disc_lr=a.disc_lr,
                                 blocks=tuple(a.blocks))), None, {}
    if recipe.method == "reflow":
        return build_reflow(project, recipe, bundle, what, reporter)
    from backend.train.distill import ProgressiveDistillation, ProgressiveSettings

    settings = ProgressiveSettings(start_steps=p.start_steps, target_steps=n, steps_per_round=p.steps_per_round, cfg=s.cfg)
    reporter.log(f"progressive distillation of {what}: {settings.rounds()} rounds of {p.steps_per_round} steps, student "
                 f"{p.start_steps} -> {n} steps (its first teacher at {2 * p.start_steps} steps, cfg {s.cfg:g})")
    return ProgressiveDistillation(settings), None, {}


def build_reflow(project: Project, recipe: DistillRecipe, bundle, what: str, reporter: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Reflow's couplings (drawn by the teacher, cached), its batches over them, and the distance of its one-step phase."""
    import random

    from backend.data.view import load_view
    from backend.sample.euler import settings_from
    from backend.stages.personalize import model_fingerprint
    from backend.train.perceptual import perceptual_distance
    from backend.train.reflow import CouplingBatches, ReflowInstaFlow, ReflowSettings, couplings_key, make_couplings, straightness
    from backend.train.resolve import locate

    r, s = recipe.reflow, recipe.sampler
    items = load_view(project, recipe.data.dataset, recipe.data.view)
    captions = [it.caption for it in items if it.caption]
    if not captions:
        raise ValueError(f"dataset {recipe.data.dataset!r} has no captioned items in view {recipe.data.view!r}: reflow draws the teacher's "
                         "samples for its captions")
    rng = random.Random(recipe.seed)
    prompts = [captions[rng.randrange(len(captions))] for _ in range(r.pairs)]
    teacher = settings_from(s)
    key = couplings_key(model_fingerprint(locate(project, recipe.model)), prompts, teacher, recipe.seed)
    reporter.log(f"drawing {r.pairs} teacher couplings of {what} ({s.steps} steps, cfg {s.cfg:g}) for captions of {recipe.data.dataset!r}")
    couplings = make_couplings(bundle, prompts, recipe.seed, teacher, project.root / "cache" / "couplings" / key, reporter.log,
                               lambda k, total: reporter.progress(k, total))
    with torch.no_grad():
        embeds = bundle.encode_prompts(prompts).to(torch.device("cpu"))
    one_step = recipe.target_steps == 1 and r.distill_steps > 0
    # the distance's name now (and a refusal of 'lpips' without its weights, before any training); the network on the run's device later
    distance_name = perceptual_distance(torch.device("cpu"), r.distance)[1] if one_step and r.l2_share < 1 else ""
    alpha = bundle.default_alpha(s.width, s.height)
    before = straightness(bundle, bundle.net, couplings, embeds, alpha)
    reporter.log(f"reflow of {what}: {r.reflow_steps} steps on the straight lines (path curvature before: {before:.3f})"
                 + (f", then {r.distill_steps} one-step steps ({round(r.l2_share * r.distill_steps)} with L2"
                    + (f", the rest with {distance_name})" if distance_name else ")") if one_step else
                    f"; a {recipe.target_steps}-step student samples the reflowed ODE (no one-step phase)"))
    method = ReflowInstaFlow(ReflowSettings(reflow_steps=r.reflow_steps, distill_steps=r.distill_steps if one_step else 0, l2_share=r.l2_share),
                             distance_on=(lambda device: perceptual_distance(device, r.distance)[0]) if distance_name else None)
    batches = CouplingBatches(couplings, embeds, recipe.data.batch_size, (s.width, s.height), alpha, recipe.seed)
    return method, batches, {"couplings": r.pairs, "curvature_before": round(before, 4), "distance": distance_name or "l2",
                             "_straightness": lambda net: straightness(bundle, net, couplings, embeds, alpha)}


def teacher_previews(bundle, recipe: DistillRecipe, reporter: Any) -> None:
    """The teacher's pictures of the preview prompts and seeds at its own sampler, posted once per job
    (kind "teacher") before the student trains, so Runs can hold the student's previews against them."""
    from backend.recipes.pretrain import PreviewSection
    from backend.sample.euler import generate, settings_from

    project, job = getattr(reporter, "project", None), getattr(reporter, "job_id", None)
    if project is not None and project.db.execute("SELECT 1 FROM samples WHERE job_id = ? AND json_extract(settings, '$.kind') = 'teacher'",
                                                  [job]).fetchone():
        return  # a resumed job: already drawn
    pv, s = PreviewSection(), recipe.sampler
    prompts = [p for p in pv.prompts for _ in pv.seeds]
    seeds = [sd for _ in pv.prompts for sd in pv.seeds]
    meta = {"steps": s.steps, "cfg": s.cfg, "width": s.width, "height": s.height, "shift": s.shift, "kind": "teacher"}
    for prompt, seed, img in zip(prompts, seeds, generate(bundle, prompts, seeds, settings_from(s))):
        reporter.sample(0, prompt, seed, img, meta)


def run(project: Project, recipe: DistillRecipe, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.sample.euler import settings_from
    from backend.train.curriculum import view_batches
    from backend.train.loop import LoopConfig, Trainer
    from backend.train.pretrain import make_evaluator, make_preview
    from backend.train.resolve import refuse_distilled, resolve_model

    torch.manual_seed(recipe.seed)
    s = recipe.sampler
    if s.width != s.height:
        raise ValueError("distill trains at a square size for now: set sampler.width = sampler.height")
    refuse_distilled(project, recipe.model, "distillation", "distil from its teacher {parent!r} with fewer target steps instead")
    bundle, what = resolve_model(project, recipe.model, merge=True)
    steps = recipe.total_steps
    method, batches, extra = build_method(project, recipe, bundle, what, reporter)
    every = max(50, min(recipe.eval_every, recipe.progressive.steps_per_round if recipe.method == "progressive" else steps))
    student_settings = settings_from(s, steps=recipe.target_steps, cfg=1.0, kind=recipe.sampler_kind)
    if batches is None:
        batches = view_batches(project, bundle, recipe.data.dataset, recipe.data.view, (s.width, s.height), recipe.data.batch_size,
                               recipe.seed, steps, reporter.log)
    evaluate = make_evaluator(bundle, student_settings, recipe.eval_images) if recipe.eval_images else None
    from backend.recipes.pretrain import PreviewSection

    preview = make_preview(bundle, PreviewSection(sampler={**s.model_dump(), "steps": recipe.target_steps, "cfg": 1.0,
                                                           "kind": recipe.sampler_kind}), reporter) if recipe.sample_every else None
    if preview is not None:
        teacher_previews(bundle, recipe, reporter)
    cfg = LoopConfig(steps=steps, lr=recipe.lr, weight_decay=0.0, warmup=min(20, steps // 20), ema=0.0, seed=recipe.seed, schedule="constant",
                     log_every=5, checkpoint_every=every, sample_every=recipe.sample_every,
                     eval_every=recipe.eval_every, loss_bins=8, device="auto")
    trainer = Trainer(bundle, method, batches, cfg, run_dir, reporter, preview=preview, evaluate=evaluate)
    result = trainer.run(resume=resume)
    if result.state != "done":
        return {"state": result.state, "step": result.step}
    measure = extra.pop("_straightness", None)
    if measure is not None:
        extra["curvature_after"] = round(measure(trainer.sampling_model), 4)
        reporter.log(f"path curvature after reflow: {extra['curvature_after']:.3f} (before {extra['curvature_before']:.3f}; 0 = straight)")
    return save_student(project, recipe, bundle, trainer, evaluate, what, reporter, student_settings, extra) | {"step": result.step}


def save_student(project: Project, recipe: DistillRecipe, bundle, trainer, evaluate, what: str, reporter: Any, student_settings,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
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
                                        "speedup": round(lat_teacher / lat_student, 2), "device": str(next(net.parameters()).device)},
                            **({recipe.method + "_measured": extra} if extra else {})}
    if report is not None:
        card["shapes_eval"] = {k: v for k, v in report.to_json().items() if k != "per_image"}
    folder = bundle.save(project.root / "models" / name, net=getattr(net, "module", net), extra={"card": card})
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    model_id = register_model(project, folder, "distilled", name, recipe.model, card, reporter, evaluate.grid if evaluate is not None else None)
    reporter.log(f"saved the {recipe.target_steps}-step student #{model_id} to {folder.relative_to(project.root)} (teacher {what}): "
                 + (f"strict ShapesEval {report.overall:.3f} at {recipe.target_steps} steps, cfg 1; " if report is not None else "")
                 + f"{lat_student * 1000:.1f} ms per image against the teacher's {lat_teacher * 1000:.1f} ms at {s.steps} steps "
                 f"(x{lat_teacher / lat_student:.1f})")
    out = {"state": "done", "model_id": model_id, "path": str(folder.relative_to(project.root)), "latency": card["latency"]}
    if report is not None:
        out["shapes_eval"] = card["shapes_eval"]
    return out
