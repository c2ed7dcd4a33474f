"""The ``personalize`` stage: DreamBooth on a handful of subject images, through the one loop.

The subject's images come from a dataset (the demo imports the ShapesWorld subject as 'subject'),
captioned with the identifier ("a sks circle"). With prior preservation on, the frozen base first
draws the class images for the class prompt; they are cached under ``cache/class_images`` keyed by
the model, prompt, sampler and count, so a second run reuses them. Training is a LoRA on the
family's declared targets (or every weight); the result is the adapter alone in the diffusers LoRA
format (``pytorch_lora_weights.safetensors``, alpha in its metadata) plus ``card.json`` naming the
parent, so it loads as "parent + adapter" everywhere a model is named, and optionally a fused
whole model. The base's figures (subject fidelity, class preservation) are measured at the start
on the same seeds, so the card holds both sides of the comparison.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from backend.recipes.personalize import PersonalizeRecipe
from backend.store import Project

from .lineage import register_model


def subject_images(project: Project, recipe: PersonalizeRecipe) -> list[Image.Image]:
    """The subject's reference images from the recipe's dataset view."""
    from backend.data.view import load_view

    items = load_view(project, recipe.dataset, recipe.view)
    if not items:
        raise ValueError(f"dataset {recipe.dataset!r} has no images in view {recipe.view!r}: import the subject's pictures first")
    if len(items) < 3:
        raise ValueError(f"dataset {recipe.dataset!r} has {len(items)} image(s); DreamBooth needs 3-5 pictures of the subject at least")
    return [Image.open(io.BytesIO(project.blob_path(it.hash, it.ext).read_bytes())).convert("RGB") for it in items]


def model_fingerprint(folder: Path) -> str:
    """Identity of a model folder's weights for cache keys: names, sizes and modification times
    (hashing gigabytes of a real model on every run would cost more than the class images)."""
    parts = []
    for f in sorted(folder.rglob("*.safetensors")):
        st = f.stat()
        parts.append(f"{f.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def class_images(project: Project, recipe: PersonalizeRecipe, bundle, log, progress) -> list[Image.Image]:
    """The frozen base's images for the class prompt: from the cache when a run already drew them."""
    from backend.sample.euler import generate, settings_from
    from backend.train.resolve import locate

    s = recipe.sampler
    prompt = recipe.fill(recipe.prior.class_prompt)
    key = hashlib.sha1(json.dumps([model_fingerprint(locate(project, recipe.model)), prompt, s.model_dump(), recipe.seed]).encode()).hexdigest()[:16]
    folder = project.root / "cache" / "class_images" / key
    n = recipe.prior.class_images
    have = sorted(folder.glob("*.png")) if folder.exists() else []
    images = []
    for f in have[:n]:
        try:
            images.append(Image.open(f).convert("RGB"))
        except OSError:
            break  # a damaged cache file: draw from here on again
    if len(images) == n:
        log(f"{n} class images for {prompt!r} from the cache ({folder.relative_to(project.root)})")
        return images
    folder.mkdir(parents=True, exist_ok=True)
    settings = settings_from(s)
    log(f"drawing {n - len(images)} class images for {prompt!r} with the frozen base ({s.steps} steps, cfg {s.cfg:g})")
    chunk = 16
    for start in range(len(images), n, chunk):
        seeds = [recipe.seed * 100_003 + k for k in range(start, min(n, start + chunk))]
        for k, img in zip(range(start, start + len(seeds)), generate(bundle, [prompt] * len(seeds), seeds, settings)):
            img.save(folder / f"{k:05d}.png")
            images.append(img)
        progress(len(images), n)
    return images


def encode(bundle, images: list[Image.Image], size: int) -> torch.Tensor:
    from backend.world.arrays import square_batch

    with torch.no_grad():
        return torch.cat([bundle.encode_images(square_batch(images[i: i + 64], size)).cpu() for i in range(0, len(images), 64)])


def run(project: Project, recipe: PersonalizeRecipe, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.eval.subject_eval import SubjectEval
    from backend.sample.euler import settings_from
    from backend.train.dreambooth import CaptionedLatents, DreamBooth
    from backend.train.loop import LoopConfig, Trainer
    from backend.train.pretrain import make_preview
    from backend.train.resolve import refuse_distilled, resolve_model

    torch.manual_seed(recipe.seed)
    s = recipe.sampler
    if s.width != s.height:
        raise ValueError("personalize trains at a square size for now: set sampler.width = sampler.height")
    refuse_distilled(project, recipe.model, "personalization",
                     "personalize its teacher {parent!r}, then distil the personalized model (Distill takes it as a teacher)")
    bundle, what = resolve_model(project, recipe.model, merge=True)
    references = subject_images(project, recipe)
    instance_prompt = recipe.fill(recipe.instance_prompt)
    class_prompt = recipe.fill(recipe.prior.class_prompt)
    reporter.log(f"personalizing {what} on {len(references)} images of {instance_prompt!r} (class {class_prompt!r}), prior "
                 f"{recipe.prior.mode}" + (f" x {recipe.prior.weight:g}" if recipe.prior.mode != "none" else ""))
    settings = settings_from(s)
    evaluate = SubjectEval(bundle, settings, references, instance_prompt, [recipe.fill(p) for p in recipe.context_prompts], class_prompt,
                           recipe.token, recipe.class_noun, recipe.eval_images, class_eval_images=recipe.class_eval_images,
                           seed=5000 + recipe.seed)
    base_file = run_dir / "base_report.json"
    if resume and base_file.exists():
        base = json.loads(base_file.read_text())
    else:
        reporter.log("measuring the base on the same seeds (subject fidelity, prompt fidelity, class preservation)")
        base = evaluate.measure().to_json()
        run_dir.mkdir(parents=True, exist_ok=True)
        base_file.write_text(json.dumps(base, indent=2))
        if evaluate.grid is not None:
            evaluate.grid.save(run_dir / "base_samples.png")
    reporter.metrics(0, {f"subject/base_{k}": base[k] for k in ("fidelity", "shown", "context", "leakage", "class_strict")})
    class_set = class_prompt_embeds = None
    with torch.no_grad():
        inst = CaptionedLatents(encode(bundle, references, s.width), bundle.encode_prompts([instance_prompt]).to(torch.device("cpu")))
        if recipe.prior.mode != "none":
            class_prompt_embeds = bundle.encode_prompts([class_prompt]).to(torch.device("cpu"))
    if recipe.prior.mode == "class_images":
        images = class_images(project, recipe, bundle, reporter.log, lambda k, n: (reporter.progress(k, n), reporter.log(f"class images {k}/{n}")))
        class_set = CaptionedLatents(encode(bundle, images, s.width), class_prompt_embeds)
    lora = recipe.lora.rank > 0
    base_dtype = None
    if lora:
        from backend.models.lora import add_lora, base_dtype_for

        base_dtype = base_dtype_for(recipe.lora.base_dtype, bundle.family)
        add_lora(bundle.net, bundle.family, rank=recipe.lora.rank, alpha=recipe.lora.alpha, dropout=recipe.lora.dropout, base_dtype=base_dtype)
        if base_dtype is not None:
            reporter.log(f"frozen weights in {str(base_dtype).removeprefix('torch.')}, the adapter in float32, under bf16 autocast")
    method = DreamBooth(inst, recipe.prior.mode, recipe.prior.weight, recipe.batch_size, recipe.seed, lora, class_set=class_set,
                        class_prompt=class_prompt_embeds)
    preview = make_preview(bundle, recipe.preview_section(), reporter) if recipe.sample_every else None
    cfg = LoopConfig(steps=recipe.steps, lr=recipe.lr, weight_decay=1e-2 if not lora else 0.0, warmup=min(20, recipe.steps // 10),
                     ema=recipe.ema, seed=recipe.seed, schedule="constant", log_every=5, checkpoint_every=max(50, recipe.eval_every),
                     sample_every=recipe.sample_every, eval_every=recipe.eval_every, loss_bins=8, device="auto",
                     precision="bf16" if base_dtype is not None else "auto")
    trainer = Trainer(bundle, method, lambda *a: None, cfg, run_dir, reporter, preview=preview, evaluate=evaluate)
    result = trainer.run(resume=resume)
    if result.state != "done":
        return {"state": result.state, "step": result.step}
    return save_personalized(project, recipe, bundle, trainer, evaluate, base, what, reporter, lora, len(references)) | {"step": result.step}


def save_personalized(project: Project, recipe: PersonalizeRecipe, bundle, trainer, evaluate, base: dict[str, Any], what: str,
                      reporter: Any, lora: bool, n_refs: int) -> dict[str, Any]:
    """The adapter (diffusers LoRA format) with a card naming its parent; the fused model when asked;
    a full fine-tune as a whole model folder."""
    import copy

    from backend.models.lora import merge_adapters, save_lora

    report = evaluate.last.to_json() if evaluate.last is not None else None
    name = recipe.name or f"{recipe.token}-{recipe.class_noun}-{getattr(reporter, 'job_id', 0)}"
    folder = project.root / "models" / name
    net = trainer.sampling_model
    card: dict[str, Any] = {"kind": "personalized", "method": "dreambooth" + ("-lora" if lora else ""), "parent": recipe.model.rstrip("/"),
                            "token": recipe.token, "class_noun": recipe.class_noun, "instance_prompt": recipe.fill(recipe.instance_prompt),
                            "class_prompt": recipe.fill(recipe.prior.class_prompt), "prior": recipe.prior.model_dump(),
                            "lora": recipe.lora.model_dump() if lora else None, "steps": recipe.steps, "lr": recipe.lr,
                            "subject": {"dataset": recipe.dataset, "view": recipe.view, "images": n_refs}, "job": getattr(reporter, "job_id", None),
                            "size": [recipe.sampler.width, recipe.sampler.height], "sampler": recipe.sampler.model_dump(),
                            "context_prompts": [recipe.fill(p) for p in recipe.context_prompts], "subject_eval": report, "base_subject_eval": base,
                            "fidelity_ceiling": round(evaluate.ceiling, 4)}
    if lora:
        tmp = folder.with_name(folder.name + ".partial")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        weights = save_lora(net, tmp, bundle.family)
        card["adapter_bytes"] = weights.stat().st_size
        if recipe.fused:
            fused = copy.deepcopy(getattr(net, "module", net))
            merge_adapters(fused)
            bundle.save(tmp / "fused", net=fused, extra={"card": {**card, "kind": "personalized-fused"}})
        (tmp / "card.json").write_text(json.dumps(card, indent=2))
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        tmp.rename(folder)
    else:
        bundle.save(folder, net=net, extra={"card": card})
        (folder / "card.json").write_text(json.dumps(card, indent=2))
    model_id = register_model(project, folder, "personalized", name, recipe.model, card, reporter, evaluate.grid)
    if report is not None:
        reporter.log(f"saved personalization #{model_id} to {folder.relative_to(project.root)} (from {what}): subject fidelity "
                     f"{report['fidelity']:.3f} (base {base['fidelity']:.3f}, references {evaluate.ceiling:.3f}), subject shown {report['shown']:.2f}, "
                     f"context {report['context']:.2f} (base {base['context']:.2f}), class strict {report['class_strict']:.3f} "
                     f"(base {base['class_strict']:.3f}), leakage {report['leakage']:.2f}"
                     + (f", adapter {card['adapter_bytes'] / 1024:.0f} KiB" if lora else ""))
    return {"state": "done", "model_id": model_id, "path": str(folder.relative_to(project.root)), "subject_eval": report, "base_subject_eval": base,
            **({"adapter_bytes": card["adapter_bytes"]} if lora else {})}
