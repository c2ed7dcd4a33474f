"""DreamBooth does what METHODS.md §3 says: the subject is learned under its identifier, the prior
term holds the class where the base had it (and without it the class drifts), the frozen-prior
target is the base itself, and a killed run resumes on the same trajectory. The subject test is
exact: it finds the subject in its renders and their VAE round trips, never in base images."""

from __future__ import annotations

from pathlib import Path

import torch
from test_engine_methods import Quiet, assert_same_trajectory, config, make_bundle, straight_and_killed

from backend.models.family import PromptEmbeds, load_model
from backend.paths import shipped_base_dir
from backend.train.dpo import flow_errors
from backend.train.dreambooth import CaptionedLatents, DreamBooth
from backend.train.loop import Trainer
from backend.world.arrays import square_batch
from backend.world.generate import make_scene
from backend.world.render import render
from backend.world.subject import subject_found, subject_instances


def captioned(n: int, seed: int, shift: float) -> CaptionedLatents:
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, 4, 8, 8, generator=gen) * 0.5 + shift
    prompt = PromptEmbeds(torch.randn(1, 3, 384, generator=gen), torch.randn(1, 384, generator=gen), torch.tensor([3]))
    return CaptionedLatents(latents, prompt)


INSTANCE, CLASS = captioned(5, 1, 1.0), captioned(16, 2, -1.0)


def flow_error(bundle, net, data: CaptionedLatents, seed: int) -> float:
    """Flow error on ``data`` for its caption, at fixed draws."""
    gen = torch.Generator().manual_seed(seed)
    x0 = data.latents
    n = x0.shape[0]
    t = torch.rand(n, generator=gen).clamp(0.05, 0.95)
    eps = torch.randn(x0.shape, generator=gen)
    p = data.prompt
    prompt = PromptEmbeds(p.states.expand(n, -1, -1), p.pooled.expand(n, -1), p.lengths.expand(n))
    with torch.no_grad():
        return float(flow_errors(bundle, net, x0, eps, t, prompt).mean())


def class_error(bundle, net) -> float:
    return flow_error(bundle, net, CLASS, 9)


def instance_error(bundle, net) -> float:
    return flow_error(bundle, net, INSTANCE, 10)


def tuned(tmp: Path, prior: str, steps: int = 40) -> Trainer:
    method = DreamBooth(INSTANCE, prior, 1.0, 4, seed=0, lora=False, class_set=CLASS, class_prompt=CLASS.prompt)
    tr = Trainer(make_bundle(), method, lambda *a: None, config(steps, ema=0.0, lr=2e-3, checkpoint_every=100), tmp, Quiet())
    tr.run(resume=False)
    return tr


def test_the_prior_term_holds_the_class_while_the_subject_is_learned(tmp_path: Path):
    base = make_bundle()
    start_inst, start_cls = instance_error(base, base.net), class_error(base, base.net)
    without, with_prior = tuned(tmp_path / "none", "none"), tuned(tmp_path / "prior", "class_images")
    for tr in (without, with_prior):
        assert instance_error(tr.bundle, tr.model) < 0.7 * start_inst  # the subject is learned either way
    drift_without = class_error(without.bundle, without.model) - start_cls
    drift_with = class_error(with_prior.bundle, with_prior.model) - start_cls
    assert drift_without > 0  # the identifier's images pull the class prompt along (language drift)
    assert drift_with < 0.5 * drift_without, (drift_with, drift_without)


def test_the_frozen_prior_targets_the_base_itself(tmp_path: Path):
    """Under LoRA (B = 0 at the start) the policy is the base, so the frozen-prior distance is exactly
    zero before training; training on the subject alone moves it away, the prior term holds it near."""

    def prior_distance(tr: Trainer, method: DreamBooth) -> float:
        with torch.no_grad():
            return float(method._frozen_prior(tr, INSTANCE.latents, torch.Generator().manual_seed(3), 1.0))

    runs = {}
    for weight in (0.0, 10.0):
        method = DreamBooth(INSTANCE, "frozen", weight, 4, seed=0, lora=True, class_prompt=CLASS.prompt)
        tr = Trainer(make_bundle(lora=True), method, lambda *a: None, config(30, ema=0.0, lr=3e-3, checkpoint_every=100), tmp_path / str(weight), Quiet())
        assert prior_distance(tr, method) == 0.0
        tr.run(resume=False)
        runs[weight] = prior_distance(tr, method)
    assert runs[0.0] > 0 and runs[10.0] < 0.5 * runs[0.0], runs


def test_a_killed_dreambooth_run_resumes_on_the_same_trajectory(tmp_path: Path):
    straight, resumed = straight_and_killed(
        tmp_path, lambda: DreamBooth(INSTANCE, "class_images", 1.0, 2, seed=3, lora=False, class_set=CLASS), steps=6)
    assert_same_trajectory(straight, resumed)


def test_the_subject_is_found_in_its_renders_and_round_trips_and_never_in_base_images():
    refs = [img for seed in range(3) for img, _ in subject_instances(seed, 8)]
    assert all(subject_found(img) for img in refs)
    bundle = load_model(shipped_base_dir())
    with torch.no_grad():
        x = bundle.decode_latents(bundle.encode_images(square_batch(refs, 64))).clamp(-1, 1)
    from PIL import Image

    trips = [Image.fromarray(((xx.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()) for xx in x]
    assert sum(subject_found(img) for img in trips) >= 0.9 * len(trips)  # the VAE can carry the subject, so a model can learn it
    assert not any(subject_found(render(make_scene(0, i))) for i in range(400))
