"""The Flow-GRPO sampler: an SDE with the ODE's marginals, whose every step is an exact Gaussian.

Reinforcement learning on a flow model needs two things the Euler ODE (``euler.py``) lacks:
exploration (the ODE is deterministic given the noise) and the probability of each step under the
policy. METHODS.md §2: with ``σ_t = a sqrt(t / (1 - t))`` the step from ``t`` to ``t + Δt``
(``Δt < 0``) is

    x_next ~ N(μ, s²),  μ = x + [v + σ_t² / (2t) (x + (1 - t) v)] Δt,  s = σ_t sqrt(|Δt|)

so ``log p(x_next | x)`` is a Gaussian density, computed here in fp32 and averaged over latent
elements (the scale Flow-GRPO's ratios and clip range are set for). ``a = 0`` gives back the Euler
step exactly. σ_t is unbounded at t = 1: as in the reference code, t in its denominator is capped
at the schedule's second point. diffusers' schedulers have no such step (its flow-match SDE
samplers neither return the mean nor the density), so it is written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from backend.flow.timesteps import sampling_schedule
from backend.models.family import ModelBundle, PromptEmbeds


@dataclass
class Trajectory:
    """One SDE rollout: ``latents[k]`` at ``ts[k]`` (k = 0 is the noise, the last the sample) and the
    log-probability of every step under the policy that drew it."""

    latents: torch.Tensor  # (K + 1, n, C, h, w)
    log_probs: torch.Tensor  # (K, n)
    ts: torch.Tensor  # (K + 1,)


def sigma(t: torch.Tensor, a: float, t_cap: float) -> torch.Tensor:
    """σ_t = a sqrt(t / (1 - t)), with t capped below 1 in the denominator."""
    tc = torch.clamp(t, max=t_cap)
    return a * torch.sqrt(t / (1 - tc))


def guided_velocity(bundle: ModelBundle, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: PromptEmbeds,
                    uncond: PromptEmbeds | None, cfg: float) -> torch.Tensor:
    """v(x, t, c) with classifier-free guidance when ``uncond`` is given (``ModelBundle.guided_velocity``)."""
    return bundle.guided_velocity(x, t, cond, uncond, cfg, net)


def step_mean_std(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, a: float, t_cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the Gaussian step from t to t_next (both scalars, t_next < t)."""
    x, v = x.float(), v.float()
    dt = t_next - t
    s_t = sigma(t, a, t_cap)
    mean = x + (v + s_t**2 / (2 * t) * (x + (1 - t) * v)) * dt
    return mean, s_t * torch.sqrt(-dt)


def gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample log N(x_next; mean, std²), averaged over elements, in fp32."""
    std = std.float()
    lp = -((x_next.float() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=tuple(range(1, lp.dim())))


def empty_like(bundle: ModelBundle, n: int, device: torch.device) -> PromptEmbeds:
    empty = bundle.empty_prompt().to(device)
    return empty.expand(n)


@torch.no_grad()
def sde_rollout(bundle: ModelBundle, net: torch.nn.Module, cond: PromptEmbeds, noise: torch.Tensor, steps: int, alpha: float,
                a: float, cfg: float, gen: torch.Generator) -> Trajectory:
    """Sample from ``noise`` (t = 1) to t = 0 in ``steps`` SDE steps, keeping every latent and step log-prob."""
    device = noise.device
    ts = sampling_schedule(steps, alpha).to(device)
    t_cap = float(ts[1]) if steps > 1 else 0.5
    uncond = empty_like(bundle, noise.shape[0], device) if cfg != 1.0 else None
    x = noise.float()
    latents, log_probs = [x], []
    for k in range(steps):
        v = guided_velocity(bundle, net, x.to(noise.dtype), ts[k], cond, uncond, cfg)
        mean, std = step_mean_std(x, v, ts[k], ts[k + 1], a, t_cap)
        x = mean + std * torch.randn(mean.shape, generator=gen).to(device)
        latents.append(x)
        log_probs.append(gaussian_log_prob(x, mean, std))
    return Trajectory(torch.stack(latents), torch.stack(log_probs), ts)


def step_log_prob(bundle: ModelBundle, net: torch.nn.Module, traj: Trajectory, k: int, idx: torch.Tensor, cond: PromptEmbeds,
                  a: float, cfg: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-prob, mean, std) of the rollout's step ``k`` for rows ``idx`` under ``net`` (with gradients when enabled)."""
    ts = traj.ts
    t_cap = float(ts[1]) if len(ts) > 2 else 0.5
    x, x_next = traj.latents[k, idx], traj.latents[k + 1, idx]
    uncond = empty_like(bundle, x.shape[0], x.device) if cfg != 1.0 else None
    v = guided_velocity(bundle, net, x, ts[k], cond, uncond, cfg)
    mean, std = step_mean_std(x, v, ts[k], ts[k + 1], a, t_cap)
    return gaussian_log_prob(x_next, mean, std), mean, std
