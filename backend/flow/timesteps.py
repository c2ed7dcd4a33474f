"""Where the training signal goes along t: timestep densities and the resolution shift (METHODS.md §1).

Convention: t = 0 clean, t = 1 noise. ``sample_t`` draws base timesteps; ``shift`` moves them
to a resolution's equivalent noise level; ``effective_density`` is the density of the shifted
timesteps, so the Studio can plot exactly what a recipe will train on. The composition
(density first, then shift) is explicit here and nowhere else.
"""

from __future__ import annotations

import math

import torch

from .density import DENSITIES, base_density, dynamic_alpha, effective_density, resolution_alpha, shift, unshift

__all__ = ["DENSITIES", "base_density", "dynamic_alpha", "effective_density", "resolution_alpha", "sample_t", "sampling_schedule", "shift", "unshift"]


def sample_t(kind: str, n: int, generator: torch.Generator | None = None, *, m: float = 0.0, s: float = 1.0, mode_scale: float = 1.29) -> torch.Tensor:
    """Draw ``n`` base timesteps in (0, 1) from the named density."""
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    if kind == "logit_normal":
        return torch.sigmoid(m + s * torch.randn(n, generator=generator))
    u = torch.rand(n, generator=generator)
    if kind == "mode":
        return (1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)).clamp(0, 1)
    if kind == "cosmap":
        return 1 - 1 / (torch.tan(math.pi * u / 2) + 1)
    raise ValueError(f"unknown timestep density {kind!r}; one of {DENSITIES}")


def sampling_schedule(steps: int, alpha: float = 1.0) -> torch.Tensor:
    """steps + 1 decreasing timesteps from 1 to 0, shifted like training."""
    return shift(torch.linspace(1.0, 0.0, steps + 1), alpha)
