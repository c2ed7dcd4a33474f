"""The studio's training step against a reference written the way diffusers' example scripts do it.

Reference (train_text_to_image / SD3 DreamBooth style): every step it reads the batch's images,
encodes them with the VAE (sampling the posterior) and the captions with the text encoder,
draws logit-normal timesteps, and takes an eager AdamW step. Studio: the same model, batch,
density and optimizer through the real ``Trainer`` with its content-addressed caches.
Both run here, in one process, one after the other; the report is the ratio.

    .venv/bin/python bench/train_step.py [--steps 40] [--batch 32] [--size 64] [--patch 4] [--preset small]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import Collect, scratch_project


def reference_steps(project: Path, preset: str, batch: int, size: int, steps: int, patch: int = 2, seed: int = 0) -> list[float]:
    from PIL import Image

    from backend.data.buckets import fit_to_bucket
    from backend.data.view import load_view
    from backend.imaging import to_tensor
    from backend.models.family import build_embedded
    from backend.store import Project

    torch.manual_seed(seed)
    bundle = build_embedded(preset, patch=patch, seed=seed)
    net = bundle.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    with Project.open(project) as proj:
        items = load_view(proj, "shapesworld", "all")
        paths = [it.path(proj) for it in items]
    captions = [it.caption for it in items]
    gen = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        idx = torch.randint(len(items), (batch,), generator=gen).tolist()
        pixels = torch.stack([to_tensor(fit_to_bucket(Image.open(paths[i]).convert("RGB"), (size, size))) for i in idx])
        with torch.no_grad():
            z = bundle.vae.encode(pixels).latent_dist.sample()
            z = (z - bundle.shift_factor) * bundle.scaling_factor
            prompt = bundle.encode_prompts([captions[i] for i in idx])
            prompt.lengths = None  # as in diffusers' scripts: the text stays padded to the encoder's length
        u = torch.sigmoid(torch.randn(batch, generator=gen))
        noise = torch.randn(z.shape, generator=gen)
        tt = u.view(-1, 1, 1, 1)
        x_t = (1 - tt) * z + tt * noise
        v = bundle.velocity(x_t, u, prompt, net)
        loss = ((v - (noise - z)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def studio_steps(project: Path, preset: str, batch: int, size: int, steps: int, patch: int = 2) -> tuple[list[float], float]:
    from backend.data.view import load_view
    from backend.recipes import loads_recipe
    from backend.store import Project
    from backend.train.curriculum import CurriculumData
    from backend.train.loop import Trainer
    from backend.train.objectives import FlowMatching
    from backend.train.pretrain import build_bundle, loop_config

    recipe = loads_recipe(f"""
kind = "pretrain"
[data]
dataset = "shapesworld"
view = "all"
[model]
size = "{preset}"
patch = {patch}
[allocation.shift]
kind = "none"
[[curriculum]]
steps = {steps}
buckets = [[{size}, {size}]]
[optim]
batch_size = {batch}
warmup = 0
ema = 0.999
[schedule]
log_every = 1
checkpoint_every = 100000
sample_every = 100000
""")
    rep = Collect()
    with Project.open(project) as proj:
        bundle = build_bundle(recipe)
        t0 = time.perf_counter()
        data = CurriculumData(proj, recipe, bundle, load_view(proj, "shapesworld", "all"), log=rep.log)
        cache_s = time.perf_counter() - t0
        trainer = Trainer(bundle, [FlowMatching(recipe.allocation.timesteps)], data, loop_config(recipe), Path(tempfile.mkdtemp()), rep)
        trainer.run(resume=False)
    return [v for _, v in rep.series("step_s")], cache_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    project = scratch_project(args.images, (args.size, args.size))
    warm = 5
    ref = reference_steps(project, args.preset, args.batch, args.size, args.steps + warm, args.patch)[warm:]
    ours, cache_s = studio_steps(project, args.preset, args.batch, args.size, args.steps + warm, args.patch)
    ours = ours[warm:]
    r_med, o_med = statistics.median(ref), statistics.median(ours)
    result = {
        "device": "cpu", "threads": torch.get_num_threads(), "preset": args.preset, "batch": args.batch, "size": args.size, "patch": args.patch, "steps": args.steps,
        "reference_step_s": round(r_med, 4), "studio_step_s": round(o_med, 4), "speedup": round(r_med / o_med, 2),
        "studio_cache_build_s": round(cache_s, 2), "images": args.images,
        "break_even_steps": round(cache_s / max(1e-9, r_med - o_med), 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
