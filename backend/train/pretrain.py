"""Pretraining: a recipe, a project and a job in, a saved model and its ShapesEval out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from backend.data.view import load_view
from backend.models.family import ModelBundle, build_embedded, load_model
from backend.recipes.pretrain import PretrainRecipe, PreviewSection
from backend.sample.euler import SampleSettings, generate, settings_from
from backend.store import Project

from .curriculum import CurriculumData
from .loop import LoopConfig, LoopResult, Trainer
from .objectives import FlowMatching, Repa
from .reporter import Reporter


def build_bundle(recipe: PretrainRecipe) -> ModelBundle:
    m = recipe.model
    shift = recipe.allocation.shift.model_dump()
    if m.init:
        bundle = load_model(m.init)
        bundle.info["shift"] = shift
        return bundle
    return build_embedded(m.size, family=m.family, layers=m.layers, heads=m.heads, head_dim=m.head_dim, patch=m.patch, channels=m.channels,
                          text_encoder=m.text_encoder or None,
                          vae=m.vae or None, shift=shift, seed=recipe.optim.seed)


def loop_config(recipe: PretrainRecipe) -> LoopConfig:
    o, s = recipe.optim, recipe.schedule
    return LoopConfig(
        steps=recipe.total_steps, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), warmup=o.warmup, schedule=o.schedule,
        clip=o.clip, ema=o.ema, grad_accum=o.grad_accum, precision=o.precision, seed=o.seed, log_every=s.log_every,
        checkpoint_every=s.checkpoint_every, sample_every=s.sample_every, eval_every=s.eval_every,
        loss_bins=recipe.allocation.loss_bins, device=recipe.compute.device, compile=recipe.compute.compile,
        gradient_checkpointing=recipe.compute.gradient_checkpointing, eight_bit=o.eight_bit,
    )


def make_evaluator(bundle: ModelBundle, settings: SampleSettings, n_images: int) -> Any:
    """Strict ShapesEval of the first ``n_images`` stratified eval images, drawn with ``settings``;
    the last report and its labelled grid stay on the function (``.last``, ``.grid``)."""
    from backend.eval.model_eval import evaluate_model, labelled_grid
    from backend.eval.shapes_eval import metrics
    from backend.world.pretrained import load_detector

    detector = load_detector()

    def evaluate(step: int, model: torch.nn.Module) -> dict[str, float]:
        report, images, pairs, _ = evaluate_model(bundle, settings, n_images, net=model, detector=detector)
        evaluate.last = report  # type: ignore[attr-defined]
        evaluate.grid = labelled_grid(images, [p.prompt for p, _ in pairs], [r["pass"] for r in report.per_image])  # type: ignore[attr-defined]
        return metrics(report)

    evaluate.last = evaluate.grid = None  # type: ignore[attr-defined]
    return evaluate


def make_preview(bundle: ModelBundle, pv: PreviewSection, reporter: Reporter) -> Any:
    """The fixed-seed preview grid a run posts every ``sample_every`` steps."""
    sp = pv.sampler
    settings = settings_from(sp)
    prompts = [p for p in pv.prompts for _ in pv.seeds]
    seeds = [s for _ in pv.prompts for s in pv.seeds]

    def preview(step: int, model: torch.nn.Module) -> None:
        images = generate(bundle, prompts, seeds, settings, net=model)
        meta = {"steps": sp.steps, "cfg": sp.cfg, "width": sp.width, "height": sp.height, "shift": sp.shift, "kind": "preview"}
        for prompt, seed, img in zip(prompts, seeds, images):
            reporter.sample(step, prompt, seed, img, meta)

    return preview


def run_pretrain(project: Project, recipe: PretrainRecipe, run_dir: Path, reporter: Reporter, *, resume: bool = True) -> dict[str, Any]:
    """Train, save the EMA model into ``project/models`` and return a summary with ShapesEval."""
    t0 = time.perf_counter()
    threads = recipe.compute.threads or max(1, (torch.get_num_threads()) // max(1, recipe.compute.processes))
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.optim.seed)
    bundle = build_bundle(recipe)
    n_params = sum(p.numel() for p in bundle.net.parameters())
    what = f"{bundle.family.label} from {recipe.model.init}" if bundle.family.stock else f"embedded {bundle.family.label} '{recipe.model.size}'"
    reporter.log(f"model: {what} with {n_params / 1e6:.2f}M parameters")
    encoder = None
    if recipe.repa.enabled:
        from backend.world.pretrained import load_encoder

        encoder = load_encoder(recipe.repa.encoder or None)
    items = load_view(project, recipe.data.dataset, recipe.data.view)
    data = CurriculumData(project, recipe, bundle, items, encoder=encoder, log=reporter.log)
    objectives: list = [FlowMatching(recipe.allocation.timesteps)]
    if recipe.repa.enabled:
        r = recipe.repa
        objectives.append(Repa(bundle, r.block, encoder.dim, r.weight, r.projector_dim, r.projector_layers, r.until_step))
    cfg = loop_config(recipe)
    width, height = recipe.eval_size
    sp = recipe.preview.sampler
    evaluate = make_evaluator(bundle, SampleSettings(width=width, height=height, steps=sp.steps, cfg=sp.cfg), recipe.schedule.eval_images)
    trainer = Trainer(bundle, objectives, data, cfg, run_dir, reporter, preview=make_preview(bundle, recipe.preview, reporter), evaluate=evaluate)
    result: LoopResult = trainer.run(resume=resume)
    summary: dict[str, Any] = {"state": result.state, "step": result.step, "params": n_params, "seconds": round(time.perf_counter() - t0, 1)}
    if result.state == "done" and trainer.accelerator.is_main_process:
        report = evaluate.last
        card = {
            "recipe": recipe.name or "pretrain",
            "steps": result.step,
            "params": n_params,
            "train_seconds": summary["seconds"],
            "size": list(recipe.eval_size),  # what it was trained and evaluated at; the Playground opens at it
            "shapes_eval": report.to_json() if report else None,
            "shift": recipe.allocation.shift.model_dump(),
            "timesteps": recipe.allocation.timesteps.model_dump(),
        }
        if report is not None:
            card["shapes_eval"].pop("per_image", None)
        name = recipe.name or "pretrain"
        folder = project.root / "models" / f"{name}-{run_dir.name}"
        bundle.save(folder, net=trainer.sampling_model, extra={"card": card})
        if evaluate.grid is not None:  # the samples behind the card's numbers, each with its prompt, framed by strict pass/fail
            evaluate.grid.save(folder / "samples.png")
            summary["samples"] = str(folder / "samples.png")
        model_id = reporter.model_saved(folder, name, card)
        summary.update({"model": str(folder), "model_id": model_id, "shapes_eval": card["shapes_eval"]})
        if report is not None:
            reporter.log("ShapesEval of the saved model:\n" + report.table())
    return summary
