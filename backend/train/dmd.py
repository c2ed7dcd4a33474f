"""DMD2 in flow form (METHODS.md §4), on the one loop.

A few-step generator (initialised from the teacher; at each point of its schedule it jumps to x0)
is matched to the teacher's output *distribution*: its sample x is re-noised to a random t, the
frozen teacher with CFG gives x0_real, a fake-score network trained continuously on the
generator's samples (the ordinary flow loss, ``fake_updates`` updates per generator update, its own
optimizer) gives x0_fake, and the generator descends along
``g = (x0_fake - x0_real) / mean|x - x0_real|`` through the surrogate ``½ ||x - sg(x - g)||²``.
When the fake and real scores agree, g is zero and the generator stops: nothing else pulls it.
Optionally (``gan_weight`` > 0) a GAN head on the fake network's features (``critic.py``) adds a
non-saturating adversarial term against re-noised data. The fake network is a second full model
(with its own AdamW state): the estimate counts it. The teacher is never checkpointed; the fake
network, its head and both optimizers are, so a killed run resumes on the same trajectory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backend.models.family import PromptEmbeds
from backend.sample.sde import guided_velocity

from .consistency import consistency_fn
from .critic import FeatureCritic, FeatureTap, separation
from .few_step import mix, noise_times, student_batch
from .method import Method


@dataclass
class DmdSettings:
    student_steps: int = 1
    cfg: float = 3.0  # the real score's guidance
    fake_updates: int = 5  # fake-score updates per generator update (DMD2's two time-scale rule)
    fake_lr: float | None = None  # the fake network's learning rate (None: the recipe's)
    gan_weight: float = 0.0  # the GAN head's weight (0 = DMD2 without the GAN term)
    gan_blocks: tuple[int, ...] = (1,)


def dmd_direction(bundle, teacher, fake, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, prompt: PromptEmbeds,
                  empty: PromptEmbeds | None, cfg: float) -> torch.Tensor:
    """The distribution-matching direction g = (x0_fake - x0_real) / mean|x - x0_real| at x re-noised to t with eps."""
    with torch.no_grad():
        x = x.detach()
        x_t = mix(x, eps, t)
        tt = t.view(-1, *([1] * (x.ndim - 1)))
        x0_real = x_t - tt * guided_velocity(bundle, teacher, x_t, t, prompt, empty, cfg)
        x0_fake = x_t - tt * bundle.velocity(x_t, t, prompt, fake)
        scale = (x - x0_real).abs().float().mean(dim=tuple(range(1, x.ndim)), keepdim=True).clamp_min(1e-6)
        return ((x0_fake - x0_real).float() / scale).to(x.dtype)


def dmd_loss(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """½ ||x - sg(x - g)||² (mean over elements): its gradient with respect to x is g / numel."""
    return 0.5 * F.mse_loss(x.float(), (x - g).detach().float())


class DMD2(Method):
    name = "dmd"

    def __init__(self, settings: DmdSettings):
        self.s = settings

    def setup(self, run) -> None:
        self.teacher = run.add_module("teacher", copy.deepcopy(run.bundle.net).requires_grad_(False), trainable=False, saved="none")
        fake = copy.deepcopy(run.bundle.net).requires_grad_(True)
        modules = ["fake"]
        self.tap = None
        if self.s.gan_weight > 0:
            self.tap = FeatureTap(run.bundle.family, fake, list(self.s.gan_blocks), what="dmd.gan_block")
            run.add_module("gan_head", FeatureCritic(self.tap.widths, run.bundle.empty_prompt().pooled.shape[-1]))
            modules.append("gan_head")
        self.fake = run.add_module("fake", fake)
        run.add_optimizer("fake", modules, lr=self.s.fake_lr)
        run.add_optimizer("main", ["model"])

    def _gan_score(self, run, x_t: torch.Tensor, t: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        feats = self.tap(lambda: run.bundle.velocity(x_t, t, prompt, self.fake))  # type: ignore[misc]
        return run.module("gan_head")(feats, prompt.pooled)

    def step(self, run) -> None:
        sb = student_batch(run, self.s.student_steps, self.s.cfg)
        x0, gen, prompt, x_in, t_in, empty = sb.x0, sb.gen, sb.prompt, sb.x_in, sb.t_in, sb.empty
        n = x0.shape[0]
        with torch.no_grad():
            x_gen = consistency_fn(run.bundle, run.model, x_in, t_in, prompt)
        for _ in range(self.s.fake_updates):  # the fake score follows the generator's current samples
            t = noise_times(n, sb.alpha, gen).to(x0.device)
            eps = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
            with run.accumulate():
                with run.autocast():
                    v = run.bundle.velocity(mix(x_gen, eps, t), t, prompt, self.fake)
                    loss_fake = F.mse_loss(v.float(), (eps - x_gen).float())
                    total = loss_fake
                    if self.tap is not None:
                        d_real = self._gan_score(run, mix(x0, eps, t), t, prompt)
                        d_fake = self._gan_score(run, mix(x_gen, eps, t), t, prompt)
                        total = total + self.s.gan_weight * (F.softplus(-d_real).mean() + F.softplus(d_fake).mean())
                        run.log("gan/accuracy", separation(d_real.detach(), d_fake.detach()))
                run.update("fake", total)
            run.log("loss/fake", loss_fake.detach())
        t = noise_times(n, sb.alpha, gen).to(x0.device)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
        with run.accumulate():
            with run.autocast():
                x = consistency_fn(run.bundle, run.model, x_in, t_in, prompt)
                g = dmd_direction(run.bundle, self.teacher, self.fake, x, t, eps, prompt, empty, self.s.cfg)
                loss_dm = dmd_loss(x, g)
                loss = loss_dm
                if self.tap is not None:
                    loss_gan = F.softplus(-self._gan_score(run, mix(x, eps, t), t, prompt)).mean()
                    loss = loss + self.s.gan_weight * loss_gan
                    run.log("loss/gan", loss_gan.detach())
            run.update("main", loss)
        run.log("loss", loss.detach())
        run.log("loss/dm", loss_dm.detach())
        run.log("dmd/direction", g.float().pow(2).mean().sqrt().detach())  # |g|: how far the two scores disagree
        run.log_by_t(t, ((g.float() ** 2).flatten(1).mean(1)).detach())
        run.count_images(sb.batch)
