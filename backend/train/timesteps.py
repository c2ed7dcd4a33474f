"""Where the training signal goes along t: timestep densities and the resolution shift (METHODS.md §1).

Convention: t = 0 clean, t = 1 noise. ``sample_t`` draws base timesteps; ``shift`` moves them
to a resolution's equivalent noise level; ``effective_density`` is the density of the shifted
timesteps, so the Studio can plot exactly what a recipe will train on. The composition
(density first, then shift) is explicit here and nowhere else.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DENSITIES = ("uniform", "logit_normal", "mode", "cosmap")


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


def shift(t: torch.Tensor | np.ndarray | float, alpha: float | torch.Tensor):
    """t_m = alpha t / (1 + (alpha - 1) t): the same information loss at a larger image."""
    return alpha * t / (1 + (alpha - 1) * t)


def unshift(t: torch.Tensor | np.ndarray | float, alpha: float):
    return t / (alpha - (alpha - 1) * t)


def resolution_alpha(pixels: int, base_pixels: int) -> float:
    """alpha = sqrt(m / n) for m pixels (or latent pixels) against a base of n."""
    return math.sqrt(pixels / base_pixels)


def dynamic_alpha(tokens: int, base_tokens: int = 256, max_tokens: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's rule: mu linear in the image token count, alpha = exp(mu)."""
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    mu = base_shift + slope * (tokens - base_tokens)
    return math.exp(mu)


def base_density(kind: str, t: np.ndarray, *, m: float = 0.0, s: float = 1.0, mode_scale: float = 1.29) -> np.ndarray:
    """Probability density of the base timesteps at ``t`` (analytic where it exists)."""
    t = np.clip(np.asarray(t, dtype=np.float64), 1e-6, 1 - 1e-6)
    if kind == "uniform":
        return np.ones_like(t)
    if kind == "logit_normal":
        logit = np.log(t / (1 - t))
        return np.exp(-((logit - m) ** 2) / (2 * s * s)) / (s * math.sqrt(2 * math.pi) * t * (1 - t))
    if kind == "cosmap":
        return (2 / math.pi) / ((1 - t) ** 2 + t**2)
    if kind == "mode":
        u = np.linspace(0, 1, 20001)
        tu = 1 - u - mode_scale * (np.cos(math.pi * u / 2) ** 2 - 1 + u)
        dtdu = np.abs(-1 - mode_scale + mode_scale * math.pi / 2 * np.sin(math.pi * u))
        order = np.argsort(tu)
        u_at = np.interp(t, tu[order], u[order])
        return 1.0 / np.interp(u_at, u, dtdu)
    raise ValueError(f"unknown timestep density {kind!r}; one of {DENSITIES}")


def effective_density(kind: str, t: np.ndarray, alpha: float = 1.0, **params: float) -> np.ndarray:
    """Density of shift(T, alpha) for T from ``kind``: p(unshift(t)) / |d shift / dt|."""
    t = np.clip(np.asarray(t, dtype=np.float64), 1e-6, 1 - 1e-6)
    t0 = unshift(t, alpha)
    jac = alpha / (1 + (alpha - 1) * t0) ** 2
    return base_density(kind, t0, **params) / jac


def sampling_schedule(steps: int, alpha: float = 1.0) -> torch.Tensor:
    """steps + 1 decreasing timesteps from 1 to 0, shifted like training."""
    return shift(torch.linspace(1.0, 0.0, steps + 1), alpha)
