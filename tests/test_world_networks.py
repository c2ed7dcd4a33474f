"""The world's shipped networks meet their thresholds on fresh renders (world seeds never trained
on), ShapesEval scores what it should, FD behaves like a distance, MiniLM loads offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from backend.eval.fd import frechet_distance
from backend.eval.shapes_eval import build_eval_prompts, load_eval_prompts, score
from backend.paths import resources_dir
from backend.world.arrays import render_scenes, square_batch, to_image
from backend.world.generate import place, scene_rng
from backend.world.pretrained import load_detector, load_encoder, load_vae
from backend.world.render import render
from backend.world.spec import SHAPES, Scene
from backend.world.train_detector import attribute_accuracy, degrade
from backend.world.train_vae import evaluate_vae

FRESH_SEED = 777


def test_shipped_weights_are_small_and_carded():
    world = resources_dir() / "world"
    total = sum(p.stat().st_size for p in world.rglob("*") if p.is_file())
    assert total <= 20 * 2**20, f"shipped world weights are {total / 2**20:.1f} MB"
    for part in ("vae", "detector", "encoder"):
        card = json.loads((world / part / "card.json").read_text())
        assert card["steps"] > 0 and "data_seed" in card and card["script"].startswith("signal-backend world")


def test_vae_reconstructs_fresh_renders_above_30_db():
    vae = load_vae()
    stats = evaluate_vae(vae, seed=FRESH_SEED, n=160)
    assert stats["psnr_mean"] >= 30.0, stats
    assert vae.config.latent_channels == 4 and 2 ** (len(vae.config.block_out_channels) - 1) in (4, 8)
    # the scaling factor was measured on the data: normalised latents have unit spread
    z = (stats["latent_std"] * vae.config.scaling_factor)
    assert 0.8 < z < 1.25


def test_detector_reads_fresh_renders_at_98_percent_per_attribute():
    det = load_detector()
    images, scenes = render_scenes(FRESH_SEED, 0, 400)
    acc = attribute_accuracy(det(images), scenes)
    assert min(acc.values()) >= 0.98, acc
    gen = torch.Generator().manual_seed(FRESH_SEED)
    degraded = [to_image(x) for x in degrade(square_batch(images, 64), gen)]
    acc_deg = attribute_accuracy(det(degraded), scenes)
    assert min(acc_deg.values()) >= 0.95, acc_deg


def test_encoder_gives_grids_and_fd_behaves_like_a_distance():
    enc = load_encoder()
    images, _ = render_scenes(FRESH_SEED, 0, 8)
    grid, pooled = enc.tensors(square_batch(images, 64))
    assert grid.shape == (8, enc.dim, 16, 16) and pooled.shape == (8, enc.dim)
    a, _ = render_scenes(FRESH_SEED, 0, 300)
    b, _ = render_scenes(FRESH_SEED + 1, 0, 300)
    fa, fb = enc.pooled(a).numpy(), enc.pooled(b).numpy()
    same = frechet_distance(fa, fa)
    sibling = frechet_distance(fa, fb)
    # a shifted set: the same scenes blurred and darkened, as a weak generator would make them
    gen = torch.Generator().manual_seed(0)
    shifted = [to_image(x * 0.7) for x in degrade(square_batch(b, 64), gen)]
    far = frechet_distance(fa, enc.pooled(shifted).numpy())
    assert same < 1e-6 * max(1.0, sibling)
    assert far > 3 * sibling, (same, sibling, far)


def test_fd_formula_on_gaussians():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    y = rng.normal(loc=[2.0, 0, 0], size=(4000, 3))
    assert frechet_distance(x, y) == pytest.approx(4.0, rel=0.1)


def _placed(spec: dict, seed: int) -> Scene:
    from backend.world.generate import PlacementError

    for attempt in range(50):
        try:
            return place(Scene.from_json(spec), scene_rng(seed, attempt, "eval-test"))
        except PlacementError:
            continue
    raise AssertionError(f"cannot place {spec}")


def test_shapes_eval_passes_true_renders_and_fails_wrong_ones():
    prompts = load_eval_prompts()
    assert {p.category for p in prompts} == {"single_object", "counting", "colour_binding", "spatial", "background"}
    assert [p.prompt for p in prompts] == [p.prompt for p in build_eval_prompts()], "the shipped prompt set must match its generator"
    singles = {(p.spec["groups"][0]["shape"], p.spec["groups"][0]["color"]) for p in prompts if p.category == "single_object"}
    assert len(singles) == 6 * 8 and all(len(p.seeds) >= 4 for p in prompts), "every shape x colour, at least 4 seeds each"
    det = load_detector()
    specs = [p.scene for p in prompts]
    true_images = [render(_placed(p.spec, 1)) for p in prompts]
    good = score(specs, det(true_images))
    assert good.overall >= 0.95 and min(good.categories.values()) >= 0.9, good.categories
    assert good.se["overall"] < 0.02 and all(0 <= v < 0.1 for v in good.se.values())
    wrong_images = true_images[7:] + true_images[:7]  # every image now answers another prompt
    bad = score(specs, det(wrong_images))
    assert bad.overall < 0.3 and bad.lenient["overall"] < 0.3, bad.categories
    assert max(good.extra_objects.values()) <= 0.1, good.extra_objects
    # true renders know their shapes: the swap control is about the strict score itself
    assert good.swap_control >= 0.9 and good.swapped <= 0.05, (good.swap_control, good.swapped)


def test_strict_scoring_fails_an_extra_object_that_lenient_scoring_passes():
    """'a pink square' answered with three pink squares, or with the square plus a stray object:
    GenEval's lenient rule passes it (the promised object is there); the strict headline does not."""
    singles = [p for p in load_eval_prompts() if p.category == "single_object"][::6]
    det = load_detector()
    crowded_specs, stray_specs = [], []
    for i, p in enumerate(singles):
        spec = json.loads(json.dumps(p.spec))
        spec["groups"][0].update(count=3, size="small")
        crowded_specs.append(spec)
        stray = json.loads(json.dumps(p.spec))
        g = stray["groups"][0]
        other = SHAPES[(SHAPES.index(g["shape"]) + 1 + i % 5) % 6]
        stray["groups"] = [dict(g, size="small"), {"shape": other, "color": g["color"], "size": "small", "count": 1}]
        stray_specs.append(stray)
    specs = [p.scene for p in singles]
    tidy, crowded, strayed = (score(specs, det([render(_placed(s, 1)) for s in sp])) for sp in ([p.spec for p in singles], crowded_specs, stray_specs))
    assert tidy.categories["single_object"] >= 0.85 and tidy.lenient["single_object"] >= 0.85
    for cluttered in (crowded, strayed):
        assert cluttered.lenient["single_object"] >= 0.75, cluttered.lenient
        assert cluttered.categories["single_object"] <= 0.15, cluttered.categories
        assert cluttered.extra_objects["single_object"] >= 0.85
    assert tidy.extra_objects["single_object"] <= 0.15
    assert "lenient" in crowded.table() and crowded.to_json()["extra_objects"] == crowded.extra_objects


def test_shape_swap_control_is_near_zero_for_a_model_that_ignores_shape():
    """Renders with the promised colours, counts and places but a random shape: strict accuracy is
    above zero by luck (one in six), and the control says the 'model' knows nothing of shape."""
    import random

    prompts = load_eval_prompts()
    rng = random.Random(0)
    blind = []
    for p in prompts:
        spec = json.loads(json.dumps(p.spec))
        for g in spec["groups"]:
            g["shape"] = rng.choice(SHAPES)
        blind.append(spec)
    report = score([p.scene for p in prompts], load_detector()([render(_placed(s, 1)) for s in blind]))
    assert report.categories["single_object"] > 0.08, report.categories  # chance level, not zero
    assert abs(report.swap_control) <= 2.5 * report.swap_control_se + 0.02, (report.swap_control, report.swap_control_se)


def test_stratified_pairs_keep_every_category_in_a_small_budget():
    from backend.eval.shapes_eval import stratified_pairs

    prompts = load_eval_prompts()
    first = stratified_pairs(prompts, 20)
    cats = [p.category for p, _ in first]
    assert len(first) == 20 and all(cats.count(c) == 4 for c in set(cats)) and len(set(cats)) == 5
    everything = stratified_pairs(prompts)
    assert len(everything) == sum(len(p.seeds) for p in prompts) and len(set((p.id, s) for p, s in everything)) == len(everything)


def test_eval_cli_scores_a_folder(tmp_path: Path):
    run_cli("world", "export", str(tmp_path / "w"), "--n", "30", "--seed", "3", "--resolution", "64x64", "--no-subject", check=True)
    out = run_cli("eval", "shapes", str(tmp_path / "w"), check=True)
    assert "overall" in out.stdout and "single_object" in out.stdout
    report = json.loads((tmp_path / "w" / "shapes_eval.json").read_text())
    assert report["n"] == 30 and report["overall"] >= 0.9
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("eval", "shapes", str(empty))
    assert res.returncode == 2 and "carries a prompt spec" in res.stderr


def test_text_encoder_loads_offline_and_separates_prompts():
    from backend.models.text_encoder import load_text_encoder, minilm_path

    te = load_text_encoder()
    assert te.folder == minilm_path() and (te.folder / "model.safetensors").exists()
    states, mask, pooled = te.encode(["a red circle", "a red circle", "a crimson circle", "four blue stars above a green heart"])
    assert states.shape[:2] == (4, te.max_length) and pooled.shape == (4, te.dim)
    assert torch.allclose(pooled[0], pooled[1])
    sim = pooled @ pooled.T
    assert sim[0, 2] > sim[0, 3]
    with pytest.raises(FileNotFoundError):
        from backend.models.text_encoder import TextEncoder

        TextEncoder("/nonexistent/encoder")


@pytest.mark.parametrize("part", ["vae", "detector", "encoder"])
def test_training_scripts_are_deterministic(part: str, tmp_path: Path):
    from safetensors.torch import load_file

    from backend.world.encoder import train_encoder
    from backend.world.train_detector import train_detector
    from backend.world.train_vae import train_vae

    train = {"vae": train_vae, "detector": train_detector, "encoder": train_encoder}[part]
    name = "diffusion_pytorch_model.safetensors" if part == "vae" else "model.safetensors"
    small_eval = {} if part == "encoder" else {"eval_images": 16}  # the held-out evaluation is not what this tests
    weights = []
    for run in ("a", "b"):
        card = train(tmp_path / run, steps=3, pool=64, log=lambda _m: None, **small_eval)
        assert card["steps"] == 3 and (tmp_path / run / "card.json").exists()
        weights.append(load_file(str(tmp_path / run / name)))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.fixture(scope="module")
def fresh_64px() -> torch.Tensor:
    """16 scenes from a world seed no network trained on, squashed to 64 px."""
    images, _ = render_scenes(FRESH_SEED, 0, 16)
    return square_batch(images, 64)


def test_vae_fine_tune_with_the_blur_term_makes_blurred_latents_decode_closer(tmp_path: Path, fresh_64px: torch.Tensor):
    """``--blur-weight`` fine-tunes the shipped VAE so that a 3x3-blurred latent still decodes to the image."""
    from diffusers import AutoencoderKL

    from backend.world.pretrained import world_part
    from backend.world.train_vae import blurred, train_vae

    x = fresh_64px

    def blurred_error(vae) -> float:
        with torch.no_grad():
            return float(((vae.decode(blurred(vae.encode(x).latent_dist.mode())).sample - x) ** 2).mean())

    before = blurred_error(load_vae())
    card = train_vae(tmp_path / "vae", steps=40, pool=64, lr=1e-3, blur_weight=1.0, init=world_part("vae"), eval_images=24, log=lambda _m: None)
    after = blurred_error(AutoencoderKL.from_pretrained(str(tmp_path / "vae")).eval())
    assert card["blur_weight"] == 1.0 and card["init"]
    assert after < 0.8 * before, (before, after)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_vae(tmp_path / "bad", steps=1, pool=8, init=tmp_path / "nowhere", log=lambda _m: None)


def test_vae_anchor_term_puts_colour_in_a_smooth_latent(tmp_path: Path, fresh_64px: torch.Tensor):
    """``--anchor-weight`` ties latent channels 0-2 to the downsampled image: the anchor error and
    the latent's roughness both fall, and the card records the weight and the roughness."""
    from diffusers import AutoencoderKL

    from backend.world.pretrained import world_part
    from backend.world.train_vae import anchor_error, latent_roughness, train_vae

    x = fresh_64px

    def measure(vae) -> tuple[float, float]:
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            return float(anchor_error(vae, x, z)), latent_roughness(z)

    anchor_before, rough_before = measure(load_vae())
    card = train_vae(tmp_path / "vae", steps=40, pool=64, lr=1e-3, anchor_weight=1.0, init=world_part("vae"), eval_images=24, log=lambda _m: None)
    anchor_after, rough_after = measure(AutoencoderKL.from_pretrained(str(tmp_path / "vae")).eval())
    assert card["anchor_weight"] == 1.0 and card["blur_weight"] == 0.0
    assert anchor_after < 0.5 * anchor_before, (anchor_before, anchor_after)
    assert rough_after < rough_before, (rough_before, rough_after)
    assert 0 < card["latent_roughness"] < 2.5
