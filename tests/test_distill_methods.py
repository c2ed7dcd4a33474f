"""DMD2, LADD and reflow do what METHODS.md §4 says, on tiny networks through the real loop.

DMD2: the distribution-matching direction is exactly zero when the fake score is the real one (and
then the generator gets no gradient at all); when they differ, the surrogate loss hands x exactly
the direction; the fake network's updates fit the generator's samples; a killed run resumes on the
same trajectory. LADD: discriminator steps on the teacher's features separate real from student
latents on fresh samples; it resumes exactly. Reflow: the couplings are cached and a damaged chunk
is drawn again; reflow makes the teacher's curved paths straighter; the phases follow the steps."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from test_distill import bimodal_batches, curved_teacher
from test_engine_methods import Quiet, assert_same_trajectory, config, make_bundle, straight_and_killed, toy_batches

from backend.sample.euler import SampleSettings
from backend.train.consistency import consistency_fn
from backend.train.critic import FeatureTap
from backend.train.dmd import DMD2, DmdSettings, dmd_direction, dmd_loss
from backend.train.few_step import mix
from backend.train.ladd import LADD, LaddSettings
from backend.train.loop import Trainer
from backend.train.reflow import CouplingBatches, ReflowInstaFlow, ReflowSettings, make_couplings, straightness

# --- DMD2 ------------------------------------------------------------------------------------------


def test_the_dmd_direction_is_zero_when_the_fake_score_is_the_real_one():
    bundle = make_bundle()
    batch = toy_batches(0)
    gen = torch.Generator().manual_seed(3)
    t, eps = torch.rand(4, generator=gen) * 0.9 + 0.05, torch.randn(batch.latents.shape, generator=gen)
    generator = copy.deepcopy(bundle.net).requires_grad_(True)
    fake = copy.deepcopy(bundle.net)
    x = consistency_fn(bundle, generator, batch.latents, torch.ones(4), batch.prompt)
    g = dmd_direction(bundle, bundle.net, fake, x, t, eps, batch.prompt, None, 1.0)
    assert torch.count_nonzero(g) == 0
    dmd_loss(x, g).backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in generator.parameters())
    # a fake score that disagrees: a non-zero direction, and the surrogate hands x exactly g / numel
    with torch.no_grad():
        for p in fake.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    x = x.detach().requires_grad_(True)
    g = dmd_direction(bundle, bundle.net, fake, x, t, eps, batch.prompt, None, 1.0)
    assert g.abs().mean() > 1e-3
    dmd_loss(x, g).backward()
    torch.testing.assert_close(x.grad, g / g.numel())


def test_the_fake_score_learns_the_generators_samples(tmp_path: Path):
    """The fake network starts as the teacher, which knows the data (two far-apart points); the
    generator here draws something else (an untrained network). After DMD2 steps the fake network's
    flow loss on the generator's samples has fallen well below the teacher's: it models what the
    generator draws, not the data."""
    method = DMD2(DmdSettings(student_steps=1, cfg=1.0, fake_updates=5, fake_lr=3e-3))
    tr = Trainer(curved_teacher(tmp_path / "teacher"), method, bimodal_batches, config(16, ema=0.0, lr=1e-7, checkpoint_every=1000),
                 tmp_path / "s", Quiet())
    tr.model.load_state_dict(make_bundle().net.state_dict())  # a generator unlike the teacher
    teacher = copy.deepcopy(method.fake)

    def flow_loss_on_generator(net) -> float:
        batch = bimodal_batches(50_000)
        gen = torch.Generator().manual_seed(11)
        with torch.no_grad():
            x = consistency_fn(tr.bundle, tr.model, torch.randn(batch.latents.shape, generator=gen), torch.ones(4), batch.prompt)
            total = 0.0
            for t0 in (0.2, 0.4, 0.6, 0.8):
                eps, t = torch.randn(x.shape, generator=gen), torch.full((4,), t0)
                total += float(((tr.bundle.velocity(mix(x, eps, t), t, batch.prompt, net) - (eps - x)) ** 2).mean())
        return total

    start = flow_loss_on_generator(teacher)
    tr.run(resume=False)
    assert flow_loss_on_generator(method.fake) < 0.7 * start


def test_a_killed_dmd_run_resumes_on_the_same_trajectory(tmp_path: Path):
    straight, resumed = straight_and_killed(
        tmp_path, lambda: DMD2(DmdSettings(student_steps=2, cfg=2.0, fake_updates=2, gan_weight=0.1)), steps=5)
    steps = {name: int(next(iter(opt.state_dict()["state"].values()))["step"]) for name, opt in straight.optimizers.items()}
    assert steps == {"fake": 10, "main": 5}
    assert_same_trajectory(straight, resumed)


# --- LADD ------------------------------------------------------------------------------------------


def test_discriminator_steps_separate_real_from_student_latents(tmp_path: Path):
    """The heads read the frozen teacher's features of re-noised latents: data latents against an
    untrained student's. Before training they cannot tell them apart; after a hundred hinge steps
    (with R1) they put fresh pairs on the right side of 0."""
    method = LADD(LaddSettings(student_steps=1, blocks=(0, 1), r1=1e-4, disc_lr=1e-3))
    tr = Trainer(curved_teacher(tmp_path / "teacher"), method, bimodal_batches, config(1, ema=0.0, checkpoint_every=1000), tmp_path / "s", Quiet())
    tr.model.load_state_dict(make_bundle().net.state_dict())  # a student that draws something else than the data
    ones, t = torch.ones(4), torch.full((4,), 0.3)

    def pair(seed: int):
        batch = bimodal_batches(seed)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            student = consistency_fn(tr.bundle, tr.model, torch.randn(batch.latents.shape, generator=gen), ones, batch.prompt)
        return mix(batch.latents, torch.randn(student.shape, generator=gen), t), mix(student, torch.randn(student.shape, generator=gen), t), t, batch.prompt

    def held_out() -> tuple[float, float]:
        got = [method.disc_loss(tr, *pair(seed)) for seed in range(900, 910)]
        return sum(float(loss.detach()) for loss, _ in got) / len(got), sum(acc for _, acc in got) / len(got)

    loss0, acc0 = held_out()
    for seed in list(range(50)) * 2:
        loss, _ = method.disc_loss(tr, *pair(seed))
        tr.update("disc", loss)
    loss1, acc1 = held_out()
    assert acc0 < 0.8 and acc1 >= 0.9 and loss1 < 0.6 * loss0, (loss0, acc0, loss1, acc1)


def test_the_feature_tap_stops_after_the_deepest_block():
    bundle = make_bundle()
    calls = []
    bundle.net.up_blocks[0].register_forward_hook(lambda *a: calls.append(1))
    tap = FeatureTap(bundle.family, bundle.net, [0, 1])
    batch = toy_batches(0)
    feats = tap(lambda: bundle.velocity(batch.latents, torch.full((4,), 0.5), batch.prompt))
    assert [f.shape[-1] for f in feats] == tap.widths == [32, 64] and not calls  # the up blocks never ran
    bundle.velocity(batch.latents, torch.full((4,), 0.5), batch.prompt)
    assert calls  # the tap is off outside its call: the whole network runs


def test_a_killed_ladd_run_resumes_on_the_same_trajectory(tmp_path: Path):
    straight, resumed = straight_and_killed(tmp_path, lambda: LADD(LaddSettings(student_steps=2, cfg=2.0, blocks=(0, 1))), steps=5)
    assert_same_trajectory(straight, resumed)


# --- reflow ----------------------------------------------------------------------------------------


def couplings_of(bundle, folder: Path, n: int = 32, log=lambda m: None):
    prompts = [f"p{i % 4}" for i in range(n)]
    return make_couplings(bundle, prompts, 0, SampleSettings(width=64, height=64, steps=8, cfg=1.0), folder, log, lambda k, t: None, chunk=16)


def test_couplings_are_cached_and_a_damaged_chunk_is_drawn_again(tmp_path: Path):
    bundle = make_bundle()
    logs: list[str] = []
    first = couplings_of(bundle, tmp_path, log=logs.append)
    again = couplings_of(bundle, tmp_path, log=logs.append)
    assert torch.equal(first.x0, again.x0) and torch.equal(first.noise, again.noise)
    (tmp_path / "chunk-00001.safetensors").write_bytes(b"not a tensor file")
    third = couplings_of(bundle, tmp_path, log=logs.append)
    assert torch.equal(first.x0, third.x0)
    assert ["32 drawn now", "0 drawn now", "16 drawn now"] == [m.split("(")[1].split(",")[0] for m in logs]


def test_reflow_straightens_the_teachers_paths(tmp_path: Path):
    bundle = curved_teacher(tmp_path / "teacher")
    c = couplings_of(bundle, tmp_path / "couplings", n=64)
    embeds = bundle.encode_prompts(c.prompts)
    before = straightness(bundle, bundle.net, c, embeds, 1.0)
    method = ReflowInstaFlow(ReflowSettings(reflow_steps=150))
    tr = Trainer(bundle, method, CouplingBatches(c, embeds, 8, (64, 64), 1.0, 0), config(150, ema=0.0, lr=1e-3, checkpoint_every=1000),
                 tmp_path / "s", Quiet())
    tr.run(resume=False)
    after = straightness(bundle, tr.model, c, embeds, 1.0)
    assert after < 0.5 * before, (before, after)


def test_reflow_phases_follow_the_steps_and_a_killed_run_resumes(tmp_path: Path):
    m = ReflowInstaFlow(ReflowSettings(reflow_steps=2, distill_steps=4, l2_share=0.5), distance=lambda a, b: (a - b).abs().flatten(1).mean(1))
    assert [m.phase(k) for k in range(6)] == ["reflow", "reflow", "l2", "l2", "perceptual", "perceptual"]
    assert ReflowInstaFlow(ReflowSettings(reflow_steps=1, distill_steps=2, l2_share=0.0)).phase(1) == "l2"  # no distance: L2 throughout
    bundle = make_bundle()
    c = couplings_of(bundle, tmp_path / "c", n=16)
    embeds = bundle.encode_prompts(c.prompts)

    def make():
        return ReflowInstaFlow(ReflowSettings(reflow_steps=2, distill_steps=4, l2_share=0.5), distance=lambda a, b: (a - b).abs().flatten(1).mean(1))

    straight, resumed = straight_and_killed(tmp_path, make, steps=6, batches=CouplingBatches(c, embeds, 4, (64, 64), 1.0, 0))
    assert_same_trajectory(straight, resumed)


def test_the_perceptual_distance_is_offline_and_says_which_it_is(monkeypatch, tmp_path: Path):
    from backend.train.perceptual import perceptual_distance

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache: LPIPS's backbone is absent
    try:
        perceptual_distance(torch.device("cpu"), "lpips")
        raise AssertionError("LPIPS without its cached backbone must refuse, not download")
    except FileNotFoundError as e:
        assert "nothing is downloaded" in str(e)
    distance, name = perceptual_distance(torch.device("cpu"), "auto")
    assert name.startswith("world-encoder")
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    b = (a + 0.5 * torch.randn(a.shape, generator=gen)).clamp(-1, 1).requires_grad_(True)
    d = distance(a, b)
    assert torch.allclose(distance(a, a), torch.zeros(2), atol=1e-6) and (d > 1e-3).all()
    d.sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0  # it trains the student through the decoder


def test_each_method_saves_a_student_with_its_sampler_and_its_measurements(tmp_path: Path):
    import json

    from backend.jobs import create_job, execute_job
    from backend.recipes import WorldRecipe
    from backend.recipes.distill import DistillRecipe
    from backend.stages.world import add_world_data
    from backend.store import Project

    with Project.init(tmp_path / "p") as project:
        add_world_data(project, WorldRecipe(images=24, seed=0, resolution=(64, 64), subject=False, base_model=True), log=lambda m: None)
        for method, target, extra in [("dmd", 1, {"dmd": {"steps": 2, "fake_updates": 2, "gan_weight": 0.1}}),
                                      ("ladd", 2, {"ladd": {"steps": 2}}),
                                      ("reflow", 1, {"reflow": {"pairs": 8, "reflow_steps": 2, "distill_steps": 2, "l2_share": 0.5}})]:
            recipe = DistillRecipe(method=method, name=method, target_steps=target, eval_images=2, eval_every=2, sample_every=0,
                                   data={"batch_size": 2}, sampler={"steps": 4, "cfg": 3.0, "width": 64, "height": 64}, **extra)
            out = execute_job(project, create_job(project, recipe), echo=False)
            assert out["state"] == "done", (method, out)
            card = json.loads((project.root / "models" / method / "card.json").read_text())
            assert card["method"] == method and card["sampler"]["steps"] == target and card["sampler"]["cfg"] == 1.0
            assert card["sampler"]["kind"] == ("euler" if method == "reflow" else "consistency") and "shapes_eval" in card
        # teacher against student for rating: each draws with its own sampler, and the records say so
        from backend.recipes.pairs import PairsRecipe

        pairs = PairsRecipe(model="models/shapes-base", model_b="models/ladd", prompts_from="list", prompts=["a red circle"],
                            sampler={"steps": 4, "cfg": 3.0, "width": 64, "height": 64})
        assert execute_job(project, create_job(project, pairs), echo=False)["pairs"] == 2
        metas = [json.loads(r[0]) for r in project.db.execute("SELECT meta FROM comparisons").fetchall()]
        assert {(m["a"]["sampler"]["steps"], m["a"]["sampler"]["cfg"], m["b"]["sampler"]["steps"], m["b"]["sampler"]["cfg"],
                 m["b"]["sampler"]["kind"]) for m in metas} == {(4, 3.0, 2, 1.0, "consistency")}
        measured = card["reflow_measured"]
        assert measured["couplings"] == 8 and measured["distance"].startswith("world-encoder") and measured["curvature_after"] >= 0
        assert len(list((project.root / "cache" / "couplings").glob("*/chunk-*.safetensors"))) == 1
