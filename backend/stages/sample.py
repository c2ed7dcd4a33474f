"""The ``sample`` stage: images from a model, run or checkpoint, for a recipe or for the ShapesEval
prompt set (the CLI's ``sample`` and the Playground's jobs)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from PIL import Image

from backend.recipes import SampleRecipe
from backend.sample.euler import SampleSettings, generate, settings_from
from backend.store import Project
from backend.train.resolve import locate, resolve_model


def write_images(out: Path, images: list[Image.Image], prompts: list[str], seeds: list[int], names: list[str], info: dict[str, Any],
                 specs: list[dict] | None = None, rewards: list[float] | None = None, extra: list[dict] | None = None) -> None:
    """PNGs plus metadata.jsonl lines (with the prompt spec when known, so ``eval shapes`` can score them,
    the reward when a reward model scored them, and per-image extras such as the enhanced prompt)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.jsonl", "a", encoding="utf-8") as meta:
        for i, (img, prompt, seed, name) in enumerate(zip(images, prompts, seeds, names)):
            img.save(out / name)
            rec: dict[str, Any] = {"file": name, "prompt": prompt, "seed": seed, **info}
            if specs:
                rec["spec"] = specs[i]
            if rewards:
                rec["reward"] = round(rewards[i], 4)
            if extra:
                rec.update(extra[i])
            meta.write(json.dumps(rec) + "\n")


def score_with(project: Project | None, reward: str, images: list[Image.Image], prompts: list[str]) -> list[float]:
    """Rewards of ``images`` for their prompts from the reward model folder ``reward``."""
    from backend.models.reward import load_reward

    return load_reward(locate(project, reward)).score(images, prompts)


def _settings(recipe: SampleRecipe) -> SampleSettings:
    s = recipe.sampler
    return settings_from(s)


def run_sample_recipe(project: Project | None, recipe: SampleRecipe, reporter: Any = None) -> dict[str, Any]:
    """One image per prompt and seed (each prompt enhanced first when the recipe says so)."""
    from backend.sample.enhance import enhance_prompts

    bundle, what = resolve_model(project, recipe.model, adapters=recipe.adapters, lora_scale=recipe.lora_scale)
    settings = _settings(recipe)
    rewrites = enhance_prompts(recipe.enhance, recipe.prompts, project, locate=lambda ref: locate(project, ref))
    if reporter is not None and recipe.enhance:
        for r in rewrites:
            reporter.log(f"prompt {r.prompt!r} -> {r.enhanced!r}" + (f" ({r.note})" if r.note else ""))
    prompts = [r.prompt for r in rewrites for _ in recipe.seeds]
    used = [r.enhanced for r in rewrites for _ in recipe.seeds]
    seeds = [sd for _ in recipe.prompts for sd in recipe.seeds]
    t0 = time.perf_counter()
    images = generate(bundle, used, seeds, settings)
    per_image = (time.perf_counter() - t0) / max(1, len(images))
    out = locate(project, recipe.out)
    names = [f"{i:04d}_s{sd}.png" for i, sd in enumerate(seeds)]
    rewards = score_with(project, recipe.reward, images, used) if recipe.reward else None
    info = {"model": what, "settings": settings.__dict__, "s_per_image": round(per_image, 5),
            **({"reward_model": recipe.reward} if recipe.reward else {})}
    enhanced = [{"enhanced": u, "enhancer": recipe.enhance} for u in used] if recipe.enhance else None
    write_images(out, images, prompts, seeds, names, info, rewards=rewards, extra=enhanced)
    if reporter is not None:
        reporter.progress(len(images), len(images))
    return {"state": "done", "model": what, "images": len(images), "out": str(out), "s_per_image": round(per_image, 5), **({"rewards": rewards} if rewards else {}),
            **({"enhanced": [{"prompt": r.prompt, "enhanced": r.enhanced, "note": r.note} for r in rewrites]} if recipe.enhance else {})}


def sample_eval_set(project: Project | None, recipe: SampleRecipe, seeds_per_prompt: int | None = None) -> dict[str, Any]:
    """Render the ShapesEval prompt set; file names carry prompt ids and metadata carries specs."""
    from backend.eval.shapes_eval import EVAL_SEED_OFFSET, load_eval_prompts

    bundle, what = resolve_model(project, recipe.model)
    settings = _settings(recipe)
    pairs = [(p, s) for p in load_eval_prompts() for s in p.seeds[: seeds_per_prompt or len(p.seeds)]]
    prompts = [p.prompt for p, _ in pairs]
    seeds = [EVAL_SEED_OFFSET + s for _, s in pairs]
    images = generate(bundle, prompts, seeds, settings)
    out = locate(project, recipe.out)
    write_images(out, images, prompts, seeds, [f"{p.id}_s{s}.png" for p, s in pairs], {"model": what, "settings": settings.__dict__},
                 specs=[p.spec for p, _ in pairs])
    return {"state": "done", "model": what, "images": len(images), "out": str(out)}


def run(project: Project, recipe: SampleRecipe, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    return run_sample_recipe(project, recipe, reporter)
