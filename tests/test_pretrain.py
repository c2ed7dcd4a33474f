"""The pretraining engine end to end on tiny sizes: CLI run, rows written, model saved, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, tiny_pretrain_recipe
from safetensors.torch import load_file

from backend.store import Project


def _run(project: Path, recipe_text: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    recipe = tmp_path / f"{name}.toml"
    recipe.write_text(recipe_text)
    return run_cli("run", str(recipe), "--project", str(project), "--name", name)


def _job(project: Path, name: str) -> dict:
    with Project.open(project) as p:
        row = p.db.execute("SELECT * FROM jobs WHERE name = ? ORDER BY id DESC", [name]).fetchone()
        cols = [c[0] for c in p.db.execute("SELECT * FROM jobs LIMIT 0").description]
        return dict(zip(cols, row))


def test_run_writes_metrics_samples_checkpoints_and_a_loadable_model(shapes_project: Path, tmp_path: Path):
    proc = _run(shapes_project, tiny_pretrain_recipe(steps=8), tmp_path, "cli-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    job = _job(shapes_project, "cli-run")
    assert job["state"] == "done" and job["step"] == 8 and job["progress"] == 1.0
    with Project.open(shapes_project) as p:
        keys = {r[0] for r in p.db.execute("SELECT DISTINCT key FROM metrics WHERE job_id = ?", [job["id"]])}
        assert {"loss", "lr", "grad_norm", "images_per_s"} <= keys
        assert any(k.startswith("loss_t/") for k in keys), "loss per timestep bin must be logged"
        assert any(k.startswith("mix/") for k in keys), "the realised mixture must be logged"
        assert "shapes_eval/overall" in keys
        samples = p.db.execute("SELECT step, prompt, seed, image_hash FROM samples WHERE job_id = ?", [job["id"]]).fetchall()
        assert {s[0] for s in samples} == {4, 8} and len(samples) == 4
        assert all(p.blob_path(s[3], "png").exists() for s in samples)
        model = p.db.execute("SELECT path, card FROM models WHERE job_id = ?", [job["id"]]).fetchone()
    assert model is not None
    folder = shapes_project / model[0]
    assert summary["model"] == str(folder)
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    net = SD3Transformer2DModel.from_pretrained(str(folder / "transformer"))
    assert net.config.num_layers == 2
    AutoencoderKL.from_pretrained(str(folder / "vae"))
    card = json.loads(model[1])
    assert card["size"] == [32, 32]  # the Playground opens at the size a model trained at
    assert card["steps"] == 8 and set(card["shapes_eval"]["categories"]) <= {"single_object", "counting", "colour_binding", "spatial", "background"}
    run_dir = shapes_project / job["run_dir"]
    assert (run_dir / "recipe.toml").exists() and (run_dir / "log.txt").read_text()
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert ckpts == ["step-0000004", "step-0000008"]


def test_sample_cli_from_run_and_model_is_deterministic(shapes_project: Path, tmp_path: Path):
    job = _job(shapes_project, "cli-run")
    out1, out2 = tmp_path / "a", tmp_path / "b"
    for out in (out1, out2):
        proc = run_cli("sample", "--project", str(shapes_project), "--model", job["run_dir"], "--prompt", "a red circle", "--seeds", "3", "4", "--steps", "3", "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(p.name for p in out1.glob("*.png"))
    assert len(files) == 2
    assert all((out1 / f).read_bytes() == (out2 / f).read_bytes() for f in files)
    assert (out1 / files[0]).read_bytes() != (out1 / files[1]).read_bytes()
    bad = run_cli("sample", "--model", str(tmp_path / "nope"), "--prompt", "x", "--out", str(tmp_path / "c"))
    assert bad.returncode == 2 and "not found" in bad.stderr


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{step:07d}" / "model.safetensors"))


def test_killed_and_resumed_run_ends_at_the_same_weights(shapes_project: Path, tmp_path: Path):
    straight = _run(shapes_project, tiny_pretrain_recipe(steps=12, checkpoint_every=2, sample_every=100, name="straight"), tmp_path, "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    a_dir = shapes_project / _job(shapes_project, "straight")["run_dir"]

    recipe = tmp_path / "killed.toml"
    recipe.write_text(tiny_pretrain_recipe(steps=12, checkpoint_every=2, sample_every=100, name="killed"))
    proc = subprocess.Popen([sys.executable, "-m", "backend", "run", str(recipe), "--project", str(shapes_project), "--name", "killed"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.time() + 300
    job = None
    while time.time() < deadline:
        try:
            job = _job(shapes_project, "killed")
        except TypeError:
            job = None
        if job and (shapes_project / job["run_dir"] / "checkpoints" / "step-0000006").exists():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the run never reached step 6")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    b_dir = shapes_project / job["run_dir"]
    assert not (b_dir / "checkpoints" / "step-0000012").exists(), "killed too late to test resuming"
    resumed = run_cli("worker", "--project", str(shapes_project), "--job", str(job["id"]))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step-" in (b_dir / "log.txt").read_text()
    wa, wb = _weights(a_dir, 12), _weights(b_dir, 12)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), f"{k} differs after resume"
    assert _job(shapes_project, "killed")["state"] == "done"


def test_max_upscale_keeps_small_images_out_of_large_buckets(shapes_project: Path):
    """The project's 32 px scenes would be enlarged into a 64 px bucket (the nearer in size on a
    tie); with ``data.max_upscale = 1`` they shrink into the 16 px bucket instead, and with only
    the 64 px bucket the stage names why nothing fits."""
    from backend.data.view import load_view
    from backend.recipes import loads_recipe
    from backend.train.curriculum import CurriculumData
    from backend.train.pretrain import build_bundle

    def stage_sizes(max_upscale: str, buckets: str) -> dict:
        text = tiny_pretrain_recipe().replace("buckets = [[32, 32]]", f"buckets = {buckets}")
        text = text.replace("caption_dropout = 0.1", f"caption_dropout = 0.1\n{max_upscale}")
        recipe = loads_recipe(text)
        with Project.open(shapes_project) as proj:
            data = CurriculumData(proj, recipe, build_bundle(recipe), load_view(proj, "shapes", "curated"), log=lambda _m: None)
        return {b.size: b.latents.shape[0] for b in data.stages[0].buckets}

    n = stage_sizes("", "[[16, 16], [64, 64]]")
    assert set(n) == {(64, 64)}
    assert stage_sizes("max_upscale = 1.0", "[[16, 16], [64, 64]]") == {(16, 16): n[(64, 64)]}
    with pytest.raises(ValueError, match="too small for its buckets"):
        stage_sizes("max_upscale = 1.5", "[[64, 64]]")
