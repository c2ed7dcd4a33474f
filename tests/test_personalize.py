"""Personalizing as the stage does it: a job on the shipped base and the imported subject draws and
caches the class images, trains a LoRA, measures base and personalized on the same seeds, and saves
an adapter that stock diffusers loads to the same outputs as ours (and a fused model equal to
both); a sample job scales it from the base (0) to as trained (1). Too few subject images is a
clear error that names the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.data.importer import import_sources
from backend.jobs import create_job, execute_job
from backend.models.family import load_model
from backend.recipes import SampleRecipe
from backend.recipes.personalize import PersonalizeRecipe
from backend.stages.world import install_shipped_base
from backend.store import Project
from backend.train.resolve import resolve_model
from backend.world.export import export_world, subject_folder

SMALL = {"steps": 4, "batch_size": 2, "eval_every": 4, "eval_images": 2, "class_eval_images": 4, "sample_every": 2, "preview_seeds": [0],
         "prior": {"mode": "class_images", "class_images": 3}, "lora": {"rank": 4, "alpha": 8},
         "sampler": {"steps": 4}}  # class images, previews and both evaluations: what they measure is not under test here


@pytest.fixture(scope="module")
def project_with_subject(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pz") / "proj"
    with Project.init(root) as project:
        install_shipped_base(project, log=lambda m: None)
        export = root.parent / "world"
        export_world(export, 2, 0, subject=True)
        import_sources(project, "subject", [subject_folder(export)])
    return root


def velocities(net, bundle, seed: int = 0, prompts: tuple[str, str] = ("a sks circle", "a red square")) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=gen)
    prompt = bundle.encode_prompts(list(prompts))
    with torch.no_grad():
        return bundle.velocity(x, torch.tensor([0.3, 0.7]), prompt, net)


def test_a_personalize_job_saves_an_adapter_that_stock_diffusers_loads(project_with_subject: Path):
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    with Project.open(project_with_subject) as project:
        jid = create_job(project, PersonalizeRecipe(name="sks", fused=True, **SMALL))
        out = execute_job(project, jid, echo=False)
        assert out["state"] == "done", out
        folder = project.root / "models" / "sks"
        card = json.loads((folder / "card.json").read_text())
        assert card["parent"] == "models/shapes-base" and card["kind"] == "personalized" and card["instance_prompt"] == "a sks circle"
        for side in ("subject_eval", "base_subject_eval"):
            report = card[side]
            assert 0 <= report["shown"] <= 1 and 0 <= report["leakage"] <= 1 and -1 <= report["fidelity"] <= 1
            assert set(report["context_per_prompt"]) == {"a sks circle on a striped yellow background", "two sks circles",
                                                         "a sks circle left of a red square"}
        kind, parent = project.db.execute("SELECT kind, parent_id FROM models WHERE name = 'sks'").fetchone()
        base_id = project.db.execute("SELECT id FROM models WHERE name = 'shapes-base'").fetchone()[0]
        assert kind == "personalized" and parent == base_id
        previews = project.db.execute("SELECT DISTINCT prompt FROM samples WHERE job_id = ?", [jid]).fetchall()
        assert {"a sks circle left of a red square", "a circle"} <= {p[0] for p in previews}
        cached = list((project.root / "cache" / "class_images").glob("*/*.png"))
        assert len(cached) == 3
        weights = folder / "pytorch_lora_weights.safetensors"
        with safe_open(str(weights), "pt") as f:
            meta = json.loads(f.metadata()["lora_adapter_metadata"])
        assert meta["r"] == 4 and meta["lora_alpha"] == 8 and card["adapter_bytes"] == weights.stat().st_size

        ours, what = resolve_model(project, "models/sks")
        assert "sks" in what
        stock = UNet2DConditionModel.from_pretrained(str(project.root / "models" / "shapes-base" / "unet"), local_files_only=True)
        stock.load_lora_adapter(str(folder), weight_name="pytorch_lora_weights.safetensors", prefix=None)
        base = load_model(project.root / "models" / "shapes-base")
        v_ours, v_stock, v_base = velocities(ours.net, ours), velocities(stock, ours), velocities(base.net, base)
        assert torch.allclose(v_ours, v_stock, atol=1e-5) and not torch.allclose(v_ours, v_base, atol=1e-4)
        fused = load_model(folder / "fused")
        assert torch.allclose(velocities(fused.net, fused), v_ours, atol=1e-4)
        at_zero, _ = resolve_model(project, "models/sks", lora_scale=0.0)
        assert torch.allclose(velocities(at_zero.net, at_zero), v_base, atol=1e-5)
        merged, _ = resolve_model(project, "models/sks", merge=True)  # what a stage training on top starts from
        assert not any("lora_" in n for n, _ in merged.net.named_parameters())
        assert torch.allclose(velocities(merged.net, merged), v_ours, atol=1e-4)

        jid2 = create_job(project, PersonalizeRecipe(name="sks-2", **SMALL))
        again = execute_job(project, jid2, echo=False)
        assert again["state"] == "done" and len(list((project.root / "cache" / "class_images").glob("*/*.png"))) == 3  # reused
        run_dir = project.db.execute("SELECT run_dir FROM jobs WHERE id = ?", [jid2]).fetchone()[0]
        assert "3 class images for 'a circle' from the cache" in (project.root / run_dir / "log.txt").read_text()

        sample = execute_job(project, create_job(project, SampleRecipe(model="models/shapes-base", adapters=["models/sks", "models/sks-2"],
                                                                       lora_scale=0.5, prompts=["a sks circle"], seeds=[0], out="exports/s",
                                                                       sampler={"steps": 2})), echo=False)
        assert sample["state"] == "done" and "sks, sks-2 at scale 0.5" in sample["model"]


def test_too_few_subject_images_is_a_clear_error(project_with_subject: Path):
    with Project.open(project_with_subject) as project:
        jid = create_job(project, PersonalizeRecipe(dataset="nothing-here", **SMALL))
        with pytest.raises(Exception, match="nothing-here"):
            execute_job(project, jid, echo=False)
        state, error = project.db.execute("SELECT state, error FROM jobs WHERE id = ?", [jid]).fetchone()
        assert state == "failed" and "nothing-here" in error


def test_an_sd3_style_adapter_loads_into_a_stock_sd3_transformer(tmp_path: Path):
    """The MMDiT family is diffusers' SD3Transformer2DModel: an adapter saved the way the stage saves it
    loads into the stock class (from_pretrained + load_lora_adapter) and gives the same outputs. The
    stock attention has no key mask for padded text, so both prompts have one token length here."""
    from diffusers import SD3Transformer2DModel

    from backend.models.family import build_embedded
    from backend.models.lora import add_lora, save_lora

    bundle = build_embedded("tiny", family="mmdit", seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in bundle.net.parameters():
            if not p.abs().sum():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))  # the zero-initialised output layers, as if trained
    bundle.net.save_pretrained(tmp_path / "transformer")
    add_lora(bundle.net, bundle.family, rank=4, alpha=8)
    with torch.no_grad():
        for name, p in bundle.net.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))  # as if trained
    save_lora(bundle.net, tmp_path / "adapter")
    stock = SD3Transformer2DModel.from_pretrained(str(tmp_path / "transformer"), local_files_only=True)
    stock.load_lora_adapter(str(tmp_path / "adapter"), weight_name="pytorch_lora_weights.safetensors", prefix=None)
    same_length = ("a red circle", "a blue square")
    assert len(set(bundle.encode_prompts(list(same_length)).lengths.tolist())) == 1
    ours, theirs = velocities(bundle.net, bundle, prompts=same_length), velocities(stock, bundle, prompts=same_length)
    plain = velocities(SD3Transformer2DModel.from_pretrained(str(tmp_path / "transformer"), local_files_only=True), bundle, prompts=same_length)
    assert torch.allclose(ours, theirs, atol=1e-5) and not torch.allclose(ours, plain, atol=1e-4)
