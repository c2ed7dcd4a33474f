"""Flow matching: regress v(x_t, t, c) onto eps - x0 at timesteps from the recipe's density."""

from __future__ import annotations

import torch

from backend.flow.timesteps import sample_t, shift
from backend.models.family import to_device
from backend.recipes.pretrain import TimestepDensity

from .base import Batch, Objective, ObjectiveOutput, TrainContext


class FlowMatching(Objective):
    name = "flow"

    def __init__(self, density: TimestepDensity | None = None, weight: float = 1.0):
        self.density = density or TimestepDensity()
        self.weight = weight

    def timesteps(self, batch: Batch) -> torch.Tensor:
        d = self.density
        t = batch.own_rows(lambda n, gen: sample_t(d.kind, n, gen, m=d.m, s=d.s, mode_scale=d.mode_scale))
        return shift(t, batch.alpha).clamp(1e-4, 1 - 1e-4)

    def loss(self, ctx: TrainContext, batch: Batch) -> ObjectiveOutput:
        x0 = batch.latents
        t = to_device(self.timesteps(batch), x0.device)
        eps = to_device(batch.own_rows(lambda n, gen: torch.randn((n, *x0.shape[1:]), generator=gen)), x0.device, x0.dtype)
        tt = t.view(-1, 1, 1, 1).to(x0.dtype)
        x_t = (1 - tt) * x0 + tt * eps
        v = ctx.bundle.velocity(x_t, t, batch.prompt, ctx.net)
        per = ((v.float() - (eps - x0).float()) ** 2).mean(dim=(1, 2, 3))
        loss = per.mean()
        return ObjectiveOutput(self.weight * loss, {"loss/flow": loss.detach()}, t.detach(), per.detach())
