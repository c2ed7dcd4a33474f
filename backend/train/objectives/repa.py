"""REPA: align early image tokens, through a small MLP projector, with a frozen encoder's patch
features of the clean image (METHODS.md §1). Text tokens are not aligned.

It observes the flow-matching forward pass through a hook on block ``block`` (no second
forward), so it must come after the objective that runs the network.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from backend.models.family import ModelBundle, to_device

from .base import Batch, Objective, ObjectiveOutput, TrainContext


def projector(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class Repa(Objective):
    name = "repa"

    def __init__(self, bundle: ModelBundle, block: int, encoder_dim: int, weight: float = 0.5, hidden: int = 256, layers: int = 3, until_step: int | None = None):
        module, width = bundle.family.repa_point(bundle.net, block)
        self.family = bundle.family
        self.block = block
        self.weight = weight
        self.until_step = until_step
        self.proj = projector(width, hidden, encoder_dim, layers)
        self._run_proj: nn.Module = self.proj
        self._captured: torch.Tensor | None = None
        module.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: tuple, output: tuple) -> None:
        self._captured = self.family.repa_tokens(output)  # image features (B, N, D); text tokens are not aligned

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"repa_projector": self.proj}

    def use_modules(self, prepared: dict[str, nn.Module]) -> None:
        self._run_proj = prepared.get("repa_projector", self.proj)

    def active(self, step: int) -> bool:
        return self.weight > 0 and (self.until_step is None or step <= self.until_step)

    def loss(self, ctx: TrainContext, batch: Batch) -> ObjectiveOutput:
        tokens, self._captured = self._captured, None
        if tokens is None:
            raise RuntimeError("REPA saw no forward pass: list it after the objective that runs the network")
        target = to_device(batch.extras["repa_features"], tokens.device)  # (B, D, gh, gw) at the token grid
        b, d = target.shape[:2]
        target = target.flatten(2).transpose(1, 2)  # (B, N, D)
        pred = self._run_proj(tokens.float())
        cos = F.cosine_similarity(pred, target.float(), dim=-1).mean()
        if not self.active(ctx.step):
            return ObjectiveOutput(pred.sum() * 0.0, {"repa/alignment": cos.detach()})
        return ObjectiveOutput(-self.weight * cos, {"repa/alignment": cos.detach(), "loss/repa": -cos.detach()})
