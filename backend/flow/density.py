"""Timestep densities and the resolution shift as plain numpy (no torch), so the service can
answer the Studio's live density plot instantly; ``timesteps`` adds sampling on top.

Convention: t = 0 clean, t = 1 noise. The composition (density first, then shift) is explicit.
"""

from __future__ import annotations

import math

import numpy as np

DENSITIES = ("uniform", "logit_normal", "mode", "cosmap")


def shift(t, alpha):
    """t_m = alpha t / (1 + (alpha - 1) t): the same information loss at a larger image."""
    return alpha * t / (1 + (alpha - 1) * t)


def unshift(t, alpha: float):
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


def bucket_alpha(rule, width: int, height: int, tokens: int) -> float:
    """The resolution shift of a (width x height) image of ``tokens`` tokens under a shift rule: a
    recipe's ``allocation.shift`` section, or the same as a dict (as a saved model records it).
    Training buckets and sampling both come here, so the rule exists once."""
    r = rule if isinstance(rule, dict) else rule.model_dump()
    kind = r.get("kind", "none")
    if kind == "fixed":
        return float(r.get("alpha", 1.0))
    if kind == "per_bucket":
        return math.sqrt((width * height) / (int(r.get("base_resolution", 32)) ** 2))
    if kind == "dynamic":
        return dynamic_alpha(tokens, r.get("base_tokens", 256), r.get("max_tokens", 4096), r.get("base_shift", 0.5), r.get("max_shift", 1.15))
    return 1.0


def density_curves(timesteps, rule, buckets: list[tuple[int, int]], token_stride: int = 8, points: int = 201) -> dict:
    """Effective training density per bucket, for plotting: {'t': [...], 'curves': {'WxH': {...}}}."""
    t = np.linspace(0.0025, 0.9975, points)
    params = {"m": timesteps.m, "s": timesteps.s, "mode_scale": timesteps.mode_scale}
    curves = {}
    for w, h in buckets:
        tokens = (w // token_stride) * (h // token_stride)
        alpha = bucket_alpha(rule, w, h, tokens)
        p = effective_density(timesteps.kind, t, alpha, **params)
        curves[f"{w}x{h}"] = {"alpha": alpha, "tokens": tokens, "density": np.round(p, 5).tolist(), "mean_t": float(np.trapezoid(p * t, t) / np.trapezoid(p, t))}
    return {"t": np.round(t, 5).tolist(), "curves": curves}
