"""Diffusion-DPO (flow form) changes what it should: a few steps on rated pairs lower the policy's
error on the winners relative to the frozen reference more than on the losers, which starts at
exactly zero (policy = reference); under LoRA the reference is the network with its adapter off;
a resumed run continues the same trajectory."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from test_engine_methods import Quiet, config, make_bundle

from backend.train.dpo import DiffusionDPO, RatedPairs, held_out_dpo
from backend.train.loop import Trainer


def pairs(n: int = 12, seed: int = 0) -> RatedPairs:
    gen = torch.Generator().manual_seed(seed)
    return RatedPairs(torch.randn(n, 4, 8, 8, generator=gen), torch.randn(n, 4, 8, 8, generator=gen), torch.randn(n, 3, 384, generator=gen),
                      torch.randn(n, 384, generator=gen), torch.full((n,), 3))


def trainer(tmp: Path, steps: int, lora: bool = False, beta: float = 200.0) -> tuple[Trainer, DiffusionDPO]:
    data = pairs()
    method = DiffusionDPO(data, data, beta=beta, batch_size=6, seed=0, lora=lora)
    return Trainer(make_bundle(lora), method, lambda *a: None, config(steps, ema=0.0, lr=2e-3 if not lora else 5e-3), tmp, Quiet()), method


def margin(tr: Trainer, method: DiffusionDPO) -> dict[str, float]:
    net = tr.accelerator.unwrap_model(tr.model)
    return held_out_dpo(tr, net, method.held, method.beta, method.lora, getattr(method, "reference", None), seed=0)


def test_dpo_steps_lower_the_winners_error_relative_to_the_reference(tmp_path: Path):
    tr, method = trainer(tmp_path / "full", steps=8)
    tr.run()
    after = margin(tr, method)
    assert after["implicit_accuracy"] > 0.7, after  # chance 0.5: the argument is positive on most pairs
    ref = method.reference
    start = make_bundle().net.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in ref.state_dict().items()), "the reference must not move"


def test_policy_equal_to_reference_gives_zero_margin_and_lora_reference_is_the_base(tmp_path: Path):
    from backend.models.lora import adapters_disabled
    from backend.train.dpo import dpo_terms, flow_errors

    tr, method = trainer(tmp_path / "lora", steps=6, lora=True)
    data = pairs(4)
    x_w, x_l, prompt = data.take(torch.arange(4), torch.device("cpu"))
    eps, t = torch.randn(x_w.shape), torch.full((4,), 0.5)
    net = tr.bundle.net
    with torch.no_grad():
        e = [flow_errors(tr.bundle, net, x, eps, t, prompt) for x in (x_w, x_l)]
        with adapters_disabled(net):
            r = [flow_errors(tr.bundle, net, x, eps, t, prompt) for x in (x_w, x_l)]
    loss, arg = dpo_terms(e[0], e[1], r[0], r[1], method.beta)
    assert torch.equal(arg, torch.zeros(4)) and torch.allclose(loss, torch.full((4,), 0.6931), atol=1e-4)  # a fresh adapter is the reference
    tr.run()
    net = tr.accelerator.unwrap_model(tr.model)

    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([0.3, 0.7])
    data = pairs(2)
    prompt = data.take(torch.arange(2), torch.device("cpu"))[2]
    base = make_bundle()
    with torch.no_grad(), adapters_disabled(net):
        off = tr.bundle.velocity(x, t, prompt, net)
    on = tr.bundle.velocity(x, t, prompt, net).detach()
    assert torch.allclose(off, base.velocity(x, t, prompt, base.net), atol=1e-5)  # adapter off = the base exactly
    assert not torch.allclose(on, off, atol=1e-5)  # and the adapter did learn something
    assert margin(tr, method)["implicit_accuracy"] > 0.6


def test_a_dpo_run_resumes_on_the_same_trajectory(tmp_path: Path):
    straight, _ = trainer(tmp_path / "a", steps=6)
    straight.run()
    killed = tmp_path / "b"
    shutil.copytree(tmp_path / "a", killed)
    for ck in (killed / "checkpoints").iterdir():
        if ck.name > "step-0000003":
            shutil.rmtree(ck)
    resumed, _ = trainer(killed, steps=6)
    resumed.run(resume=True)
    a = straight.accelerator.unwrap_model(straight.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_align_jobs_tune_on_the_projects_ratings_with_dpo_and_with_sft_on_the_winners(tmp_path: Path):
    """The stage's way in for the rating-driven methods: decisive judgements (ties and 'both bad' left out
    and counted) become winner/loser latents; a DPO job and an SFT-on-winners job each save a tuned model
    whose card names the parent, the method and the judgements."""
    import json
    import random

    from test_reward import _good_and_bad, _png

    from backend.jobs import create_job, execute_job
    from backend.recipes.align import AlignRecipe
    from backend.stages.world import install_shipped_base
    from backend.store import Project, ratings

    rng = random.Random(1)
    with Project.init(tmp_path / "p") as project:
        base_id = install_shipped_base(project, log=lambda m: None)
        for i in range(30):
            prompt, good, bad = _good_and_bad(4, i)
            hg, hb = project.put_blob(_png(good), "png"), project.put_blob(_png(bad), "png")
            cid = ratings.queue_pair(project.db, prompt, hg, hb)
            ratings.record(project.db, cid, "tie" if i == 0 else "both_bad" if i == 1 else "a", rng.choice("ab"), "me", 300)
        small = {"steps": 3, "eval_images": 0, "sample_every": 0, "eval_every": 3, "batch_size": 4, "model": "models/shapes-base"}
        dpo = execute_job(project, create_job(project, AlignRecipe(method="dpo", name="dpo", **small)), echo=False)
        assert dpo["state"] == "done" and dpo["method"] == "diffusion-dpo" and dpo["judgements"] == 28
        assert dpo["left_out"]["tie"] == 1 and dpo["left_out"]["both_bad"] == 1 and 0.0 <= dpo["heldout"]["implicit_accuracy"] <= 1.0
        sft = execute_job(project, create_job(project, AlignRecipe(method="sft", name="sft", **small)), echo=False)
        assert sft["state"] == "done" and sft["method"] == "sft"
        for name, method in (("dpo", "diffusion-dpo"), ("sft", "sft")):
            kind, parent, card = project.db.execute("SELECT kind, parent_id, card FROM models WHERE name = ?", [name]).fetchone()
            card = json.loads(card)
            assert kind == "tuned" and parent == base_id and card["method"] == method and card["parent"] == "models/shapes-base"
            assert len(json.loads((project.root / "models" / name / "card.json").read_text())["rating_ids"]) == 28
