"""Discriminator heads on a network's own features, for LADD (on the frozen teacher) and DMD2's
optional GAN term (on the fake-score network). METHODS.md §4.

``FeatureTap`` reads token features at some blocks of a network through forward hooks (the blocks
REPA uses, through the family protocol, so any family works) and stops the forward pass after the
deepest one: the rest of the network is never run. ``FeatureCritic`` turns them into one score per
sample: per block, a small MLP on every token (its features layer-normalised), averaged over the tokens, plus a projection term
(the tokens' mean against a projection of the pooled prompt), so the critic judges image and
prompt together. Hand-written because these heads are a few linear layers over our own hooks; no
library offers them for arbitrary diffusers networks.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Stop(Exception):
    """Raised from the deepest hook: the features are in, the rest of the forward pass is not needed."""


class FeatureTap:
    def __init__(self, family, net: nn.Module, blocks: list[int], what: str = "blocks"):
        if not blocks:
            raise ValueError(f"{what}: the critic needs at least one block to read features from")
        self.family = family
        try:
            points = [family.repa_point(net, b) for b in blocks]
        except ValueError as e:
            raise ValueError(f"{what} {blocks}: {e}") from None
        self.widths = [w for _, w in points]
        self._last = len(points) - 1 if blocks == sorted(blocks) else None  # stop early only when the deepest comes last
        self._got: dict[int, torch.Tensor] = {}
        self._on = False
        for i, (module, _) in enumerate(points):
            module.register_forward_hook(self._hook(i))

    def _hook(self, i: int):
        def hook(_module: nn.Module, _inputs: tuple, output) -> None:
            if not self._on:
                return
            self._got[i] = self.family.repa_tokens(output)
            if i == self._last:
                raise _Stop

        return hook

    def __call__(self, forward: Callable[[], object]) -> list[torch.Tensor]:
        """Run ``forward`` (a call of the tapped network) and return its features at the blocks, (B, N, D) each."""
        self._on, self._got = True, {}
        try:
            forward()
        except _Stop:
            pass
        finally:
            self._on = False
        got, self._got = self._got, {}
        return [got[i] for i in range(len(self.widths))]


class FeatureCritic(nn.Module):
    def __init__(self, widths: list[int], cond_dim: int, hidden: int = 128):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(w, hidden), nn.SiLU(), nn.Linear(hidden, 1)) for w in widths)
        self.cond = nn.ModuleList(nn.Linear(cond_dim, w, bias=False) for w in widths)
        for c in self.cond:  # the prompt term starts silent and grows only where the prompt helps
            nn.init.zeros_(c.weight)

    def forward(self, features: list[torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
        """One score per sample: > 0 says real, < 0 says generated."""
        score = 0.0
        for f, head, cond in zip(features, self.heads, self.cond):
            f = f.float()
            score = score + head(f).mean(dim=(1, 2)) + (f.mean(1) * cond(pooled.float())).sum(-1) / math.sqrt(f.shape[-1])
        return score  # type: ignore[return-value]


def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: push real scores above 1 and generated ones below -1."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def r1_penalty(score: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
    """R1: the squared gradient of the real scores with respect to the features they were read from."""
    grads = torch.autograd.grad(score.sum(), features, create_graph=True)
    return sum(g.float().pow(2).flatten(1).sum(1).mean() for g in grads)  # type: ignore[return-value]


def separation(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Share of scores on the right side of 0 (real > 0, generated < 0): the critic's accuracy."""
    return float(((real > 0).float().mean() + (fake < 0).float().mean()) / 2)
