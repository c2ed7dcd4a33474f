"""The ``align`` stage: tune a model on the project's ratings, through the one loop.

So far one method, Diffusion-DPO (``train/dpo.py``): the decisive judgements (a or b; ties,
"both bad" and skips say nothing about which image is better and are left out and counted) become
(winner, loser) latent pairs at the recipe's size, split by prompt; the held-out prompts give the
implicit accuracy as it trains. The tuned weights are saved as a model whose card names its parent,
the method and the judgements it learned from.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from backend.recipes.align import AlignRecipe
from backend.store import Project, ratings
from backend.store.ratings import heldout_prompt


def rated_pairs(project: Project, recipe: AlignRecipe, bundle, log=print) -> tuple[Any, Any, dict[str, Any]]:
    """(train, held-out) ``RatedPairs`` from the project's decisive judgements, and what was used."""
    from PIL import Image

    from backend.train.dpo import RatedPairs
    from backend.world.arrays import square_batch

    rows = [r for r in ratings.history(project.db, rater=recipe.rater, limit=10_000_000) if not r["is_repeat"]]
    left_out = {c: sum(1 for r in rows if r["choice"] == c) for c in ("tie", "both_bad", "skip")}
    rows = [r for r in rows if r["choice"] in ("a", "b")]
    if len(rows) < 8:
        raise ValueError(f"only {len(rows)} decisive judgements (a or b) to learn from; rate at least 8 pairs first")
    s = recipe.sampler
    if s.width != s.height:
        raise ValueError("align trains at a square size for now: set sampler.width = sampler.height")
    hashes = sorted({h for r in rows for h in (r["image_a"], r["image_b"])})
    latents: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(0, len(hashes), 64):
            part = hashes[i: i + 64]
            images = [Image.open(io.BytesIO(project.blob_path(h, "png").read_bytes())).convert("RGB") for h in part]
            z = bundle.encode_images(square_batch(images, s.width)).cpu()
            latents.update(zip(part, z))
    prompts = sorted({r["prompt"] for r in rows})
    embeds = bundle.encode_prompts(prompts)
    where = {p: i for i, p in enumerate(prompts)}

    def build(subset: list[dict]) -> RatedPairs:
        idx = torch.tensor([where[r["prompt"]] for r in subset], dtype=torch.long)
        win = [r["image_a"] if r["choice"] == "a" else r["image_b"] for r in subset]
        lose = [r["image_b"] if r["choice"] == "a" else r["image_a"] for r in subset]
        return RatedPairs(torch.stack([latents[h] for h in win]), torch.stack([latents[h] for h in lose]),
                          embeds.states[idx].cpu(), embeds.pooled[idx].cpu(), embeds.lengths[idx].cpu())

    held = [r for r in rows if heldout_prompt(r["prompt"], recipe.heldout, recipe.seed)]
    train = [r for r in rows if not heldout_prompt(r["prompt"], recipe.heldout, recipe.seed)]
    if not train or not held:
        raise ValueError(f"the split by prompt left {len(train)} training and {len(held)} held-out judgements; rate more prompts")
    info = {"judgements": len(rows), "train_judgements": len(train), "heldout_judgements": len(held), "prompts": len(prompts),
            "left_out": left_out, "rating_ids": [r["id"] for r in rows]}
    log(f"{len(rows)} decisive judgements on {len(prompts)} prompts: {len(train)} to train on, {len(held)} held out "
        f"(left out: {left_out['tie']} ties, {left_out['both_bad']} both bad, {left_out['skip']} skipped)")
    return build(train), build(held), info


def run(project: Project, recipe: AlignRecipe, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.train.dpo import DiffusionDPO
    from backend.train.loop import LoopConfig, Trainer
    from backend.train.resolve import resolve_model

    torch.manual_seed(recipe.seed)
    bundle, what = resolve_model(project, recipe.model)
    train, held, info = rated_pairs(project, recipe, bundle, log=reporter.log)
    cfg = LoopConfig(steps=recipe.steps, lr=recipe.lr, weight_decay=0.0, warmup=min(20, recipe.steps // 10), ema=0.0, seed=recipe.seed,
                     log_every=5, checkpoint_every=max(50, recipe.eval_every), sample_every=0, eval_every=recipe.eval_every, loss_bins=1,
                     device="auto")
    method = DiffusionDPO(train, held, recipe.beta, recipe.batch_size, recipe.seed, lora=False)
    trainer = Trainer(bundle, method, lambda *a: None, cfg, run_dir, reporter)
    result = trainer.run(resume=resume)
    if result.state != "done":
        return {"state": result.state, "step": result.step}
    name = recipe.name or f"dpo-{getattr(reporter, 'job_id', 0)}"
    parent = project.db.execute("SELECT id FROM models WHERE path = ?", [recipe.model.rstrip("/")]).fetchone()
    card = {"kind": "tuned", "method": "diffusion-dpo", "parent": recipe.model, "beta": recipe.beta, "steps": recipe.steps, "lr": recipe.lr,
            "heldout": method.last, "data": {k: v for k, v in info.items() if k != "rating_ids"}, "rater": recipe.rater,
            "job": getattr(reporter, "job_id", None), "size": [recipe.sampler.width, recipe.sampler.height]}
    folder = bundle.save(project.root / "models" / name, net=trainer.sampling_model, extra={"card": card})
    (folder / "card.json").write_text(json.dumps({**card, "rating_ids": info["rating_ids"]}, indent=2))
    with project.transaction():
        model_id = int(project.db["models"].insert({"kind": "tuned", "name": name, "path": str(folder.relative_to(project.root)),
                                                    "parent_id": parent[0] if parent else None, "job_id": getattr(reporter, "job_id", None),
                                                    "card": json.dumps(card)}).last_pk)
    reporter.log(f"saved the DPO-tuned model #{model_id} to {folder.relative_to(project.root)} (from {what}): held-out implicit accuracy "
                 f"{method.last.get('implicit_accuracy', float('nan')):.3f}")
    return {"state": "done", "step": result.step, "model_id": model_id, "path": str(folder.relative_to(project.root)), "heldout": method.last,
            **{k: v for k, v in info.items() if k != "rating_ids"}}
