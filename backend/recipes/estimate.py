"""How big a recipe's model is and how long it will take, without building anything.

Parameter counts follow the SD3 joint block (attention and MLP for image and text streams
plus adaLN modulation: ~33 d^2 per block); time follows 6 x params x tokens x images at a
throughput measured on this project's reference machine (see bench/train_step.py). It is an
estimate for the wizard ("about N minutes"), not a promise.
"""

from __future__ import annotations

from typing import Any

from .pretrain import PretrainRecipe

PRESETS = {"tiny": (2, 2, 32), "small": (4, 4, 32), "base": (6, 6, 32)}  # layers, heads, head_dim
# UNet presets (backend/models/unet.py): parameters and forward FLOPs of one 64x64 image, measured with
# torch.utils.flop_counter on diffusers 0.42; convolutions scale with the latent pixel count
UNET_PRESETS = {"tiny": (1_231_460, 165.7e6), "small": (4_649_188, 263.2e6), "base": (7_338_692, 665.6e6)}
TEXT_DIM = 384
TEXT_TOKENS = 32
LATENT_CHANNELS = 4
CPU_FLOPS_PER_CORE = 60e9  # effective training FLOP/s per core: 130 GFLOP/s on 2 cores in bench/train_step.py (small, batch 32, 32 px)
GPU_FLOPS = 200e12  # a conservative effective rate for a modern GPU


def mmdit_params(layers: int, heads: int, head_dim: int, text_dim: int = TEXT_DIM, channels: int = LATENT_CHANNELS, patch: int = 2) -> int:
    d = heads * head_dim
    per_block = 33 * d * d  # measured: 32.2 d^2 (small) to 33.6 d^2 (base) in diffusers 0.42
    embed = (channels * patch * patch) * d + text_dim * d + 2 * text_dim * d + 256 * d + 2 * d * d
    head = d * 2 * d + d * patch * patch * channels
    return layers * per_block + embed + head


def estimate(recipe: PretrainRecipe, cores: int = 2, gpu: bool = False, stock: dict[str, int] | None = None) -> dict[str, Any]:
    """Parameters, FLOPs and duration of a pretrain recipe. ``stock`` (a real model's transformer
    parameters, pixels per token and text tokens, from ``backend.models.memory``) replaces the
    embedded presets' sizes."""
    m = recipe.model
    layers, heads, head_dim = PRESETS[m.size]
    unet = m.family == "unet"
    text_tokens = TEXT_TOKENS
    if stock is not None:
        params, stride, text_tokens = stock["params"], stock["pixels_per_token"], stock["text_tokens"]
    else:
        params = UNET_PRESETS[m.size][0] if unet else mmdit_params(m.layers or layers, m.heads or heads, m.head_dim or head_dim, patch=m.patch)
        stride = 4 * m.patch  # VAE 4x, then patches
    flops = 0.0
    stages = []
    images_per_stage = recipe.optim.batch_size * recipe.optim.grad_accum * recipe.compute.processes * recipe.compute.machines
    for st in recipe.curriculum:
        if unet:  # forward + backward = 3 forwards, measured forward cost scaled by pixels
            pixels = sum(w * h for w, h in st.buckets) / len(st.buckets)
            tokens = pixels / 16  # latent pixels
            f = 3 * UNET_PRESETS[m.size][1] * pixels / 4096 * images_per_stage * st.steps
        else:
            tokens = sum((w // stride) * (h // stride) for w, h in st.buckets) / len(st.buckets) + text_tokens
            f = 6 * params * tokens * images_per_stage * st.steps
        flops += f
        stages.append({"name": st.name, "steps": st.steps, "tokens": tokens})
    rate = GPU_FLOPS if gpu else CPU_FLOPS_PER_CORE * max(1, cores)
    seconds = flops / rate * 1.15  # + previews, evaluation and checkpoints
    return {"params": params, "steps": recipe.total_steps, "stages": stages, "seconds": seconds, "flops": flops}


def model_params(info: dict[str, Any]) -> int:
    """Parameters of a saved model from its ``signal_model.json`` (top level or its card); 0 if unknown."""
    return int(info.get("params") or (info.get("card") or {}).get("params") or 0)


def forward_flops(info: dict[str, Any], width: int, height: int) -> float:
    """FLOPs of one forward pass of a saved model (its ``signal_model.json``) on one image."""
    params = model_params(info) or UNET_PRESETS["small"][0]
    pixels = width * height
    if info.get("family") == "unet":
        # the measured preset nearest in size, scaled by parameters and pixels
        p, f = min(UNET_PRESETS.values(), key=lambda pf: abs(pf[0] - params))
        return f * params / p * pixels / 4096
    if info.get("family") in ("sd3", "flux"):  # a real release: 8x VAE, 2x2 patches; CLIP's 77 + T5's 256 tokens (SD3), T5's 512 (FLUX)
        return 2.0 * params * (pixels / 256 + (333 if info["family"] == "sd3" else 512))
    return 2.0 * params * (pixels / (8 * 8 * 4) + TEXT_TOKENS)


def estimate_align(recipe: Any, info: dict[str, Any], cores: int = 2, gpu: bool = False) -> dict[str, Any]:
    """Network passes of an align run and their duration (a training pass counts as 3 forwards).

    Flow-GRPO per step: P x G rollouts through every SDE step, then the trained steps of each image
    with gradients and (with a KL) the reference's forward, all doubled by guidance; DPO per step:
    winner and loser through policy (with gradients) and reference; ReFL: the sampler to a late step
    without gradients, one step with them, the regulariser's batch; SFT: one training batch. Calibrated on this project's
    reference machine: the shipped base's GRPO step measured 7.2 s against 7.0 s estimated."""
    s = recipe.sampler
    fwd = forward_flops(info, s.width, s.height)
    if recipe.method == "grpo":
        g = recipe.grpo
        n = g.group_size * g.prompts_per_step
        guided = 2 if (g.cfg if g.cfg is not None else s.cfg) != 1.0 else 1
        trained = g.train_steps if 0 < g.train_steps <= g.sde_steps else g.sde_steps
        passes = n * guided * (g.sde_steps + trained * (3 + (1 if g.kl > 0 else 0)))
        images = n * recipe.steps
    elif recipe.method == "refl":  # most of the sampler without gradients, one guided step with them, the regulariser's batch
        f = recipe.refl
        guided = 2 if s.cfg != 1.0 else 1
        passes = f.batch_size * guided * (s.steps - f.late / 2 + 3) + (3 * recipe.data.batch_size if f.regulariser > 0 else 0)
        images = f.batch_size * recipe.steps
    elif recipe.method == "sft":
        batch = recipe.batch_size if recipe.data.source == "winners" else recipe.data.batch_size
        passes = 3 * batch
        images = batch * recipe.steps
    else:
        passes = 2 * recipe.batch_size * (3 + 1)
        images = 2 * recipe.batch_size * recipe.steps
    evals = (recipe.steps // recipe.eval_every + 1) if recipe.eval_images and recipe.eval_every else (1 if recipe.eval_images else 0)
    eval_passes = evals * recipe.eval_images * s.steps * (2 if s.cfg != 1.0 else 1)
    flops = (passes * recipe.steps + eval_passes) * fwd
    rate = GPU_FLOPS if gpu else CPU_FLOPS_PER_CORE * max(1, cores)
    return {"params": model_params(info), "steps": recipe.steps, "images": images, "seconds": flops / rate * 1.1, "flops": flops}


def estimate_personalize(recipe: Any, info: dict[str, Any], cores: int = 2, gpu: bool = False) -> dict[str, Any]:
    """Network passes of a personalization and their duration: the class images (guided sampling,
    drawn once then cached), the training steps (subject batch, plus the class batch or the frozen
    base's forward), the base and final measurements (instance, context and class prompts, and the
    class's eval prompts) and the previews."""
    s = recipe.sampler
    fwd = forward_flops(info, s.width, s.height)
    guided = 2 if s.cfg != 1.0 else 1
    prior = recipe.prior.mode
    class_passes = recipe.prior.class_images * s.steps * guided if prior == "class_images" else 0
    per_step = recipe.batch_size * (3 + (3 if prior == "class_images" else 4 if prior == "frozen" else 0))
    prompts = len([p for p in recipe.context_prompts if "{token}" in p]) + 2  # context, instance and class prompts
    measures = 1 + recipe.steps // recipe.eval_every + (1 if recipe.steps % recipe.eval_every else 0)  # the base, every evaluation, the end
    eval_passes = measures * (recipe.eval_images * prompts + recipe.class_eval_images) * s.steps * guided
    previews = (recipe.steps // recipe.sample_every if recipe.sample_every else 0) * len(recipe.context_prompts) * len(recipe.preview_seeds)
    flops = (class_passes + per_step * recipe.steps + eval_passes + previews * s.steps * guided) * fwd
    rate = GPU_FLOPS if gpu else CPU_FLOPS_PER_CORE * max(1, cores)
    images = recipe.steps * recipe.batch_size * (2 if prior == "class_images" else 1)
    return {"params": model_params(info), "steps": recipe.steps, "images": images, "seconds": flops / rate * 1.1, "flops": flops,
            "class_images": recipe.prior.class_images if prior == "class_images" else 0}


def estimate_distill(recipe: Any, info: dict[str, Any], cores: int = 2, gpu: bool = False) -> dict[str, Any]:
    """Network passes of a distillation and what it holds in memory. Per sample and training step
    (a training pass counts 3: forward and backward): progressive, two teacher steps (guided in the
    first round) and the student's training pass; consistency, one guided teacher step, the
    target's forward, the student's pass; DMD2, the generator's sample, the fake network's
    ``fake_updates`` passes, the generator's pass, the guided real score and the fake score; LADD,
    the generator's sample, the teacher's features for the heads (about half a pass each: the
    forward stops at the deepest block read), the generator's pass with the teacher's features
    back-propagated, the guided teacher for the distillation term; reflow, the teacher's couplings
    (drawn once, cached) and the student's pass. Then the student's evaluations at its steps and the
    previews. Memory: fp32 weights, and for what trains its gradients and two AdamW moments."""
    s = recipe.sampler
    fwd = forward_flops(info, s.width, s.height)
    batch = recipe.data.batch_size
    guided = 2 if s.cfg != 1.0 else 1
    params = model_params(info)
    held = [("student (training)", 4 * params), ("teacher (frozen)", params)]
    rounds, setup_passes = 1, 0
    if recipe.method == "consistency":
        passes = batch * recipe.total_steps * (guided + 1 + 3)
        held.append(("target (EMA copy)", params))
    elif recipe.method == "dmd":
        d = recipe.dmd
        passes = batch * recipe.total_steps * (1 + 3 * d.fake_updates + 3 + guided + 1 + (2 * d.fake_updates + 1 if d.gan_weight else 0))
        held.append(("fake-score network (training: a second model)", 4 * params))
    elif recipe.method == "ladd":
        passes = batch * recipe.total_steps * (1 + 1 + 3 + 1.5 + guided)
        held.append(("discriminator heads (training)", 4 * 200_000))
    elif recipe.method == "reflow":
        setup_passes = recipe.reflow.pairs * s.steps * guided
        passes = batch * recipe.total_steps * 3
    else:
        p = recipe.progressive
        rounds = recipe.total_steps // p.steps_per_round
        passes = batch * p.steps_per_round * ((2 * guided + 3) + (rounds - 1) * (2 + 3))
    evals = (recipe.total_steps // recipe.eval_every + (1 if recipe.total_steps % recipe.eval_every else 0)) if recipe.eval_images else 0
    eval_passes = evals * recipe.eval_images * recipe.target_steps
    previews = (recipe.total_steps // recipe.sample_every if recipe.sample_every else 0) * 8 * recipe.target_steps
    flops = (setup_passes + passes + eval_passes + previews) * fwd
    rate = GPU_FLOPS if gpu else CPU_FLOPS_PER_CORE * max(1, cores)
    return {"params": params, "steps": recipe.total_steps, "images": batch * recipe.total_steps, "seconds": flops / rate * 1.1,
            "flops": flops, "rounds": rounds, "teacher_passes_per_image": 2 * s.steps if s.cfg != 1.0 else s.steps,
            "student_passes_per_image": recipe.target_steps, "memory_bytes": sum(b for _, b in held) * 4,
            "held": [[what, b * 4] for what, b in held]}

