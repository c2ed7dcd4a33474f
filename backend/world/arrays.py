"""ShapesWorld renders as tensors, for the scripts that train the world's own networks.

Rendering is cheap (about a millisecond per scene), so training scripts draw fresh scenes
instead of reading files; held-out sets use a different world seed than training sets.
"""

from __future__ import annotations

import torch
from PIL import Image

from backend.imaging import to_image, to_tensor

from .generate import make_scene
from .render import render
from .spec import Scene

__all__ = ["psnr", "random_crops", "render_scenes", "square_batch", "to_image", "to_tensor"]


def render_scenes(seed: int, start: int, n: int, size: tuple[int, int] | None = None, category: str | None = None) -> tuple[list[Image.Image], list[Scene]]:
    """Scenes ``start..start+n`` of world ``seed`` and their renders at native resolution."""
    scenes = [make_scene(seed, i, category=category, resolution=size) for i in range(start, start + n)]
    return [render(s) for s in scenes], scenes


def square_batch(images: list[Image.Image], side: int) -> torch.Tensor:
    """Resize (squash) every image to side x side, as the detector and encoder see them."""
    return torch.stack([to_tensor(im.resize((side, side), Image.BILINEAR)) for im in images])


def random_crops(images: list[Image.Image], n: int, side: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random side x side crops from random images (all images must be at least side x side)."""
    out = []
    for _ in range(n):
        im = images[int(torch.randint(len(images), (1,), generator=gen))]
        w, h = im.size
        x = int(torch.randint(w - side + 1, (1,), generator=gen))
        y = int(torch.randint(h - side + 1, (1,), generator=gen))
        out.append(to_tensor(im.crop((x, y, x + side, y + side))))
    return torch.stack(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for tensors in [-1, 1] (measured on the [0, 1] scale)."""
    mse = (((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)
