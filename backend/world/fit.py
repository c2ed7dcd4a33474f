"""The small loop the world's own networks (VAE, detector, encoder) are trained with.

Deterministic given the caller's seeded generator: ``loss_at(step)`` draws its batch and
returns the loss; this does the optimizer bookkeeping (AdamW, linear warm-up then cosine to
``floor`` of the peak LR, optional clipping) and the progress lines.

Written by hand rather than with the pretraining ``Trainer`` (which carries EMA, checkpoints,
caches and accelerate for diffusion models) or diffusers' ``get_cosine_schedule_with_warmup``
(no floor; the shipped VAE was trained with a 2 % floor and these scripts must reproduce it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch


def fit(
    params: Iterable[torch.nn.Parameter],
    steps: int,
    loss_at: Callable[[int], tuple[torch.Tensor, str]],
    *,
    lr: float,
    weight_decay: float = 0.0,
    warmup: int = 100,
    floor: float = 0.0,
    clip: float | None = None,
    name: str = "fit",
    log: Callable[[str], None] = print,
) -> float:
    """Train for ``steps``; returns the seconds it took."""
    params = list(params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    )
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        loss, text = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == 1:
            log(f"[{name}] step {step}/{steps} {text} ({time.perf_counter() - t0:.0f} s)")
    return time.perf_counter() - t0
