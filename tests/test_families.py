"""Both embedded families behind one interface: a prompt means the same however it is padded, the
UNet family saves in the diffusers layout and loads back with stock diffusers, trains through the
product's own ``run`` (REPA included) with a falling loss, and ``model.family`` is a real choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli, tiny_pretrain_recipe

from backend.models.family import PromptEmbeds, build_embedded, load_model
from backend.recipes import RecipeError, loads_recipe
from backend.store import Project

LONG = "three small red circles above a large green triangle on a striped yellow background"


def _nudge(net: torch.nn.Module) -> None:
    """Fresh networks start at v = 0 (adaLN-Zero, zero output layers); give every weight a value."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("family", ["mmdit", "unet"])
def test_a_prompt_predicts_the_same_whatever_it_is_padded_to(family: str):
    bundle = build_embedded("tiny", family=family, patch=2, seed=0)
    net = bundle.net.eval()
    _nudge(net)
    alone = bundle.encode_prompts(["a red circle"])
    both = bundle.encode_prompts(["a red circle", LONG])
    assert int(both.lengths[1]) > int(both.lengths[0]) + 8
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.6])
    with torch.no_grad():
        v_alone = bundle.velocity(x, t, alone)
        v_padded = bundle.velocity(torch.cat([x, x]), t.repeat(2), both)[:1]
        # the same padded batch with the mask taken away: the padding changes the prediction
        unmasked = PromptEmbeds(both.states[:, : int(both.lengths.max())], both.pooled, None)
        v_unmasked = bundle.velocity(torch.cat([x, x]), t.repeat(2), unmasked)[:1]
    assert torch.allclose(v_alone, v_padded, atol=1e-5), (v_alone - v_padded).abs().max()
    assert (v_alone - v_unmasked).abs().max() > 1e-3


def test_unet_family_saves_in_the_diffusers_layout_and_loads_with_stock_diffusers(tmp_path: Path):
    from diffusers import UNet2DConditionModel

    bundle = build_embedded("tiny", family="unet", seed=0)
    _nudge(bundle.net)
    folder = bundle.save(tmp_path / "m")
    assert (folder / "unet" / "config.json").exists() and not (folder / "transformer").exists()
    assert json.loads((folder / "signal_model.json").read_text())["family"] == "unet"
    stock = UNet2DConditionModel.from_pretrained(str(folder / "unet"), local_files_only=True).eval()
    ours = load_model(folder)
    assert ours.family.name == "unet"
    prompt = ours.encode_prompts(["a blue star"])
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([0.3])
    with torch.no_grad():
        v_ours = ours.velocity(x, t, prompt)
        v_stock = stock(x, t * 1000, encoder_hidden_states=prompt.states[:, : int(prompt.lengths[0])], class_labels=prompt.pooled).sample
        v_built = bundle.velocity(x, t, prompt, bundle.net.eval())
    assert torch.allclose(v_ours, v_stock, atol=1e-6) and torch.allclose(v_ours, v_built, atol=1e-6)
    assert v_ours.abs().max() > 0


def test_unet_family_trains_through_run_with_repa_and_its_loss_falls(shapes_project: Path, tmp_path: Path):
    recipe = tmp_path / "unet.toml"
    recipe.write_text(tiny_pretrain_recipe(family="unet", steps=40, name="unet-run", repa=True, lr=0.003, checkpoint_every=40, sample_every=40))
    proc = run_cli("run", str(recipe), "--project", str(shapes_project), "--name", "unet-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Project.open(shapes_project) as p:
        job = p.db.execute("SELECT id FROM jobs WHERE name = 'unet-run' ORDER BY id DESC").fetchone()[0]
        loss = [v for _, v in p.db.execute("SELECT step, value FROM metrics WHERE job_id = ? AND key = 'loss/flow' ORDER BY step", [job])]
        align = [v for _, v in p.db.execute("SELECT step, value FROM metrics WHERE job_id = ? AND key = 'repa/alignment' ORDER BY step", [job])]
        path = p.db.execute("SELECT path FROM models WHERE job_id = ?", [job]).fetchone()[0]
    assert len(loss) == 20 and sum(loss[-4:]) / 4 < 0.8 * sum(loss[:4]) / 4, loss
    assert align and align[-1] > align[0], align  # the projector learns to align the UNet's first level
    assert (shapes_project / path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert load_model(shapes_project / path).family.name == "unet"


def test_model_family_is_a_real_choice():
    base = 'kind = "pretrain"\n[model]\n'
    assert loads_recipe(base + 'family = "unet"\n').model.family == "unet"
    assert loads_recipe(base + 'family = "embedded"\n').model.family == "mmdit"  # recipes from before the UNet family
    for bad, why in (('family = "sd3"', "set model.init to its local diffusers folder"), ('family = "mmdit"\nchannels = [32, 64]', "UNet family"),
                     ('family = "unet"\nheads = 4', "MMDiT family"), ('family = "gan"', "family")):
        with pytest.raises(RecipeError) as info:
            loads_recipe(base + bad + "\n")
        assert why in str(info.value), str(info.value)
    # a UNet of three levels halves the latent twice: 4 x 4 = 16 px sides
    with pytest.raises(RecipeError) as info:
        loads_recipe(base + 'family = "unet"\nsize = "small"\n[[curriculum]]\nbuckets = [[40, 40]]\n')
    assert "multiples of 16" in str(info.value)
