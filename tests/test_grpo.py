"""Flow-GRPO does what METHODS.md §2 says: every SDE step is the Gaussian it claims (its log-prob is
that density, and without noise it is the Euler step); advantages are relative within a group and
a group of equal rewards teaches nothing; the clip stops the push once the ratio leaves [1-ε, 1+ε];
a few steps raise the reward it is given; the KL term holds the policy nearer the reference; the
reference never moves; a resumed run continues the same trajectory; with focus, prompts whose
groups all score alike are drawn less, and the rates that decide it survive a resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine_methods import Quiet, config, make_bundle, state_of

from backend.models.family import PromptEmbeds
from backend.sample.sde import gaussian_log_prob, sde_rollout, step_log_prob, step_mean_std
from backend.train.grpo import FlowGRPO, GRPOSettings, group_advantages, ppo_clip_loss
from backend.train.loop import Trainer

PROMPTS = ["a red circle", "a blue square", "two green triangles", "a yellow star"]


def brightness(images, prompts, specs):
    """A black-box reward from outside the method: how bright the image is."""
    r = torch.tensor([float(np.asarray(im.convert("L"), dtype=np.float32).mean()) / 255.0 for im in images])
    return r, {"brightness": r}


def grpo(tmp: Path, steps: int, kl: float = 0.0, lr: float = 3e-3, lora: bool = False, focus: float = 0.0, reward=brightness,
         categories: list[str] | None = None) -> tuple[Trainer, FlowGRPO]:
    settings = GRPOSettings(group_size=4, prompts_per_step=2, sde_steps=4, noise=0.7, clip=0.2, kl=kl, cfg=1.0, minibatches=2, focus=focus)
    weights = [1.0 / categories.count(c) for c in categories] if categories else None  # each category the same total
    method = FlowGRPO(PROMPTS, [None] * len(PROMPTS), reward, settings, (8, 8), seed=0, lora=lora, weights=weights, categories=categories)
    tr = Trainer(make_bundle(lora), method, lambda *a: None, config(steps, ema=0.0, lr=lr, grad_accum=method.trained_steps), tmp, Quiet())
    return tr, method


def test_every_sde_step_is_the_gaussian_it_claims_and_without_noise_it_is_euler():
    bundle = make_bundle()
    cond = bundle.encode_prompts(PROMPTS[:3])
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    traj = sde_rollout(bundle, bundle.net, cond, noise, steps=5, alpha=1.0, a=0.7, cfg=2.0, gen=torch.Generator().manual_seed(1))
    assert traj.latents.shape == (6, 3, 4, 8, 8) and traj.log_probs.shape == (5, 3)
    for k in range(5):
        with torch.no_grad():
            lp, mean, std = step_log_prob(bundle, bundle.net, traj, k, torch.arange(3), cond, a=0.7, cfg=2.0)
        density = torch.distributions.Normal(mean, std).log_prob(traj.latents[k + 1]).mean(dim=(1, 2, 3))
        assert torch.allclose(lp, density, atol=1e-5), k
        assert torch.allclose(lp, traj.log_probs[k], atol=1e-4), k  # the rollout's own log-prob: ratio 1 under the same weights
        z = (traj.latents[k + 1] - mean) / std  # what was drawn is a standard normal around the mean
        assert abs(float(z.mean())) < 0.15 and abs(float(z.std()) - 1) < 0.1, (k, float(z.mean()), float(z.std()))
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mean, std = step_mean_std(x, v, torch.tensor(0.6), torch.tensor(0.4), a=0.0, t_cap=0.9)
    assert torch.allclose(mean, x + (0.4 - 0.6) * v, atol=1e-6) and float(std) == 0.0
    assert float(gaussian_log_prob(mean, mean, torch.tensor(1.0))[0]) > float(gaussian_log_prob(mean + 1, mean, torch.tensor(1.0))[0])


def test_advantages_are_relative_to_the_group_and_equal_groups_collapse():
    adv, collapsed = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]), group_size=4, clip=5.0)
    assert adv[0] > 0 and (adv[1:4] < 0).all() and abs(float(adv[:4].sum())) < 1e-5
    assert torch.equal(adv[4:], torch.zeros(4)) and collapsed.tolist() == [False, True]
    adv, _ = group_advantages(torch.tensor([100.0] + [0.0] * 99), group_size=100, clip=5.0)
    assert float(adv.max()) == 5.0  # one outlier in a big group is clipped


def test_the_clip_stops_the_push_outside_the_trust_region():
    old = torch.zeros(4)
    for shift, adv, pushes in ((0.5, 1.0, False), (-0.5, -1.0, False), (0.05, 1.0, True), (0.5, -1.0, True)):
        lp = torch.full((4,), shift, requires_grad=True)
        loss, ratio = ppo_clip_loss(lp, old, torch.full((4,), adv), clip=0.2)
        loss.backward()
        assert (lp.grad.abs().sum() > 0) == pushes, (shift, adv)


CATEGORIES = ["circles", "others", "others", "others"]


def flat_for_circles(images, prompts, specs):
    """Brightness, except that every circle scores the same: a circle's group never teaches anything."""
    r, _ = brightness(images, prompts, specs)
    r = torch.where(torch.tensor(["circle" in p for p in prompts]), torch.tensor(0.5), r)
    return r, {"flat_for_circles": r}


def test_focus_moves_the_draws_from_groups_that_teach_nothing_to_groups_that_do(tmp_path: Path):
    tr, method = grpo(tmp_path / "plain", steps=1)
    assert torch.equal(method.draw_weights(), torch.ones(4, dtype=torch.float64))  # focus 0: the given weights
    settings = GRPOSettings(group_size=4, prompts_per_step=2, sde_steps=4, focus=0.5)
    weights = [1.0, 1 / 3, 1 / 3, 1 / 3]  # each category the same total
    m = FlowGRPO(PROMPTS, [None] * 4, brightness, settings, (8, 8), seed=0, lora=False, weights=weights, categories=CATEGORIES)
    share = m.draw_weights() / m.draw_weights().sum()
    assert torch.allclose(share, torch.tensor(weights, dtype=torch.float64) / 2)  # rates all 1: the given split
    m.informative = {"circles": 0.0, "others": 1.0}
    share = m.draw_weights() / m.draw_weights().sum()
    assert abs(float(share[0]) - 0.25) < 1e-3 and torch.allclose(share[1:], torch.full((3,), 0.25, dtype=torch.float64), atol=1e-3)
    with pytest.raises(ValueError, match="focus"):
        FlowGRPO(PROMPTS, [None] * 4, brightness, GRPOSettings(focus=1.5), (8, 8), seed=0, lora=False)

    tr, method = grpo(tmp_path / "focus", steps=8, focus=1.0, reward=flat_for_circles, categories=CATEGORIES)
    tr.run()
    assert method.informative["others"] == 1.0  # brightness always differs within a group
    c = method.informative["circles"]
    assert c < 0.9, method.informative  # each circle group collapsed and lowered the rate
    share = method.draw_weights() / method.draw_weights().sum()
    assert abs(float(share[0]) - c / (c + 1.0)) < 1e-6 and float(share[0]) < 0.48  # from the half it had at the start
    summed = torch.stack([share[0], share[1:].sum()])  # the logged category shares are the draws' totals
    assert torch.allclose(method.category_shares(), summed)


def fixed_reward(tr: Trainer, method: FlowGRPO) -> float:
    """Mean reward of the same rollouts (same prompts, noise and SDE draws) under the current weights."""
    return float(method.rollout(tr, torch.Generator().manual_seed(1234))[2].mean())


def kl_to_start(tr: Trainer, method: FlowGRPO, start) -> float:
    """Mean per-step KL between the policy and the starting network on fixed rollouts."""
    traj = None
    gen = torch.Generator().manual_seed(99)
    from backend.sample.sde import sde_rollout

    cond = method.embeds[torch.arange(len(PROMPTS))]
    noise = torch.randn(len(PROMPTS), 4, 8, 8, generator=gen)
    traj = sde_rollout(tr.bundle, start, cond, noise, 4, 1.0, 0.7, 1.0, gen)
    out = []
    with torch.no_grad():
        for k in range(4):
            _, m_pol, std = step_log_prob(tr.bundle, tr.model, traj, k, torch.arange(len(PROMPTS)), cond, 0.7, 1.0)
            _, m_ref, _ = step_log_prob(tr.bundle, start, traj, k, torch.arange(len(PROMPTS)), cond, 0.7, 1.0)
            out.append(float(((m_pol - m_ref) ** 2).mean() / (2 * std**2)))
    return sum(out) / len(out)


def test_a_few_grpo_steps_raise_the_reward_and_the_kl_term_holds_the_policy_to_the_reference(tmp_path: Path):
    tr, method = grpo(tmp_path / "free", steps=12)
    before = fixed_reward(tr, method)
    start = make_bundle().net.eval()
    tr.run()
    after = fixed_reward(tr, method)
    assert after > before + 0.02, (before, after)
    kl_free = kl_to_start(tr, method, start)

    tr2, method2 = grpo(tmp_path / "held", steps=12, kl=50.0)
    tr2.run()
    kl_held = kl_to_start(tr2, method2, start)
    assert kl_held < 0.5 * kl_free, (kl_held, kl_free)
    ref, first = method2.reference.state_dict(), start.state_dict()
    assert all(torch.equal(v, first[k]) for k, v in ref.items()), "the reference must not move"


def test_under_lora_the_reference_is_the_base_and_only_the_adapter_moves(tmp_path: Path):
    tr, method = grpo(tmp_path / "lora", steps=3, kl=1.0, lora=True)
    base = {k: v.clone() for k, v in tr.model.state_dict().items() if "lora_" not in k}
    tr.run()
    now = tr.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in base.items())
    assert any("lora_" in k and v.abs().sum() > 0 for k, v in now.items() if "lora_B" in k)
    from backend.models.lora import adapters_disabled

    cond = PromptEmbeds.cat([make_bundle().encode_prompts(PROMPTS[:1])])
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([0.5])
    with torch.no_grad(), adapters_disabled(tr.model):
        off = tr.bundle.velocity(x, t, cond, tr.model)
    plain = make_bundle()
    with torch.no_grad():
        assert torch.allclose(off, plain.velocity(x, t, cond, plain.net), atol=1e-6)


def test_a_grpo_run_resumes_on_the_same_trajectory(tmp_path: Path):
    # with focus on, which prompts a step draws depends on the rates learnt so far: they must be restored too
    run = dict(steps=6, kl=0.5, focus=1.0, reward=flat_for_circles, categories=CATEGORIES)
    straight, first = grpo(tmp_path / "a", **run)
    straight.run()
    killed = tmp_path / "b"
    shutil.copytree(tmp_path / "a", killed)
    for ck in (killed / "checkpoints").iterdir():
        if ck.name > "step-0000003":
            shutil.rmtree(ck)
    resumed, second = grpo(killed, **run)
    resumed.run(resume=True)
    assert first.informative == second.informative and first.informative["circles"] < 1.0
    a, b = state_of(straight), state_of(resumed)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), [k for k in a if not torch.allclose(a[k], b[k], atol=1e-6)][:5]


def test_an_align_job_tunes_the_shipped_base_with_grpo_under_lora_and_records_its_lineage(tmp_path: Path):
    """The product's way in: an ``align`` recipe with method grpo (detector rule, LoRA) as a job on a
    project holding the shipped base. The job logs the method's curves, draws previews, evaluates
    strictly, and saves a whole model (adapter fused) plus the adapter alone, with a card and a
    models row naming its parent."""
    import json

    from backend.jobs import create_job, execute_job
    from backend.models.family import load_model
    from backend.recipes.align import AlignRecipe
    from backend.stages.world import install_shipped_base
    from backend.store import Project

    with Project.init(tmp_path / "p") as project:
        base_id = install_shipped_base(project, log=lambda m: None)
        recipe = AlignRecipe(method="grpo", name="tuned", model="models/shapes-base", steps=2, lr=1e-3, lora_rank=4, eval_images=4, eval_every=2,
                             sample_every=2, preview={"prompts": ["a red circle"], "seeds": [0], "sampler": {"steps": 2, "width": 64, "height": 64}},
                             grpo={"group_size": 2, "prompts_per_step": 2, "sde_steps": 2, "pool": 4})
        job = create_job(project, recipe, "align")
        summary = execute_job(project, job, echo=False)
        assert summary["state"] == "done" and summary["method"] == "flow-grpo", summary
        keys = {k for (k,) in project.db.execute("SELECT DISTINCT key FROM metrics WHERE job_id = ?", [job])}
        assert {"grpo/reward_mean", "grpo/advantage_collapse", "grpo/kl", "grpo/clip_fraction", "shapes_eval/overall", "loss"} <= keys, keys
        assert project.db.execute("SELECT count(*) FROM samples WHERE job_id = ?", [job]).fetchone()[0] >= 1
        row = project.db.execute("SELECT kind, parent_id, card, path FROM models WHERE id = ?", [summary["model_id"]]).fetchone()
        assert row[0] == "tuned" and row[1] == base_id and row[3] == "models/tuned"
        card = json.loads(row[2])
        assert card["method"] == "flow-grpo" and card["parent"] == "models/shapes-base" and card["lora_rank"] == 4
        assert card["shapes_eval"]["n"] == 4 and card["data"]["rewards"] == {"rule": 1.0}
        folder = project.root / "models" / "tuned"
        assert (folder / "lora" / "pytorch_lora_weights.safetensors").exists() and (folder / "samples.png").exists()
        tuned, base = load_model(folder).net.state_dict(), load_model(project.root / "models" / "shapes-base").net.state_dict()
        assert tuned.keys() == base.keys(), "the saved model is a plain network, adapters fused"
        assert any(not torch.equal(tuned[k], base[k]) for k in base), "the fused adapter changed some weights"


def test_a_promise_reward_scores_only_its_promise_and_weighs_against_the_rule():
    """True renders of spatial prompts scored against their own prompt and against the prompt with
    the relation turned round: 'relation' is 1 then 0, the rule loses one promise's share, and
    'rule=1, relation=2' makes the kept relation worth more than all the rest. A prompt with no
    relation keeps the promise vacuously (a constant, which group advantages cancel)."""
    import json

    from backend.eval.shapes_eval import load_eval_prompts
    from backend.train.rewards import Rewards, parse_rewards
    from backend.world.generate import PlacementError, place, scene_rng
    from backend.world.render import render
    from backend.world.spec import Scene

    turned = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    spatial = [p for p in load_eval_prompts() if p.category == "spatial"][::8]
    singles = [p for p in load_eval_prompts() if p.category == "single_object"][::8]
    images, kept, broken = [], [], []
    for p in spatial + singles:
        for attempt in range(50):
            try:
                images.append(render(place(p.scene, scene_rng(5, attempt, "promise-test"))))
                break
            except PlacementError:
                continue
        kept.append(p.scene)
        other = Scene.from_json(json.loads(json.dumps(p.spec)))
        if other.relation is not None:
            other.relation.kind = turned[other.relation.kind]
        broken.append(other)
    prompts = [p.prompt for p in spatial + singles]
    rewards = Rewards("rule=1, relation=2")
    total_kept, parts_kept = rewards(images, prompts, kept)
    total_broken, parts_broken = rewards(images, prompts, broken)
    n = len(spatial)
    rel_kept, rel_broken = parts_kept["relation"][:n], parts_broken["relation"][:n]
    assert rel_kept.mean() >= 0.85 and rel_broken.mean() <= 0.15, (rel_kept, rel_broken)
    both = (rel_kept == 1) & (rel_broken == 0)  # images whose relation the detector reads
    assert both.sum() >= 0.8 * n
    drop = parts_kept["rule"][:n][both] - parts_broken["rule"][:n][both]
    assert torch.all(drop > 0.1) and torch.all(drop < 0.3), drop  # one promise of four to seven
    assert torch.allclose(total_kept[:n][both] - total_broken[:n][both], drop + 2.0)
    assert torch.all(parts_kept["relation"][n:] == 1) and torch.equal(parts_kept["relation"][n:], parts_broken["relation"][n:])
    assert parse_rewards("rule=1, relation=2") == {"rule": 1.0, "relation": 2.0}
    with pytest.raises(ValueError, match="relation"):
        parse_rewards("")
    with pytest.raises(ValueError, match="'relaton' is neither a rule .*relation.* nor a reward model"):  # a typo says what it could be
        Rewards("rule=1, relaton=2")
