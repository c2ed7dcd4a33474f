"""Consistency distillation in flow form, LCM-style (METHODS.md §4), on the one loop.

The student's consistency function is ``f(x_t, t) = x_t - t v(x_t, t, c)``: at t = 0 it is x_t
itself, so the boundary condition holds exactly by construction. For a data latent noised to a
point ``t'`` of an N-point schedule, one guided Euler step of the frozen teacher goes to the next
point ``t``; the student's ``f(x_t', t')`` is pulled towards the EMA target's ``f(x_t, t)`` (no
gradient through the target), with the pseudo-Huber distance (or L2). The target moves after
every step (``after_step``); the teacher's guidance is folded into the student, which samples
with cfg 1 by jumping to x0 and re-noising to the next point (``kind = "consistency"`` in
``sample/euler.py``). The teacher is never checkpointed (it never changes); the target is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from backend.flow.timesteps import sampling_schedule
from backend.sample.sde import guided_velocity

from .method import Method


@dataclass
class ConsistencySettings:
    schedule: int = 32  # points of the teacher's ODE schedule; one teacher step joins adjacent ones
    ema: float = 0.95  # the target's decay (LCM's 0.95)
    loss: str = "huber"  # "huber" (pseudo-Huber) or "l2"
    cfg: float = 3.0  # the teacher's guidance, folded into the student


def consistency_fn(bundle, net, x: torch.Tensor, t: torch.Tensor, prompt) -> torch.Tensor:
    """f(x_t, t) = x_t - t v(x_t, t, c): where the student's ODE would end, in one jump."""
    return x - t.view(-1, *([1] * (x.ndim - 1))) * bundle.velocity(x, t, prompt, net)


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample distance: pseudo-Huber on the per-element mean, sqrt(||a-b||²/d + c²) - c with c = 0.00054
    (improved consistency training's c = 0.00054 sqrt(d) on the sum, divided by sqrt(d)), or the mean squared error."""
    sq = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    if kind == "l2":
        return sq
    c = 0.00054
    return torch.sqrt(sq + c * c) - c


class ConsistencyDistillation(Method):
    name = "consistency"

    def __init__(self, settings: ConsistencySettings):
        self.s = settings

    def setup(self, run) -> None:
        self.teacher = run.add_module("teacher", copy.deepcopy(run.bundle.net).requires_grad_(False), trainable=False, saved="none")
        self.target = run.add_module("target", copy.deepcopy(run.bundle.net).requires_grad_(False), trainable=False)
        run.add_optimizer("main", ["model"])

    def step(self, run) -> None:
        batch = run.batch(0)
        x0 = batch.latents.to(run.device)
        gen = batch.generator
        ts = sampling_schedule(self.s.schedule, batch.alpha)
        i = torch.randint(self.s.schedule, (x0.shape[0],), generator=gen)
        t_hi, t_lo = ts[i].to(run.device), ts[i + 1].to(run.device)
        eps = torch.randn(x0.shape, generator=gen).to(run.device, x0.dtype)
        x_hi = (1 - t_hi.view(-1, 1, 1, 1)) * x0 + t_hi.view(-1, 1, 1, 1) * eps
        prompt = batch.prompt.to(run.device)
        empty = run.bundle.empty_prompt().to(run.device) if self.s.cfg != 1.0 else None
        with torch.no_grad():
            v = guided_velocity(run.bundle, self.teacher, x_hi, t_hi, prompt, empty, self.s.cfg)
            x_lo = x_hi + (t_lo - t_hi).view(-1, 1, 1, 1) * v
            target = consistency_fn(run.bundle, self.target, x_lo, t_lo, prompt)  # x_lo itself where t_lo = 0
        with run.accumulate():
            with run.autocast():
                pred = consistency_fn(run.bundle, run.model, x_hi, t_hi, prompt)
                per = distance(pred, target, self.s.loss)
                loss = per.mean()
            run.update("main", loss)
        run.log("loss", loss.detach())
        run.log_by_t(t_hi, per.detach())
        run.count_images(batch)

    @torch.no_grad()
    def after_step(self, run) -> None:
        """The target follows the student: θ⁻ ← μ θ⁻ + (1 - μ) θ."""
        student = dict(getattr(run.model, "module", run.model).named_parameters())
        for name, p in self.target.named_parameters():
            p.mul_(self.s.ema).add_(student[name].detach().to(p.dtype), alpha=1 - self.s.ema)
