"""How forgiving is a VAE's latent space? ShapesEval of decoded latents, exact and perturbed.

A flow model that is not yet fitted does not hand the decoder a clean latent; this asks which
errors the decoder forgives. It measures what the detector reads back when fresh ShapesWorld
renders go through a VAE: the round trip (a perfect generator's ceiling), the latent blurred
3x3 (detail missing, as in an under-fitted sample) and the latent with Gaussian noise of 0.3
latent standard deviations (detail wrong but present).

Measured 2026-11-26 (64 px, 32 scenes per category). The shipped VAE: the round trip scores 1.0
on single objects and the noised latent 1.0, but the blurred latent 0.375 on single objects,
0.062 counting, 0.0 colour binding, 0.0 spatial, 0.25 background, close to the ShapesEval of
the demo model of the time (patch 2, 64 px, no shift: 0.438, 0.062, 0.0, 0.0, 0.031). A fine-tune with the blurred-latent term
(``signal-backend world train-vae --init resources/world/vae --blur-weight 1 --steps 1500 --lr
3e-4``) scores 0.938 single objects after the blur (round trip 1.0, PSNR 33.75 dB), yet that
demo recipe trained on it scored no better (0.28-0.34 single objects): the pretrained model's
blobs are not a blur the decoder could forgive, they are wrong shapes and counts in the latent.

Also printed: ``latent_roughness`` (backend/world/train_vae.py: mean squared difference of
neighbouring latent cells over the latent variance; about 0.1 for a smooth, image-like latent, 2
for white noise). Re-run 2026-11-27: shipped 0.644, blur fine-tune 1.055 (rougher: why it did not
help), scale-equivariance fine-tune 0.511, and a VAE trained from scratch with ``--anchor-weight
1 --steps 1500`` 0.116 (held-out PSNR 30.2 dB against 33.4; round trip: single 0.938, counting
0.812, spatial 0.719 at 64 px). A demo-style model trained on the anchored VAE (64 px, patch 4,
1400 steps) drew no mixed colours but scored 0.25 single objects against 0.34 on the shipped VAE.

    .venv/bin/python bench/vae_diffusability.py [VAE_FOLDER ...] [--size 64] [--per-category 32] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import REPO  # noqa: F401  (puts the repository on sys.path)


def perturbations(z, gen):
    import torch

    from backend.world.train_vae import blurred

    return {
        "round trip": z,
        "latent blur 3x3": blurred(z),
        "latent noise 0.3 sd": z + 0.3 * z.std() * torch.randn(z.shape, generator=gen),
    }


def main() -> None:
    import torch
    from diffusers import AutoencoderKL

    from backend.eval.shapes_eval import CATEGORIES, shapes_eval
    from backend.imaging import to_image, to_tensor
    from backend.world.generate import make_scene
    from backend.world.pretrained import load_detector, world_part
    from backend.world.render import render
    from backend.world.train_vae import latent_roughness

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vaes", nargs="*", type=Path, help="VAE folders (default: the shipped ShapesWorld VAE)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--per-category", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    detector = load_detector()
    scenes = [make_scene(5, i, cat, (args.size, args.size)) for cat in CATEGORIES for i in range(args.per_category)]
    x = torch.stack([to_tensor(render(s)) for s in scenes])
    result: dict = {"size": args.size, "per_category": args.per_category, "vaes": {}}
    for folder in args.vaes or [world_part("vae")]:
        vae = AutoencoderKL.from_pretrained(str(world_part("vae", folder)), local_files_only=True).eval()
        rows: dict = {}
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            rows["latent_roughness"] = round(latent_roughness(z), 3)
            print(f"{folder}  latent roughness {rows['latent_roughness']:.3f}", flush=True)
            for name, zz in perturbations(z, torch.Generator().manual_seed(0)).items():
                images = [to_image(im) for im in vae.decode(zz).sample]
                report = shapes_eval(images, scenes, detector)
                rows[name] = {k: round(v, 3) for k, v in report.categories.items()}
                print(f"{folder}  {name:<20} " + "  ".join(f"{k} {v:.3f}" for k, v in rows[name].items()), flush=True)
        result["vaes"][str(folder)] = rows
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
