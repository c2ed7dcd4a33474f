"""Reflow, then InstaFlow's one-step distillation (METHODS.md §4), on the one loop.

Couplings: each (noise, prompt) is integrated by the frozen teacher's ODE with CFG to its sample
x̂0 (``make_couplings``: cached per chunk under the project's cache, so a killed run draws only
what is missing). Reflow trains the student's velocity on the straight lines between the coupled
pairs, ``x_t = (1 - t) x̂0 + t eps`` with target ``eps - x̂0`` at times drawn like training's
(logit-normal, shifted); the teacher's guidance is folded in, the student samples at cfg 1. For a
one-step student the distillation phase follows: ``x = eps - v(eps, 1)`` regresses onto x̂0,
first with L2 on latents, then with a perceptual distance on decoded images (``perceptual.py``:
LPIPS when its weights are cached locally, otherwise the world encoder's features — the log and
the card say which). Phases follow the step count, so a resumed run continues in the right one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from backend.flow.timesteps import sample_t, shift
from backend.models.family import PromptEmbeds

from .curriculum import batch_generator
from .few_step import mix
from .method import Method
from .objectives.base import Batch


@dataclass
class Couplings:
    noise: torch.Tensor  # (N, C, h, w)
    x0: torch.Tensor  # the teacher's samples from that noise
    prompts: list[str]


def make_couplings(bundle, prompts: list[str], seed: int, settings, folder: Path, log: Callable[[str], None],
                   progress: Callable[[int, int], None], chunk: int = 32) -> Couplings:
    """The teacher's (noise, sample) pairs for ``prompts``, drawn in chunks saved under ``folder``
    (a damaged or missing chunk is drawn again; the others are read)."""
    from backend.sample.euler import initial_noise, sample_latents

    folder.mkdir(parents=True, exist_ok=True)
    f = bundle.vae_factor
    shape = (bundle.vae.config.latent_channels, settings.height // f, settings.width // f)
    noise, x0, drawn = [], [], 0
    for start in range(0, len(prompts), chunk):
        part = prompts[start: start + chunk]
        file = folder / f"chunk-{start // chunk:05d}.safetensors"
        try:
            got = load_file(str(file))
            assert got["x0"].shape == (len(part), *shape)
        except Exception:  # noqa: BLE001 - missing or damaged: draw it
            seeds = [seed * 1_000_003 + start + i for i in range(len(part))]
            got = {"noise": initial_noise(seeds, *shape), "x0": sample_latents(bundle, bundle.encode_prompts(part), seeds, settings).cpu()}
            save_file(got, str(file), metadata={"prompts": json.dumps(part)})
            drawn += len(part)
        noise.append(got["noise"])
        x0.append(got["x0"])
        progress(min(start + chunk, len(prompts)), len(prompts))
    log(f"{len(prompts)} teacher couplings ({drawn} drawn now, {len(prompts) - drawn} from the cache {folder.name})")
    return Couplings(torch.cat(noise), torch.cat(x0), prompts)


def couplings_key(fingerprint: str, prompts: list[str], settings, seed: int) -> str:
    return hashlib.sha1(json.dumps([fingerprint, prompts, settings.__dict__, seed], sort_keys=True, default=str).encode()).hexdigest()[:16]


class CouplingBatches:
    """The loop's batches from the couplings: the teacher's samples as latents, their noise in extras."""

    def __init__(self, couplings: Couplings, embeds: PromptEmbeds, batch_size: int, size: tuple[int, int], alpha: float, seed: int):
        self.c, self.embeds, self.batch_size, self.size, self.alpha, self.seed = couplings, embeds, batch_size, size, alpha, seed

    def __call__(self, step: int, micro: int = 0, rank: int = 0) -> Batch:
        gen = batch_generator(self.seed, step, micro, rank)
        idx = torch.randint(len(self.c.prompts), (self.batch_size,), generator=gen)
        e = self.embeds
        prompt = PromptEmbeds(e.states[idx], e.pooled[idx], e.lengths[idx])
        return Batch(self.c.x0[idx], prompt, self.size[0], self.size[1], self.alpha, gen, {"noise": self.c.noise[idx]})


@dataclass
class ReflowSettings:
    reflow_steps: int = 300
    distill_steps: int = 0  # the one-step phase (0: reflow only)
    l2_share: float = 0.5  # of the distillation phase, the L2 part before the perceptual distance


class ReflowInstaFlow(Method):
    name = "reflow"

    def __init__(self, settings: ReflowSettings, distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 distance_on: Callable[[torch.device], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None):
        """``distance``: the perceptual distance as is; or ``distance_on(device)`` makes it on the run's device at first use."""
        self.s = settings
        self.distance = distance
        self.distance_on = distance_on

    def phase(self, k: int) -> str:
        """The phase of 0-based step ``k``: "reflow", "l2" or "perceptual"."""
        if k < self.s.reflow_steps:
            return "reflow"
        perceptual = self.distance is not None or self.distance_on is not None
        return "l2" if k - self.s.reflow_steps < round(self.s.l2_share * self.s.distill_steps) or not perceptual else "perceptual"

    def step(self, run) -> None:
        k = run.step - 1
        batch = run.batch(0)
        x0, eps, prompt, gen = batch.latents, batch.extras["noise"].to(run.device, batch.latents.dtype), batch.prompt, batch.generator
        phase = self.phase(k)
        with run.accumulate():
            with run.autocast():
                if phase == "reflow":
                    t = shift(sample_t("logit_normal", x0.shape[0], gen), batch.alpha).to(run.device)
                    v = run.bundle.velocity(mix(x0, eps, t), t, prompt, run.model)
                    per = ((v.float() - (eps - x0).float()) ** 2).flatten(1).mean(1)
                else:
                    t = torch.ones(x0.shape[0], device=run.device)
                    x = eps - run.bundle.velocity(eps, t, prompt, run.model)  # the one-step student from pure noise
                    if phase == "l2":
                        per = ((x.float() - x0.float()) ** 2).flatten(1).mean(1)
                    else:
                        if self.distance is None:
                            self.distance = self.distance_on(run.device)  # type: ignore[misc]
                        with torch.no_grad():
                            target = run.bundle.decode_latents(x0)
                        per = self.distance(run.bundle.decode_latents(x).float(), target.float())  # type: ignore[misc]
                loss = per.mean()
            run.update("main", loss)
        run.log("loss", loss.detach())
        run.log(f"loss/{phase}", loss.detach())
        run.log("reflow/phase", {"reflow": 0.0, "l2": 1.0, "perceptual": 2.0}[phase])
        run.log_by_t(t, per.detach())
        run.count_images(batch)


def straightness(bundle, net, couplings: Couplings, embeds: PromptEmbeds, alpha: float, n: int = 32, points: int = 8) -> float:
    """How far the velocity field is from the straight line to the coupled sample: mean over points
    of ||v(x_t, t) - (eps - x̂0)||² / ||eps - x̂0||² (0 = perfectly straight paths)."""
    with torch.no_grad():
        idx = torch.arange(min(n, len(couplings.prompts)))
        x0, eps = couplings.x0[idx], couplings.noise[idx]
        prompt = PromptEmbeds(embeds.states[idx], embeds.pooled[idx], embeds.lengths[idx])
        device = next(net.parameters()).device
        x0, eps, prompt = x0.to(device), eps.to(device), prompt.to(device)
        total = 0.0
        for t0 in torch.linspace(0.1, 0.9, points):
            t = shift(torch.full((len(idx),), float(t0)), alpha).to(device)
            v = bundle.velocity(mix(x0, eps, t), t, prompt, net)
            total += float(((v - (eps - x0)) ** 2).mean() / ((eps - x0) ** 2).mean())
        return total / points

