"""Images redrawn by the shipped base from part-way noise (SDEdit), for the reward prior's ``base_share``.

The prior learns to read captions from renders; the base's pictures have its own strokes, soft edges and
slight distortions. Redrawing a render from t = 0.4 for its own caption gives the base's look on a scene
whose promises are still known, so the prior sees generated pictures with true labels. At 0.6 the base
began to add and drop objects (a grid of 16 pairs, 2026-12-07), which would make a broken copy's label wrong.
"""

from __future__ import annotations

import torch
from PIL import Image

from backend.imaging import to_image, to_tensor
from backend.models.family import ModelBundle, load_model
from backend.paths import shipped_base_dir
from backend.sample.euler import SampleSettings, redraw_latents


@torch.no_grad()
def redraw_pairs(images: list[Image.Image], captions: list[str], which: list[bool], t_start: float, seed: int,
                 bundle: ModelBundle | None = None, batch: int = 64) -> list[Image.Image]:
    """The chosen images redrawn for their own captions from ``t_start`` by ``bundle`` (the shipped base when
    None), at cfg 3 on its 20-step schedule; the rest unchanged. Images come in pairs side by side (2i, 2i+1:
    a scene and its broken copy) and a pair shares its noise, so it still differs only in the broken promise."""
    bundle = bundle if bundle is not None else load_model(shipped_base_dir())
    settings = SampleSettings(width=images[0].width, height=images[0].height, steps=20, cfg=3.0)
    idx = [i for i, w in enumerate(which) if w]
    out = list(images)
    for k in range(0, len(idx), batch):
        part = idx[k: k + batch]
        z = bundle.encode_images(torch.stack([to_tensor(images[i]) for i in part]))
        noise = torch.cat([torch.randn(1, *z.shape[1:], generator=torch.Generator().manual_seed(seed * 100_003 + i // 2)) for i in part])
        x = redraw_latents(bundle, z, bundle.encode_prompts([captions[i] for i in part]), noise, t_start, settings)
        for i, y in zip(part, bundle.decode_latents(x).clamp(-1, 1)):
            out[i] = to_image(y)
    return out
