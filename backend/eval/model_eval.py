"""Score a model on the ShapesEval prompt set: sample, detect, strict table, FD, a labelled grid.

One path for every place that evaluates a model (the trainer's periodic evaluation, the shipped
base's card, benches), so their figures are comparable: same prompts, same seeds (1000 + k),
same sampler settings recorded beside the result.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from PIL import Image, ImageDraw

from backend.models.family import ModelBundle
from backend.sample.euler import SampleSettings, generate

from .shapes_eval import EVAL_SEED_OFFSET, EvalPrompt, ShapesEvalReport, load_eval_prompts, shapes_eval, stratified_pairs


def eval_pairs(n: int | None = None, categories: tuple[str, ...] | None = None) -> list[tuple[EvalPrompt, int]]:
    """The first ``n`` (prompt, seed) pairs of the stratified order (all of them when ``n`` is None),
    optionally of some categories only."""
    return stratified_pairs([p for p in load_eval_prompts() if categories is None or p.category in categories], n)


def sample_pairs(bundle: ModelBundle, pairs: list[tuple[EvalPrompt, int]], settings: SampleSettings, net: torch.nn.Module | None = None) -> list[Image.Image]:
    return generate(bundle, [p.prompt for p, _ in pairs], [EVAL_SEED_OFFSET + s for _, s in pairs], settings, net=net)


def evaluate_model(bundle: ModelBundle, settings: SampleSettings, n: int | None = None, net: torch.nn.Module | None = None,
                   detector: Any = None, categories: tuple[str, ...] | None = None,
                   ) -> tuple[ShapesEvalReport, list[Image.Image], list[tuple[EvalPrompt, int]], dict[str, Any]]:
    """Strict ShapesEval of ``n`` stratified eval images (all when None); ``fd_to_renders`` adds the FD."""
    from backend.world.pretrained import load_detector

    pairs = eval_pairs(n, categories)
    images = sample_pairs(bundle, pairs, settings, net)
    report = shapes_eval(images, [p.scene for p, _ in pairs], detector or load_detector(), [f"{p.id}_s{s}" for p, s in pairs])
    return report, images, pairs, {"sampler": asdict(settings), "images": len(images)}


def fd_to_renders(images: list[Image.Image], pairs: list[tuple[EvalPrompt, int]]) -> float:
    """FD between generated images and true renders of the same prompts (one render per image)."""
    from backend.eval.fd import frechet_distance
    from backend.world.generate import PlacementError, place, scene_rng
    from backend.world.pretrained import load_encoder
    from backend.world.render import render

    real = []
    for k, (p, s) in enumerate(pairs):
        for attempt in range(50):
            try:
                real.append(render(place(p.scene, scene_rng(EVAL_SEED_OFFSET + s, k * 50 + attempt, "fd"))))
                break
            except PlacementError:
                continue
    enc = load_encoder()
    size = images[0].size
    return frechet_distance(enc.pooled(images).numpy(), enc.pooled([r.resize(size) for r in real]).numpy())


def labelled_grid(images: list[Image.Image], prompts: list[str], passed: list[bool] | None = None, cols: int = 8, scale: int = 2) -> Image.Image:
    """Each sample with its prompt under it; with ``passed``, a green frame when it passes strictly, red when not."""
    w, h = images[0].size
    cw, ch = w * scale + 8, h * scale + 30
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cw, rows * ch), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (im, prompt) in enumerate(zip(images, prompts)):
        x, y = (i % cols) * cw, (i // cols) * ch
        if passed is not None:
            draw.rectangle([x + 1, y + 1, x + cw - 2, y + h * scale + 6], outline=(40, 160, 60) if passed[i] else (200, 40, 40), width=3)
        sheet.paste(im.resize((w * scale, h * scale), Image.NEAREST), (x + 4, y + 4))
        words = prompt.split()
        draw.text((x + 3, y + h * scale + 7), " ".join(words[:4]), fill=(0, 0, 0))
        if len(words) > 4:
            draw.text((x + 3, y + h * scale + 17), " ".join(words[4:8]), fill=(0, 0, 0))
    return sheet
