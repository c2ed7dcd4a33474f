"""LADD, latent adversarial diffusion distillation (METHODS.md §4), on the one loop.

A few-step student (it jumps to x0 at each point of its schedule) is trained with
``L_adv + λ L_distill``: discriminator heads (``critic.py``) read the frozen teacher's own token
features of re-noised latents — the student's samples against re-noised data latents, at times
drawn like training's, shifted — and are trained with the hinge loss and a small R1 penalty on
the real features; the student gets the non-saturating adversarial term through the frozen
teacher, plus the distillation term: the teacher (with CFG) denoises the re-noised student sample
and the student regresses on it. Everything stays in latent space: nothing is decoded. One
discriminator update per student update; the heads and their optimizer are checkpointed, the
teacher (frozen) is not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from backend.models.family import PromptEmbeds
from backend.sample.sde import guided_velocity

from .consistency import consistency_fn
from .critic import FeatureCritic, FeatureTap, hinge_d, r1_penalty, separation
from .few_step import mix, noise_times, student_batch
from .method import Method


@dataclass
class LaddSettings:
    student_steps: int = 4
    cfg: float = 3.0  # the teacher's guidance in the distillation term
    distill_weight: float = 2.5  # λ
    r1: float = 1e-4  # weight of the R1 penalty on the real features
    disc_lr: float | None = None  # the heads' learning rate (None: the recipe's)
    blocks: tuple[int, ...] = (0, 1, 2)  # the teacher blocks the heads read


class LADD(Method):
    name = "ladd"

    def __init__(self, settings: LaddSettings):
        self.s = settings

    def setup(self, run) -> None:
        teacher = copy.deepcopy(run.bundle.net).requires_grad_(False)
        self.tap = FeatureTap(run.bundle.family, teacher, list(self.s.blocks), what="ladd.blocks")
        self.teacher = run.add_module("teacher", teacher, trainable=False, saved="none")
        self.critic = run.add_module("critic", FeatureCritic(self.tap.widths, run.bundle.empty_prompt().pooled.shape[-1]))
        run.add_optimizer("disc", ["critic"], lr=self.s.disc_lr)
        run.add_optimizer("main", ["model"])

    def features(self, run, x_t: torch.Tensor, t: torch.Tensor, prompt: PromptEmbeds) -> list[torch.Tensor]:
        return self.tap(lambda: run.bundle.velocity(x_t, t, prompt, self.teacher))

    def disc_loss(self, run, real_t: torch.Tensor, fake_t: torch.Tensor, t: torch.Tensor, prompt: PromptEmbeds) -> tuple[torch.Tensor, float]:
        """The heads' hinge loss (plus R1) on re-noised real and generated latents at t, and their accuracy."""
        with torch.no_grad():
            f_real = self.features(run, real_t, t, prompt)
            f_fake = self.features(run, fake_t, t, prompt)
        f_real = [f.detach().float().requires_grad_(self.s.r1 > 0) for f in f_real]
        d_real = self.critic(f_real, prompt.pooled)
        d_fake = self.critic([f.float() for f in f_fake], prompt.pooled)
        loss = hinge_d(d_real, d_fake)
        if self.s.r1 > 0:
            loss = loss + 0.5 * self.s.r1 * r1_penalty(d_real, f_real)
        return loss, separation(d_real.detach(), d_fake.detach())

    def step(self, run) -> None:
        sb = student_batch(run, self.s.student_steps, self.s.cfg)
        x0, gen, prompt, x_in, t_in, empty = sb.x0, sb.gen, sb.prompt, sb.x_in, sb.t_in, sb.empty
        n = x0.shape[0]
        t = noise_times(n, sb.alpha, gen).to(x0.device)
        eps_real, eps_fake = (torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype) for _ in range(2))
        with torch.no_grad():
            x_gen = consistency_fn(run.bundle, run.model, x_in, t_in, prompt)
        with run.accumulate():
            with run.autocast():
                loss_d, acc = self.disc_loss(run, mix(x0, eps_real, t), mix(x_gen, eps_fake, t), t, prompt)
            run.update("disc", loss_d)
        with run.accumulate():
            with run.autocast():
                x = consistency_fn(run.bundle, run.model, x_in, t_in, prompt)
                x_t = mix(x, eps_fake, t)
                adv = -self.critic(self.features(run, x_t, t, prompt), prompt.pooled).mean()
                with torch.no_grad():
                    xd = x_t.detach()
                    target = xd - t.view(-1, 1, 1, 1) * guided_velocity(run.bundle, self.teacher, xd, t, prompt, empty, self.s.cfg)
                per = ((x.float() - target.float()) ** 2).flatten(1).mean(1)
                loss = adv + self.s.distill_weight * per.mean()
            run.update("main", loss)
        run.log("loss", loss.detach())
        run.log("loss/disc", loss_d.detach())
        run.log("disc/accuracy", acc)
        run.log("loss/adv", adv.detach())
        run.log("loss/distill", per.mean().detach())
        run.log_by_t(t, per.detach())
        run.count_images(sb.batch)
