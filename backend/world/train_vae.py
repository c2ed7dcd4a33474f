"""Train the ShapesWorld VAE: a diffusers ``AutoencoderKL`` (4x down, 4 latent channels).

Deterministic (fixed seeds, fixed thread count), CPU, a few minutes. Writes the model in the
diffusers layout (so ``AutoencoderKL.from_pretrained`` reads it) plus ``card.json`` with the
data seed, steps, held-out PSNR and the scaling/shift factors measured on the data.

Two optional terms, for experiments on how easy the latent is to diffuse (figures, commands and
what a demo model trained on each scored: bench/vae_diffusability.py and its results file):

- ``blur_weight``: the decoder must also rebuild the image from a 3x3-blurred latent, so a latent
  missing detail still decodes (in the spirit of Skorokhodov et al. 2025). It made the latent
  rougher, not smoother, and the demo model did not improve.
- ``anchor_weight``: latent channels 0-2 are tied to the image average-pooled to the latent grid,
  so colour lives in the smooth part of the latent and channel 3 carries sub-cell detail. Left
  free, this small autoencoder keeps colour in checkerboard-like patterns inside objects, and a
  small error in a generated latent decodes to mixed colours. The anchored latent is smooth and
  its samples lose the mixed colours, but the 64 px round trip and the PSNR drop and the demo
  score did not rise, so the shipped VAE was trained without either term.

``latent_roughness`` (in each card this writes) measures the property both terms are about. ``init``
fine-tunes an existing VAE folder instead of starting from random weights.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from .arrays import psnr, random_crops, render_scenes, to_tensor
from .fit import fit
from .pretrained import vae_downsampling, world_part

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(24, 48, 48),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
    mid_block_add_attention=False,
)


def evaluate_vae(vae: AutoencoderKL, seed: int = 10_001, n: int = 240) -> dict:
    """Held-out PSNR on fresh renders (a world seed never used in training), per resolution."""
    images, _ = render_scenes(seed, 0, n)
    by_res: dict[str, list[float]] = {}
    latents = []
    roughness = []
    vae.eval()
    with torch.no_grad():
        for img in images:
            x = to_tensor(img)[None]
            z = vae.encode(x).latent_dist.mode()
            latents.append(z.flatten())
            roughness.append(latent_roughness(z))
            rec = vae.decode(z).sample
            by_res.setdefault(f"{img.width}x{img.height}", []).append(float(psnr(rec, x)[0]))
    allz = torch.cat(latents)
    values = [v for vs in by_res.values() for v in vs]
    return {
        "psnr_mean": sum(values) / len(values),
        "psnr_min": min(values),
        "psnr_by_resolution": {k: round(sum(v) / len(v), 2) for k, v in sorted(by_res.items())},
        "latent_mean": float(allz.mean()),
        "latent_std": float(allz.std()),
        "latent_roughness": sum(roughness) / len(roughness),
        "eval_seed": seed,
        "eval_images": n,
    }


def blurred(z: torch.Tensor) -> torch.Tensor:
    """The latent with each position averaged over its 3x3 neighbourhood (edges over what exists)."""
    return torch.nn.functional.avg_pool2d(z, 3, 1, 1, count_include_pad=False)


def latent_roughness(z: torch.Tensor) -> float:
    """Mean squared difference of neighbouring latent cells over the latent variance: about 0.1
    for a smooth, image-like latent, 2 for white noise. Rough latents are hard to diffuse."""
    dh = (z[..., 1:, :] - z[..., :-1, :]).pow(2).mean()
    dw = (z[..., :, 1:] - z[..., :, :-1]).pow(2).mean()
    return float((dh + dw) / 2 / z.var().clamp_min(1e-12))


def anchor_error(vae: AutoencoderKL, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """How far latent channels 0-2 are from the image average-pooled to the latent grid."""
    return ((mean[:, :3] - torch.nn.functional.avg_pool2d(x, vae_downsampling(vae))) ** 2).mean()


def train_vae(out: Path, steps: int = 3000, batch: int = 16, crop: int = 32, lr: float = 1e-3, seed: int = 0, pool: int = 6000,
              blur_weight: float = 0.0, anchor_weight: float = 0.0, init: Path | None = None, eval_images: int = 240, log=print) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    images, _ = render_scenes(seed, 0, pool)
    log(f"[vae] rendered {pool} training scenes in {time.perf_counter() - t0:.1f} s")
    # world_part names a missing or incomplete --init folder in its error
    vae = AutoencoderKL.from_pretrained(str(world_part("vae", init)), local_files_only=True) if init else AutoencoderKL(**VAE_CONFIG)
    vae.train()

    def loss_at(step: int) -> tuple[torch.Tensor, str]:
        x = random_crops(images, batch, crop, gen)
        post = vae.encode(x).latent_dist
        z = post.sample(generator=gen)
        rec = vae.decode(z).sample
        mse = ((rec - x) ** 2).mean()
        loss = mse + 0.1 * (rec - x).abs().mean() + 1e-6 * post.kl().mean()
        text = f"mse {mse.item():.5f} psnr {10 * math.log10(4 / max(mse.item(), 1e-12)):.2f} dB"
        if blur_weight:
            blur_mse = ((vae.decode(blurred(z)).sample - x) ** 2).mean()
            loss = loss + blur_weight * blur_mse
            text += f" blurred-latent mse {blur_mse.item():.5f}"
        if anchor_weight:
            anchor = anchor_error(vae, x, post.mean)
            loss = loss + anchor_weight * anchor
            text += f" anchor mse {anchor.item():.5f}"
        return loss, text

    fit(vae.parameters(), steps, loss_at, lr=lr, floor=0.02, clip=1.0, name="vae", log=log)
    train_time = time.perf_counter() - t0
    stats = evaluate_vae(vae, n=eval_images)  # also the latent statistics the scaling factors come from
    vae.register_to_config(scaling_factor=1.0 / stats["latent_std"], shift_factor=stats["latent_mean"])
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out)
    card = {
        "model": "ShapesWorld VAE (diffusers AutoencoderKL)",
        "params": sum(p.numel() for p in vae.parameters()),
        "data_seed": seed,
        "steps": steps,
        "batch": batch,
        "blur_weight": blur_weight,
        "anchor_weight": anchor_weight,
        "init": str(init) if init else None,
        "crop": crop,
        "train_seconds": round(train_time, 1),
        "scaling_factor": 1.0 / stats["latent_std"],
        "shift_factor": stats["latent_mean"],
        **{k: v for k, v in stats.items() if k not in ("latent_mean", "latent_std")},
        "script": "signal-backend world train-vae",
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"[vae] held-out PSNR {stats['psnr_mean']:.2f} dB (min {stats['psnr_min']:.2f}); saved to {out}")
    return card
