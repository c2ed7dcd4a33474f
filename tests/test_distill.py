"""Progressive distillation does what METHODS.md §4 says: after a round, the student's one step lands
nearer the teacher's two steps than the teacher's own one step does; rounds halve the student's
steps and hand the teacher the student's weights; a killed run resumes on the same trajectory,
across a round boundary."""

from __future__ import annotations

from pathlib import Path

import torch
from test_engine_methods import Quiet, assert_same_trajectory, config, make_bundle, straight_and_killed, toy_batches

from backend.flow.timesteps import sampling_schedule
from backend.train.curriculum import batch_generator
from backend.train.distill import ProgressiveDistillation, ProgressiveSettings, guided_velocity, two_teacher_steps
from backend.train.loop import Trainer
from backend.train.method import ObjectivesMethod
from backend.train.objectives import FlowMatching
from backend.train.objectives.base import Batch


def bimodal_batches(step: int, micro: int = 0, rank: int = 0) -> Batch:
    """Latents at one of two far-apart points: their flow's paths bend, so one Euler step is not two."""
    batch = toy_batches(step, micro, rank)
    gen = batch_generator(1, step, micro, rank)
    sign = torch.where(torch.rand(4, generator=gen) < 0.5, -1.0, 1.0).view(-1, 1, 1, 1)
    batch.latents = 2.0 * sign + 0.1 * torch.randn(batch.latents.shape, generator=gen)
    return batch


def curved_teacher(tmp: Path):
    """A tiny model pretrained on the two-point data: a teacher whose steps do not commute."""
    tr = Trainer(make_bundle(), ObjectivesMethod([FlowMatching()]), bimodal_batches, config(80, ema=0.0, lr=3e-3, checkpoint_every=1000),
                 tmp, Quiet())
    tr.run(resume=False)
    return tr.bundle


def one_vs_two(bundle, student, teacher, n: int, cfg: float, seed: int = 99) -> tuple[float, float]:
    """Mean squared distance to the teacher's two steps: of the student's one step, of the teacher's one step."""
    batch = bimodal_batches(10_000 + seed)
    gen = torch.Generator().manual_seed(seed)
    ts, ts2 = sampling_schedule(n, 1.0), sampling_schedule(2 * n, 1.0)
    i = torch.randint(n, (batch.latents.shape[0],), generator=gen)
    t, t_mid, t_next = ts[i], ts2[2 * i + 1], ts[i + 1]
    eps = torch.randn(batch.latents.shape, generator=gen)
    x = (1 - t.view(-1, 1, 1, 1)) * batch.latents + t.view(-1, 1, 1, 1) * eps
    empty = bundle.empty_prompt() if cfg != 1.0 else None
    with torch.no_grad():
        two = two_teacher_steps(bundle, teacher, x, (t, t_mid, t_next), batch.prompt, empty, cfg)
        dt = (t_next - t).view(-1, 1, 1, 1)
        by_student = x + dt * bundle.velocity(x, t, batch.prompt, student)
        by_teacher = x + dt * guided_velocity(bundle, teacher, x, t, batch.prompt, empty, cfg)
    return float(((by_student - two) ** 2).mean()), float(((by_teacher - two) ** 2).mean())


def test_a_round_makes_one_student_step_match_two_teacher_steps(tmp_path: Path):
    settings = ProgressiveSettings(start_steps=2, target_steps=2, steps_per_round=100, cfg=1.0)
    method = ProgressiveDistillation(settings)
    bundle = curved_teacher(tmp_path / "teacher")
    tr = Trainer(bundle, method, bimodal_batches, config(100, ema=0.0, lr=1e-4, checkpoint_every=1000), tmp_path / "student", Quiet())
    before_student, before_teacher = one_vs_two(tr.bundle, tr.model, method.teacher, 2, 1.0)
    assert before_student == before_teacher > 1e-5  # the student starts as the teacher, whose one step misses its two
    tr.run(resume=False)
    student, teacher = one_vs_two(tr.bundle, tr.model, method.teacher, 2, 1.0)
    assert teacher == before_teacher  # the teacher did not move
    assert student < 0.2 * teacher, (student, teacher)  # measured: about 1/50


def test_rounds_halve_the_steps_and_the_student_becomes_the_teacher(tmp_path: Path):
    s = ProgressiveSettings(start_steps=16, target_steps=4, steps_per_round=5)
    assert s.rounds() == 3 and [s.student_steps(k) for k in (0, 4, 5, 9, 10, 14)] == [16, 16, 8, 8, 4, 4]
    method = ProgressiveDistillation(ProgressiveSettings(start_steps=8, target_steps=4, steps_per_round=3, cfg=2.0))
    tr = Trainer(make_bundle(), method, toy_batches, config(4, ema=0.0, checkpoint_every=100), tmp_path, Quiet())
    start = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    tr.run(resume=False)  # steps 0-2: round one (teacher fixed, guided); step 3 starts round two from the student of step 2
    assert method.teacher_cfg(2) == 2.0 and method.teacher_cfg(3) == 1.0
    moved = [k for k in start if not torch.equal(start[k], method.teacher.state_dict()[k])]
    assert moved  # the teacher was replaced by the round-one student
    assert not torch.equal(method.teacher.state_dict()[moved[0]], tr.model.state_dict()[moved[0]])  # and the student moved on from it


def test_a_killed_progressive_run_resumes_across_a_round_boundary(tmp_path: Path):
    straight, resumed = straight_and_killed(
        tmp_path, lambda: ProgressiveDistillation(ProgressiveSettings(start_steps=8, target_steps=2, steps_per_round=3, cfg=2.0)), steps=7)
    assert_same_trajectory(straight, resumed)
