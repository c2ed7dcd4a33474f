"""Real families from local stock folders (tiny random SD3 and FLUX.1 built offline): a full
fine-tune through the product's ``run`` saves a folder the stock pipeline loads and draws the same
image from as our sampler; a LoRA (a personalization) loads with ``pipe.load_lora_weights`` to the
same image; a folder that cannot train (a missing text encoder, a quantized or pickled transformer,
more memory than the machine has) or a recipe that mis-names its family is refused before a job
exists, with the fix."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from backend.jobs import create_job, execute_job
from backend.models.family import load_model
from backend.models.tiny_folders import build_tiny_folder
from backend.recipes import RecipeError, dumps_recipe, loads_recipe
from backend.recipes.personalize import PersonalizeRecipe
from backend.sample.euler import SampleSettings, generate
from backend.store import Project

CFG = 2.0


def stock_recipe(family: str, folder: Path | str, name: str, steps: int = 4, **over) -> str:
    shift = '"fixed"\nalpha = 3.0' if family == "sd3" else '"dynamic"'
    return f"""
kind = "pretrain"
name = "{name}"
[data]
dataset = "shapes"
[model]
family = "{family}"
path = "{folder}"
[allocation.shift]
kind = {over.get('shift', shift)}
[[curriculum]]
steps = {steps}
buckets = [[32, 32]]
[optim]
batch_size = {over.get('batch', 4)}
lr = 0.001
warmup = 1
ema = 0.0
[schedule]
log_every = 1
checkpoint_every = {steps}
sample_every = {steps}
eval_images = 2
[preview]
prompts = ["a red circle"]
seeds = [0]
[preview.sampler]
steps = 3
cfg = {CFG}
width = 32
height = 32
[compute]
processes = {over.get('processes', 1)}
threads = {over.get('threads', 0)}
"""


def pipeline(family: str, folder: Path):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    pipe = {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}[family].from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_image(pipe, prompt: str, seed: int) -> np.ndarray:
    return pipe(prompt, num_inference_steps=4, height=32, width=32, guidance_scale=CFG, generator=torch.Generator().manual_seed(seed),
                output_type="np").images[0]


def our_image(bundle, prompt: str, seed: int) -> np.ndarray:
    img = generate(bundle, [prompt], [seed], SampleSettings(width=32, height=32, steps=4, cfg=CFG))[0]
    return np.asarray(img).astype(np.float32) / 255


def same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to our 8-bit rounding (the pipeline returns floats)."""
    return float(np.abs(a - b).max()) <= 1.5 / 255


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_stock_folder_trains_through_run_and_stock_diffusers_draws_the_same_image(family: str, shapes_project: Path, tmp_path: Path):
    source = build_tiny_folder(tmp_path / f"tiny-{family}", family)
    recipe = tmp_path / "r.toml"
    recipe.write_text(stock_recipe(family, source, f"{family}-ft"))
    proc = run_cli("run", str(recipe), "--project", str(shapes_project), "--name", f"{family}-ft")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Project.open(shapes_project) as p:
        path = p.db.execute("SELECT path FROM models WHERE name = ? ORDER BY id DESC", [f"{family}-ft"]).fetchone()[0]
    saved = shapes_project / path
    info = json.loads((saved / "signal_model.json").read_text())
    assert info["family"] == family and json.loads((saved / "model_index.json").read_text())["_class_name"] in ("StableDiffusion3Pipeline", "FluxPipeline")
    # the frozen parts are the source's files (hard links), the transformer is the trained one
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert (saved / vae).stat().st_ino == (source / vae).stat().st_ino
    trained, original = load_model(saved), load_model(source)
    moved = max((a - b).abs().max().item() for a, b in zip(trained.net.parameters(), original.net.parameters()))
    assert moved > 1e-4, moved
    for prompt, seed in (("a red circle", 0), ("two blue squares on a striped background", 3)):
        assert same_image(our_image(trained, prompt, seed), stock_image(pipeline(family, saved), prompt, seed))


@pytest.fixture(scope="module")
def subject_project(tmp_path_factory) -> Path:
    from backend.data.importer import import_sources
    from backend.world.export import export_world, subject_folder

    root = tmp_path_factory.mktemp("real-pz") / "proj"
    with Project.init(root) as project:
        export_world(root.parent / "world", 2, 0, subject=True)
        import_sources(project, "subject", [subject_folder(root.parent / "world")])
    return root


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_lora_of_a_stock_model_loads_with_load_lora_weights_and_draws_the_same_image(family: str, subject_project: Path, tmp_path: Path):
    from safetensors import safe_open

    from backend.train.resolve import resolve_model

    source = build_tiny_folder(tmp_path / f"tiny-{family}", family)
    small = {"steps": 4, "batch_size": 2, "eval_every": 4, "eval_images": 1, "class_eval_images": 0, "sample_every": 0, "preview_seeds": [0],
             "prior": {"mode": "none"}, "lora": {"rank": 4, "alpha": 8}, "lr": 0.01, "sampler": {"steps": 2, "width": 32, "height": 32, "cfg": CFG}}
    with Project.open(subject_project) as project:
        jid = create_job(project, PersonalizeRecipe(name=f"sks-{family}", model=str(source), fused=True, **small))
        out = execute_job(project, jid, echo=False)
        assert out["state"] == "done", out
        folder = project.root / "models" / f"sks-{family}"
        with safe_open(str(folder / "pytorch_lora_weights.safetensors"), "pt") as f:
            assert all(k.startswith("transformer.") for k in f.keys())  # the pipeline format other diffusers tools read
        ours, what = resolve_model(project, f"models/sks-{family}")
        assert "sks" in what
        prompt, seed = "a sks circle", 5
        mine = our_image(ours, prompt, seed)
    pipe = pipeline(family, source)
    plain = stock_image(pipe, prompt, seed)
    pipe.load_lora_weights(str(folder))
    assert same_image(mine, stock_image(pipe, prompt, seed))
    assert not same_image(mine, plain)  # the adapter changes what is drawn
    assert same_image(mine, stock_image(pipeline(family, folder / "fused"), prompt, seed))


def _refused(project: Path, text: str) -> str:
    with Project.open(project) as p:
        before = p.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        with pytest.raises(RecipeError) as err:
            create_job(p, loads_recipe(text))
        assert p.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == before  # no job, no run folder
    return str(err.value)


def test_a_folder_that_cannot_train_is_refused_before_work_starts_with_the_fix(shapes_project: Path, tmp_path: Path):
    source = build_tiny_folder(tmp_path / "tiny", "sd3")
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    shutil.rmtree(broken / "text_encoder_3")
    msg = _refused(shapes_project, stock_recipe("sd3", broken, "x"))
    assert "text_encoder_3/ is missing (the T5 text encoder)" in msg and "model.init" in msg

    shutil.copytree(source / "text_encoder_3", broken / "text_encoder_3")
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [16], "data_offsets": [0, 16]}}).encode()
    weights.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    msg = _refused(shapes_project, stock_recipe("sd3", broken, "x"))
    assert "stored as F8_E4M3" in msg and "unquantized" in msg

    weights.unlink()
    (broken / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"not unpickled")
    msg = _refused(shapes_project, stock_recipe("sd3", broken, "x"))
    assert "no .safetensors weights" in msg and "never unpickled" in msg

    # 60 G parameters declared in the header of a sparse file: refused from the header, nothing read or allocated
    (broken / "transformer" / "diffusion_pytorch_model.bin").unlink()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [60_000_000_000], "data_offsets": [0, 120_000_000_000]}}).encode()
    with open(weights, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + 120_000_000_000)
    msg = _refused(shapes_project, stock_recipe("sd3", broken, "x"))
    needed = float(msg.split("training needs about ")[1].split(" GiB")[0])
    assert needed > 60e9 * 16 / 2**30 * 0.99, msg  # float32 weights, gradients and AdamW's two moments: 16 bytes a parameter
    assert "train a LoRA instead" in msg and "optim.batch_size" in msg
    # the later stages plan their own memory: a LoRA holds the frozen weights, DMD a teacher and a trained fake-score network
    msg = _refused(shapes_project, f'kind = "personalize"\nmodel = "{broken}"\n')
    needed = float(msg.split("training needs about ")[1].split(" GiB")[0])
    assert 60e9 * 4 / 2**30 < needed < 60e9 * 5 / 2**30, msg  # float32 frozen weights and a little: no gradients, no states
    assert "smaller batch_size" in msg and "LoRA instead" not in msg
    msg = _refused(shapes_project, f'kind = "distill"\nmethod = "dmd"\nmodel = "{broken}"\n')
    needed = float(msg.split("training needs about ")[1].split(" GiB")[0])
    assert needed > 60e9 * 36 / 2**30 * 0.99, msg  # student 16 bytes a parameter, teacher 4, fake-score network 16
    assert "fake-score network" in msg and "data.batch_size" in msg


def test_a_recipe_that_misnames_its_family_or_shift_is_refused(shapes_project: Path, tmp_path: Path):
    source = build_tiny_folder(tmp_path / "tiny", "flux")
    with pytest.raises(RecipeError, match="set model.init to its local diffusers folder"):
        loads_recipe(stock_recipe("flux", "", "x"))
    with pytest.raises(RecipeError, match="per_bucket.*cannot be written into a stock FLUX scheduler"):
        loads_recipe(stock_recipe("flux", source, "x", shift='"per_bucket"'))
    msg = _refused(shapes_project, stock_recipe("flux", source, "x").replace('family = "flux"', 'family = "mmdit"'))
    assert "set model.family = 'flux'" in msg
    with pytest.raises(RecipeError, match="cannot be set for family 'sd3'"):
        loads_recipe(stock_recipe("sd3", source, "x").replace("[model]", "[model]\nlayers = 3"))


def _metric(project: Path, name: str, key: str) -> list[float]:
    with Project.open(project) as p:
        jid = p.db.execute("SELECT id FROM jobs WHERE name = ? ORDER BY id DESC", [name]).fetchone()[0]
        return [r[0] for r in p.db.execute("SELECT value FROM metrics WHERE job_id = ? AND key = ? ORDER BY step", [jid, key])]


def test_two_processes_train_exactly_what_one_process_of_twice_the_batch_does(shapes_project: Path, tmp_path: Path):
    """DDP through accelerate launch on two CPU processes (accelerate runs FSDP on CUDA only): each
    process keeps its half of one step-wide draw (items, caption dropout, timesteps, noise) and the
    logged figures are the whole step's, so the trajectory matches one process of batch 8."""
    source = build_tiny_folder(tmp_path / "tiny", "sd3")
    for name, processes, batch in (("ddp-one", 1, 8), ("ddp-two", 2, 4)):
        recipe = tmp_path / f"{name}.toml"
        recipe.write_text(stock_recipe("sd3", source, name, steps=3, batch=batch, processes=processes, threads=1))
        proc = run_cli("run", str(recipe), "--project", str(shapes_project), "--name", name, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _metric(shapes_project, "ddp-two", "replicas/processes") == [2.0]
    for key in ("loss/flow", "grad_norm"):
        one, two = _metric(shapes_project, "ddp-one", key), _metric(shapes_project, "ddp-two", key)
        assert len(one) == len(two) == 3 and len(set(one)) == 3, (one, two)  # three different steps, each matched
        assert np.allclose(one, two, rtol=1e-5, atol=1e-6), (key, one, two)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_real_folder_goes_through_align_and_distill_and_the_student_loads_in_stock_diffusers(family: str, shapes_project: Path, tmp_path: Path):
    """Tune (Flow-GRPO with its SDE rollouts; SFT as a LoRA) and distill (DMD) a real family as any
    other model: each stage finishes, the LoRA loads with ``load_lora_weights``, the one-step student
    is a stock folder that draws in one step."""
    from backend.recipes import parse_recipe

    source = build_tiny_folder(tmp_path / f"tiny-{family}", family)
    sampler = {"width": 32, "height": 32, "steps": 2, "cfg": CFG}
    data = {"dataset": "shapes", "view": "all", "batch_size": 2, "source": "dataset"}
    recipes = [
        {"kind": "align", "method": "grpo", "model": str(source), "steps": 1, "eval_images": 0, "sampler": sampler, "name": f"{family}-grpo",
         "grpo": {"group_size": 2, "prompts_per_step": 1, "sde_steps": 2, "minibatches": 1, "pool": 4}},
        {"kind": "align", "method": "sft", "model": str(source), "steps": 2, "lora_rank": 4, "eval_images": 0, "data": data, "sampler": sampler,
         "name": f"{family}-sft"},
        {"kind": "distill", "method": "dmd", "model": str(source), "target_steps": 1, "dmd": {"steps": 1, "fake_updates": 1}, "data": data,
         "sampler": sampler, "eval_images": 0, "name": f"{family}-dmd"},
    ]
    with Project.open(shapes_project) as project:
        for recipe in recipes:
            out = execute_job(project, create_job(project, parse_recipe(recipe)), echo=False)
            assert out["state"] == "done", (recipe["name"], out)
    models = shapes_project / "models"
    pipe = pipeline(family, source)
    pipe.load_lora_weights(str(models / f"{family}-sft" / "lora"))
    assert stock_image(pipe, "a red circle", 0).shape == (32, 32, 3)
    student = pipeline(family, models / f"{family}-dmd")
    image = student("a red circle", num_inference_steps=1, height=32, width=32, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert json.loads((models / f"{family}-dmd" / "card.json").read_text())["kind"] == "distilled" and np.isfinite(image).all()


def test_a_lora_over_bf16_frozen_weights_trains_in_float32_and_loads_in_stock_diffusers(subject_project: Path, tmp_path: Path):
    """What a GPU run of a LoRA on a real model does by default ('auto'), forced here on the CPU: the
    frozen transformer in bfloat16 (half its memory), the adapter in float32 under bf16 autocast, and
    previews, evaluation and the saved adapter all work."""
    import struct

    source = build_tiny_folder(tmp_path / "tiny-sd3", "sd3")
    small = {"steps": 4, "batch_size": 2, "eval_every": 4, "eval_images": 1, "class_eval_images": 0, "sample_every": 2, "preview_seeds": [0],
             "prior": {"mode": "none"}, "lora": {"rank": 4, "alpha": 8, "base_dtype": "bfloat16"}, "lr": 0.01,
             "sampler": {"steps": 2, "width": 32, "height": 32, "cfg": CFG}}
    recipe = tmp_path / "bf16.toml"
    recipe.write_text(dumps_recipe(PersonalizeRecipe(name="sks-bf16", model=str(source), **small)))
    # its own process, as every job runs (the service's workers, 'run'): a process keeps one accelerate precision
    proc = run_cli("run", str(recipe), "--project", str(subject_project))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Project.open(subject_project) as project:
        jid = project.db.execute("SELECT id FROM jobs WHERE name = 'sks-bf16'").fetchone()[0]
        run_dir = project.db.execute("SELECT run_dir FROM jobs WHERE id = ?", [jid]).fetchone()[0]
        assert "frozen weights in bfloat16, the adapter in float32" in (project.root / run_dir / "log.txt").read_text()
        previews = project.db.execute("SELECT COUNT(*) FROM samples WHERE job_id = ?", [jid]).fetchone()[0]
        folder = project.root / "models" / "sks-bf16"
    assert previews > 0
    with open(folder / "pytorch_lora_weights.safetensors", "rb") as fh:
        header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F32"}
    pipe = pipeline("sd3", source)
    plain = stock_image(pipe, "a sks circle", 5)
    pipe.load_lora_weights(str(folder))
    assert not same_image(stock_image(pipe, "a sks circle", 5), plain)


def test_gradient_checkpointing_trains_the_same_trajectory_with_less_kept(shapes_project: Path, tmp_path: Path):
    """``compute.gradient_checkpointing`` recomputes each block in the backward pass: the same losses and
    gradient norms step by step as without it (a broken recomputation would change the gradients)."""
    source = build_tiny_folder(tmp_path / "tiny", "sd3")
    for name, on in (("ckpt-off", "false"), ("ckpt-on", "true")):
        recipe = tmp_path / f"{name}.toml"
        recipe.write_text(stock_recipe("sd3", source, name, steps=3).replace("[compute]", f"[compute]\ngradient_checkpointing = {on}"))
        proc = run_cli("run", str(recipe), "--project", str(shapes_project), "--name", name)
        assert proc.returncode == 0, proc.stderr[-3000:]
    with Project.open(shapes_project) as p:
        logs = {n: (shapes_project / p.db.execute("SELECT run_dir FROM jobs WHERE name = ? ORDER BY id DESC", [n]).fetchone()[0] / "log.txt").read_text()
                for n in ("ckpt-off", "ckpt-on")}
    assert "gradient checkpointing on" in logs["ckpt-on"] and "gradient checkpointing on" not in logs["ckpt-off"]
    for key in ("loss/flow", "grad_norm"):
        off, on = _metric(shapes_project, "ckpt-off", key), _metric(shapes_project, "ckpt-on", key)
        assert len(off) == 3 and len(set(off)) == 3 and np.allclose(off, on, rtol=1e-5, atol=1e-6), (key, off, on)
