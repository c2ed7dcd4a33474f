"""Progressive distillation in flow form (METHODS.md §4), on the one loop.

A round trains the student to cover, in one Euler step of its N-step schedule, what two guided
Euler steps of the teacher on the 2N-step schedule do: for a data latent noised to a grid point
``t_i`` (with ``t_mid`` and ``t_{i+1}`` the teacher's next two points), the target velocity is
``(x_{t_{i+1}} - x_{t_i}) / (t_{i+1} - t_i)`` after the teacher's two steps, regressed with the MSE.
Rounds halve N (e.g. 16 -> 8 -> 4); at each round's start the teacher becomes a copy of the
student. The first teacher samples with classifier-free guidance; the student learns the guided
velocity as its conditional one (guidance folded in), so every later round's teacher, and the
final student, sample without guidance (cfg = 1) at one network pass per step. The teacher is a
checkpointed module (it changes per round), so a killed run resumes on the same trajectory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from backend.flow.timesteps import sampling_schedule
from backend.models.family import PromptEmbeds
from backend.sample.sde import guided_velocity

from .method import Method


@dataclass
class ProgressiveSettings:
    start_steps: int = 16  # the first round's student steps (its teacher takes twice as many)
    target_steps: int = 4
    steps_per_round: int = 200
    cfg: float = 3.0  # the original teacher's guidance

    def rounds(self) -> int:
        n, k = self.start_steps, 1
        while n > self.target_steps:
            n //= 2
            k += 1
        return k

    def student_steps(self, step: int) -> int:
        """The student's step count during training step ``step`` (0-based)."""
        return max(self.target_steps, self.start_steps >> (step // self.steps_per_round))


def two_teacher_steps(bundle, teacher, x: torch.Tensor, ts: tuple[torch.Tensor, torch.Tensor, torch.Tensor], prompt: PromptEmbeds,
                      empty: PromptEmbeds | None, cfg: float) -> torch.Tensor:
    """Where two Euler steps of the teacher (t -> t_mid -> t_next, per sample) take ``x``."""
    t, t_mid, t_next = ts
    view = (-1,) + (1,) * (x.ndim - 1)
    x_mid = x + (t_mid - t).view(view) * guided_velocity(bundle, teacher, x, t, prompt, empty, cfg)
    return x_mid + (t_next - t_mid).view(view) * guided_velocity(bundle, teacher, x_mid, t_mid, prompt, empty, cfg)


class ProgressiveDistillation(Method):
    name = "progressive"

    def __init__(self, settings: ProgressiveSettings):
        self.s = settings

    def setup(self, run) -> None:
        # the teacher changes every round: a checkpointed module, never trained
        self.teacher = run.add_module("teacher", copy.deepcopy(run.bundle.net).requires_grad_(False), trainable=False)
        run.add_optimizer("main", ["model"])

    def grid(self, run, n: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(the student's N + 1 points, the teacher's 2N + 1 points) of the shifted schedule."""
        return sampling_schedule(n, alpha), sampling_schedule(2 * n, alpha)

    def teacher_cfg(self, step: int) -> float:
        """The teacher's guidance at 0-based training step ``step``: the original's in round one, none after."""
        return self.s.cfg if step < self.s.steps_per_round else 1.0

    def step(self, run) -> None:
        k = run.step - 1  # the loop counts steps from 1 inside ``step``
        if k > 0 and k % self.s.steps_per_round == 0:  # a new round: the student teaches
            self.teacher.load_state_dict(getattr(run.model, "module", run.model).state_dict())
        n = self.s.student_steps(k)
        batch = run.batch(0)
        x0 = batch.latents.to(run.device)
        gen = batch.generator
        ts, ts2 = self.grid(run, n, batch.alpha)
        i = torch.randint(n, (x0.shape[0],), generator=gen)
        t, t_mid, t_next = ts[i].to(run.device), ts2[2 * i + 1].to(run.device), ts[i + 1].to(run.device)
        eps = torch.randn(x0.shape, generator=gen).to(run.device, x0.dtype)
        tt = t.view(-1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * eps
        prompt = batch.prompt.to(run.device)
        cfg = self.teacher_cfg(k)
        empty = run.bundle.empty_prompt().to(run.device) if cfg != 1.0 else None
        with torch.no_grad():
            x_next = two_teacher_steps(run.bundle, self.teacher, x_t, (t, t_mid, t_next), prompt, empty, cfg)
            target = (x_next - x_t) / (t_next - t).view(-1, 1, 1, 1)
        with run.accumulate():
            with run.autocast():
                v = run.bundle.velocity(x_t, t, prompt, run.model)
                per = ((v.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
                loss = per.mean()
            run.update("main", loss)
        run.log("loss", loss.detach())
        run.log("distill/student_steps", float(n))
        run.log("distill/round", float(k // self.s.steps_per_round))
        run.log_by_t(t, per.detach())
        run.count_images(batch)
