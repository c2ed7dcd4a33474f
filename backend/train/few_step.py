"""What the few-step students of DMD2 and LADD share (METHODS.md §4): where a student step starts,
its jump to x0, and re-noising a sample to a time.

A few-step student samples like a consistency model (``kind = "consistency"`` in
``sample/euler.py``): at each point t_k of its N-point schedule it jumps to x0 = x - t_k v and
re-noises to the next point. In training its input at t_k is a data latent noised to t_k (pure
noise at k = 0): the "no backward simulation" variant, cheap and good enough at 1-4 steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.flow.timesteps import sample_t, sampling_schedule, shift
from backend.models.family import PromptEmbeds

from .objectives.base import Batch


def student_input(x0: torch.Tensor, ts: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x at a random point t_k of the student's schedule ``ts``, t_k) per sample; t_0 = 1 is pure noise."""
    k = torch.randint(len(ts) - 1, (x0.shape[0],), generator=gen)
    t = ts[k].to(x0.device, x0.dtype)
    eps = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
    return mix(x0, eps, t), t


def mix(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, with t per sample."""
    tt = t.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - tt) * x0 + tt * eps


def noise_times(n: int, alpha: float, gen: torch.Generator, lo: float = 0.02, hi: float = 0.98) -> torch.Tensor:
    """Times to re-noise a sample to for a critic or a score: logit-normal, shifted like training, in [lo, hi]."""
    return shift(sample_t("logit_normal", n, gen), alpha).clamp(lo, hi)


@dataclass
class StudentBatch:
    """One step's data for a few-step student: the data latents, where its jumps start, the prompts."""

    x0: torch.Tensor
    x_in: torch.Tensor  # at t_in, a point of the student's schedule
    t_in: torch.Tensor
    prompt: PromptEmbeds
    empty: PromptEmbeds | None  # the empty prompt when the teacher is guided
    gen: torch.Generator
    alpha: float
    batch: Batch  # the loop's Batch (for counting)


def student_batch(run, student_steps: int, cfg: float) -> StudentBatch:
    batch = run.batch(0)
    x_in, t_in = student_input(batch.latents, sampling_schedule(student_steps, batch.alpha), batch.generator)
    empty = run.bundle.empty_prompt().to(run.device) if cfg != 1.0 else None
    return StudentBatch(batch.latents, x_in, t_in, batch.prompt, empty, batch.generator, batch.alpha, batch)
