"""Distillation does what METHODS.md §4 says. Progressive: after a round, the student's one step lands
nearer the teacher's two steps than the teacher's own one step does; rounds halve the student's
steps and hand the teacher the student's weights; a killed run resumes on the same trajectory,
across a round boundary. Consistency: the boundary f(x, 0) = x holds exactly; after training the
student's one jump lands nearer the teacher's ODE end than the teacher's own jump; it resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_engine_methods import Quiet, assert_same_trajectory, config, make_bundle, straight_and_killed, toy_batches

from backend.flow.timesteps import sampling_schedule
from backend.train.consistency import ConsistencyDistillation, ConsistencySettings, consistency_fn
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


# --- consistency distillation --------------------------------------------------------------------


def test_the_consistency_function_meets_the_boundary_exactly():
    bundle = make_bundle()
    x = torch.randn(3, 4, 8, 8)
    prompt = toy_batches(0).prompt[torch.arange(3)]
    with torch.no_grad():
        assert torch.equal(consistency_fn(bundle, bundle.net, x, torch.zeros(3), prompt), x)
        assert not torch.allclose(consistency_fn(bundle, bundle.net, x, torch.full((3,), 0.5), prompt), x)


def ode_end(bundle, net, x: torch.Tensor, t0: float, prompt, steps: int = 32) -> torch.Tensor:
    """Where the teacher's ODE from (x, t0) ends: many small Euler steps."""
    ts = torch.linspace(t0, 0.0, steps + 1)
    with torch.no_grad():
        for a, b in zip(ts[:-1], ts[1:]):
            x = x + (b - a) * bundle.velocity(x, a.expand(x.shape[0]), prompt, net)
    return x


def test_consistency_distillation_makes_one_jump_land_where_the_teachers_ode_ends(tmp_path: Path):
    """The student's one jump f(x_t, t) from a noisy point lands nearer the teacher's ODE end than the
    teacher's own jump x_t - t v_teacher; the EMA target follows the student, the teacher stays."""
    method = ConsistencyDistillation(ConsistencySettings(schedule=4, ema=0.9, loss="l2", cfg=1.0))
    tr = Trainer(curved_teacher(tmp_path / "teacher"), method, bimodal_batches, config(150, ema=0.0, lr=1e-4, checkpoint_every=1000),
                 tmp_path / "student", Quiet())
    teacher_start = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    tr.run(resume=False)
    batch = bimodal_batches(20_000)
    gen = torch.Generator().manual_seed(5)
    x = 0.25 * batch.latents + 0.75 * torch.randn(batch.latents.shape, generator=gen)  # t = 0.75
    t = torch.full((x.shape[0],), 0.75)
    end = ode_end(tr.bundle, method.teacher, x, 0.75, batch.prompt)
    with torch.no_grad():
        student = float(((consistency_fn(tr.bundle, tr.model, x, t, batch.prompt) - end) ** 2).mean())
        teacher = float(((consistency_fn(tr.bundle, method.teacher, x, t, batch.prompt) - end) ** 2).mean())
    assert student < 0.5 * teacher, (student, teacher)
    assert all(torch.equal(v, method.teacher.state_dict()[k]) for k, v in teacher_start.items())
    target = method.target.state_dict()
    assert any(not torch.equal(target[k], teacher_start[k]) for k in target)  # the target moved towards the student


def test_a_killed_consistency_run_resumes_on_the_same_trajectory(tmp_path: Path):
    straight, resumed = straight_and_killed(tmp_path, lambda: ConsistencyDistillation(ConsistencySettings(schedule=8, cfg=2.0)), steps=6)
    assert_same_trajectory(straight, resumed)


def test_a_consistency_job_saves_a_student_that_samples_with_its_own_sampler(tmp_path: Path):
    import json

    from backend.jobs import create_job, execute_job
    from backend.recipes import SampleRecipe, WorldRecipe
    from backend.recipes.distill import DistillRecipe
    from backend.stages.world import add_world_data
    from backend.store import Project

    with Project.init(tmp_path / "p") as project:
        add_world_data(project, WorldRecipe(images=24, seed=0, resolution=(64, 64), subject=False, base_model=True), log=lambda m: None)
        recipe = DistillRecipe(method="consistency", name="lcm", target_steps=2, consistency={"steps": 3, "schedule": 8}, eval_images=2,
                               eval_every=3, sample_every=0, data={"batch_size": 2})
        out = execute_job(project, create_job(project, recipe), echo=False)
        assert out["state"] == "done" and out["latency"]["speedup"] > 1
        card = json.loads((project.root / "models" / "lcm" / "card.json").read_text())
        assert card["method"] == "consistency" and card["sampler"]["kind"] == "consistency" and card["sampler"]["steps"] == 2
        assert card["parent"] == "models/shapes-base" and "shapes_eval" in card
        sampler = {k: card["sampler"][k] for k in ("steps", "cfg", "kind")}
        first = execute_job(project, create_job(project, SampleRecipe(model="models/lcm", prompts=["a red circle"], seeds=[3], out="exports/a",
                                                                      sampler=sampler)), echo=False)
        again = execute_job(project, create_job(project, SampleRecipe(model="models/lcm", prompts=["a red circle"], seeds=[3], out="exports/b",
                                                                      sampler=sampler)), echo=False)
        assert first["state"] == again["state"] == "done"
        a, b = (project.root / "exports" / d / "0000_s3.png" for d in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()  # the re-noising is seeded: same seed, same image
        # a student is not a starting point for stages that train with the flow loss: refused, naming its teacher
        from backend.recipes.personalize import PersonalizeRecipe

        for refused in (DistillRecipe(method="consistency", model="models/lcm", target_steps=1, consistency={"steps": 2}, eval_images=0,
                                      sample_every=0, data={"batch_size": 2}),
                        PersonalizeRecipe(model="models/lcm", steps=2, eval_images=1, sample_every=0)):
            job = create_job(project, refused)
            with pytest.raises(ValueError, match=r"distilled student \(2-step sampler\).*models/shapes-base"):
                execute_job(project, job, echo=False)
            state, error = project.db.execute("SELECT state, error FROM jobs WHERE id = ?", [job]).fetchone()
            assert state == "failed" and "distilled student" in error
