"""The ``align`` stage: tune a model through the one loop, fully or with a LoRA adapter.

Flow-GRPO (``train/grpo.py``) samples groups on ShapesEval-like training prompts and pushes
towards the better-rewarded images (the detector rule, a reward model, or a mix). ReFL
(``train/refl.py``) climbs a reward model's gradient, with the flow loss on a dataset view as its
regulariser. SFT is pretraining's own objective on the rated winners or on a dataset view.
Diffusion-DPO (``train/dpo.py``) learns from the project's ratings: the decisive judgements (a or b; ties,
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

from .lineage import register_model

METHOD_NAMES = {"dpo": "diffusion-dpo", "grpo": "flow-grpo", "refl": "refl", "sft": "sft"}


def rated_pairs(project: Project, recipe: AlignRecipe, bundle, log=print, split: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """(train, held-out) ``RatedPairs`` from the project's decisive judgements, and what was used;
    without ``split`` every judgement trains and the held-out set is None (SFT evaluates otherwise)."""
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

    if not split:
        log(f"{len(rows)} decisive judgements on {len(prompts)} prompts (left out: {left_out['tie']} ties, {left_out['both_bad']} both bad, "
            f"{left_out['skip']} skipped)")
        return build(rows), None, {"judgements": len(rows), "train_judgements": len(rows), "prompts": len(prompts), "left_out": left_out,
                                   "rating_ids": [r["id"] for r in rows]}
    held = [r for r in rows if heldout_prompt(r["prompt"], recipe.heldout, recipe.seed)]
    train = [r for r in rows if not heldout_prompt(r["prompt"], recipe.heldout, recipe.seed)]
    if not train or not held:
        raise ValueError(f"the split by prompt left {len(train)} training and {len(held)} held-out judgements; rate more prompts")
    info = {"judgements": len(rows), "train_judgements": len(train), "heldout_judgements": len(held), "prompts": len(prompts),
            "left_out": left_out, "rating_ids": [r["id"] for r in rows]}
    log(f"{len(rows)} decisive judgements on {len(prompts)} prompts: {len(train)} to train on, {len(held)} held out "
        f"(left out: {left_out['tie']} ties, {left_out['both_bad']} both bad, {left_out['skip']} skipped)")
    return build(train), build(held), info


def grpo_method(recipe: AlignRecipe, project: Project, bundle, lora: bool) -> tuple[Any, dict[str, Any]]:
    """Flow-GRPO over ShapesEval-like training prompts (kept apart from the eval set), rewarded as the recipe says."""
    from backend.eval.shapes_eval import training_prompts
    from backend.train.grpo import FlowGRPO, GRPOSettings
    from backend.train.resolve import locate
    from backend.train.rewards import Rewards

    g, s = recipe.grpo, recipe.sampler
    if s.width != s.height:
        raise ValueError("align trains at a square size for now: set sampler.width = sampler.height")
    pool = training_prompts(g.pool, seed=recipe.seed + 7, size=(s.width, s.height))
    rewards = Rewards(g.rewards, locate=lambda ref: locate(project, ref))
    settings = GRPOSettings(group_size=g.group_size, prompts_per_step=g.prompts_per_step, sde_steps=g.sde_steps, noise=g.noise, clip=g.clip,
                            kl=g.kl, adv_clip=g.adv_clip, cfg=g.cfg if g.cfg is not None else s.cfg, minibatches=g.minibatches,
                            train_steps=g.train_steps, focus=g.focus)
    per_cat: dict[str, int] = {}
    for p in pool:
        per_cat[p.category] = per_cat.get(p.category, 0) + 1
    f = bundle.vae_factor
    method = FlowGRPO([p.prompt for p in pool], [p.scene for p in pool], rewards, settings, (s.height // f, s.width // f), recipe.seed, lora,
                      weights=[1.0 / per_cat[p.category] for p in pool], categories=[p.category for p in pool])
    info = {"prompts": len(pool), "prompts_per_category": per_cat, "rewards": rewards.weights}
    return method, info


def dataset_batches(project: Project, recipe: AlignRecipe, bundle, steps: int, log) -> Any:
    """The loop's batches from the recipe's dataset view at its size (pretraining's own data path)."""
    from backend.train.curriculum import view_batches

    d, s = recipe.data, recipe.sampler
    return view_batches(project, bundle, d.dataset, d.view, (s.width, s.height), d.batch_size, recipe.seed, steps, log)


def refl_method(recipe: AlignRecipe, project: Project, bundle) -> tuple[Any, dict[str, Any]]:
    """ReFL over ShapesEval-like training prompts with the recipe's reward model."""
    from backend.eval.shapes_eval import training_prompts
    from backend.models.reward import load_reward
    from backend.train.refl import ReFL, ReFLSettings
    from backend.train.resolve import locate

    r, s = recipe.refl, recipe.sampler
    pool = training_prompts(recipe.grpo.pool, seed=recipe.seed + 7, size=(s.width, s.height))
    reward = load_reward(locate(project, r.reward))
    settings = ReFLSettings(batch_size=r.batch_size, sampler_steps=s.steps, late=min(r.late, s.steps), cfg=s.cfg, reward_weight=r.reward_weight,
                            margin=r.margin, regulariser=r.regulariser, shift=r.shift)
    f = bundle.vae_factor
    method = ReFL([p.prompt for p in pool], reward, settings, (s.height // f, s.width // f), recipe.seed)
    return method, {"prompts": len(pool), "reward": r.reward, "regulariser": r.regulariser and f"{recipe.data.dataset}/{recipe.data.view}"}


def run(project: Project, recipe: AlignRecipe, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.sample.euler import settings_from
    from backend.train.dpo import DiffusionDPO
    from backend.train.loop import LoopConfig, Trainer
    from backend.train.pretrain import make_evaluator, make_preview
    from backend.train.resolve import resolve_model

    torch.manual_seed(recipe.seed)
    bundle, what = resolve_model(project, recipe.model, merge=True)
    lora = recipe.lora_rank > 0
    base_dtype = None
    if lora:
        from backend.models.lora import add_lora, base_dtype_for

        base_dtype = base_dtype_for(recipe.lora_base_dtype, bundle.family)
        add_lora(bundle.net, bundle.family, rank=recipe.lora_rank, base_dtype=base_dtype)
    s = recipe.sampler
    evaluate = make_evaluator(bundle, settings_from(s),
                              recipe.eval_images) if recipe.eval_images else None
    preview = make_preview(bundle, recipe.preview, reporter) if recipe.sample_every else None
    batches: Any = lambda *a: None  # noqa: E731 - methods that draw their own data
    accumulate = 1
    if recipe.method == "dpo":
        train, held, info = rated_pairs(project, recipe, bundle, log=reporter.log)
        method: Any = DiffusionDPO(train, held, recipe.beta, recipe.batch_size, recipe.seed, lora=lora)
    elif recipe.method == "grpo":
        method, info = grpo_method(recipe, project, bundle, lora)
        accumulate = method.trained_steps
        reporter.log(f"Flow-GRPO on {info['prompts']} training prompts, reward {info['rewards']}, {recipe.grpo.prompts_per_step} prompts x "
                     f"{recipe.grpo.group_size} images per step, {recipe.grpo.sde_steps} SDE steps")
    elif recipe.method == "refl":
        method, info = refl_method(recipe, project, bundle)
        if recipe.refl.regulariser > 0:
            batches = dataset_batches(project, recipe, bundle, recipe.steps, reporter.log)
        reporter.log(f"ReFL on {info['prompts']} training prompts with reward model {recipe.refl.reward}, flow regulariser "
                     f"{recipe.refl.regulariser} on {info['regulariser'] or 'nothing'}")
    else:
        from backend.train.method import ObjectivesMethod
        from backend.train.objectives import FlowMatching

        method = ObjectivesMethod([FlowMatching()])
        px = bundle.vae_factor
        if recipe.data.source == "winners":
            train, _, info = rated_pairs(project, recipe, bundle, log=reporter.log, split=False)
            h, w = train.winners.shape[-2:]
            batches = train.winner_batches(recipe.batch_size, recipe.seed, (w * px, h * px), bundle.default_alpha(w * px, h * px),
                                           empty=bundle.empty_prompt(), dropout=0.1)
            reporter.log(f"SFT on the winners of {info['train_judgements']} judgements")
        else:
            batches = dataset_batches(project, recipe, bundle, recipe.steps, reporter.log)
            info = {"dataset": recipe.data.dataset, "view": recipe.data.view}
            reporter.log(f"SFT (continued training) on {recipe.data.dataset}/{recipe.data.view}")
    # Flow-GRPO makes several updates per step (one per minibatch): a constant rate after warmup, as its reference code,
    # rather than a decay sized in steps; DPO makes one update per step and decays
    cfg = LoopConfig(steps=recipe.steps, lr=recipe.lr, weight_decay=0.0, warmup=min(20, recipe.steps // 10), ema=0.0, seed=recipe.seed,
                     schedule="cosine" if recipe.method == "dpo" else "constant",
                     grad_accum=accumulate, log_every=5 if recipe.method == "dpo" else 1, checkpoint_every=max(50, recipe.eval_every),
                     sample_every=recipe.sample_every, eval_every=recipe.eval_every, loss_bins=1, device="auto",
                     precision="bf16" if base_dtype is not None else "auto")
    trainer = Trainer(bundle, method, batches, cfg, run_dir, reporter, preview=preview, evaluate=evaluate)
    result = trainer.run(resume=resume)
    if result.state != "done":
        return {"state": result.state, "step": result.step}
    return save_tuned(project, recipe, bundle, trainer, method, info, evaluate, what, reporter, lora) | {"step": result.step}


def save_tuned(project: Project, recipe: AlignRecipe, bundle, trainer, method, info: dict[str, Any], evaluate, what: str, reporter: Any,
               lora: bool) -> dict[str, Any]:
    """The tuned weights as a model folder whose card records its lineage: parent, method, data, scores."""
    import copy

    net = trainer.sampling_model
    if lora:  # a whole model a user can load anywhere, plus the adapter alone in the diffusers LoRA format
        from backend.models.lora import merge_adapters, save_lora

        adapter_net = net
        net = copy.deepcopy(getattr(net, "module", net))
        merge_adapters(net)
    prefix = recipe.method
    name = recipe.name or f"{prefix}-{getattr(reporter, 'job_id', 0)}"
    report = evaluate.last if evaluate is not None else None
    card: dict[str, Any] = {"kind": "tuned", "method": METHOD_NAMES[recipe.method], "parent": recipe.model, "steps": recipe.steps, "lr": recipe.lr,
                            "lora_rank": recipe.lora_rank, "data": {k: v for k, v in info.items() if k != "rating_ids"},
                            "job": getattr(reporter, "job_id", None), "size": [recipe.sampler.width, recipe.sampler.height],
                            "sampler": recipe.sampler.model_dump()}
    if recipe.method == "dpo":
        card.update({"beta": recipe.beta, "heldout": method.last, "rater": recipe.rater})
    elif recipe.method in ("grpo", "refl"):
        card[recipe.method] = getattr(recipe, recipe.method).model_dump()
    else:
        card.update({"sft": recipe.data.model_dump(), "rater": recipe.rater})
    if report is not None:
        card["shapes_eval"] = {k: v for k, v in report.to_json().items() if k != "per_image"}
    folder = bundle.save(project.root / "models" / name, net=net, extra={"card": card})
    if lora:
        save_lora(adapter_net, folder / "lora", bundle.family)
    (folder / "card.json").write_text(json.dumps({**card, **({"rating_ids": info["rating_ids"]} if "rating_ids" in info else {})}, indent=2))
    model_id = register_model(project, folder, "tuned", name, recipe.model, card, reporter, evaluate.grid if evaluate is not None else None)
    said = (f"held-out implicit accuracy {method.last.get('implicit_accuracy', float('nan')):.3f}" if recipe.method == "dpo"
            else f"strict ShapesEval {report.overall:.3f}" if report is not None else "no evaluation")
    reporter.log(f"saved the {METHOD_NAMES[recipe.method]}-tuned model #{model_id} to {folder.relative_to(project.root)} (from {what}): {said}")
    out = {"state": "done", "model_id": model_id, "path": str(folder.relative_to(project.root)), "method": METHOD_NAMES[recipe.method],
           **{k: v for k, v in info.items() if k != "rating_ids"}}
    if recipe.method == "dpo":
        out["heldout"] = method.last
    if report is not None:
        out["shapes_eval"] = card["shapes_eval"]
    return out
