"""How much memory training a real model (SD3, FLUX.1) needs, part by part, against the device's.

Read from the folder without loading a weight (parameter counts from the safetensors headers,
widths from the configs), so a run that cannot fit is refused before it starts and the wizard can
show the plan and the knobs that shrink it. Estimates, calibrated by the literature's per-layer
activation count, not measurements; the GPU bench (bench/real_families_gpu.py) measures peaks.
"""

from __future__ import annotations

from typing import Any

from backend.recipes.estimate import estimate
from backend.recipes.pretrain import PretrainRecipe

from .stock_folder import check_stock_folder

DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
TEXT_TOKENS_STOCK = {"sd3": 77 + 256, "flux": 512}  # CLIP's 77 joined with T5's 256 (SD3); T5's 512 (FLUX)
# activation bytes per (token x hidden width x block) kept for the backward pass: Korthikanti et al.
# (2022) count 34 for a 16-bit transformer layer without the attention matrix (flash attention keeps
# none); fp32 doubles it. With checkpointing a block keeps only its input (2 or 4 bytes) and one block
# at a time is recomputed in full.
ACT_BYTES = {16: 34, 32: 68}
HEADROOM = 0.92  # share of a device's memory a run may plan to use (allocator fragmentation, CUDA context)


def transformer_params(checked: dict[str, Any]) -> int:
    return sum(b // DTYPE_BYTES.get(d, 4) for d, b in checked["parts"]["transformer"]["dtypes"].items())


def stock_shape(folder: Any, family: str) -> dict[str, int]:
    """Blocks, width, tokens per pixel and text tokens of a stock folder's transformer, from its config."""
    import json
    from pathlib import Path

    cfg = json.loads((Path(folder) / "transformer" / "config.json").read_text())
    vae = json.loads((Path(folder) / "vae" / "config.json").read_text())
    hidden = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
    layers = int(cfg["num_layers"]) + int(cfg.get("num_single_layers", 0))
    patch = 2 if family == "flux" else int(cfg.get("patch_size", 2))
    return {"layers": layers, "hidden": hidden, "pixels_per_token": 2 ** (len(vae["block_out_channels"]) - 1) * patch,
            "text_tokens": TEXT_TOKENS_STOCK[family]}


def training_memory(checked: dict[str, Any], shape: dict[str, int], *, batch: int, image_tokens: int, on_gpu: bool, lora: bool = False,
                    ema: bool = False, checkpointing: bool = False, eight_bit: bool = False, bits: int = 16, frozen: str = "",
                    second_trained: str = "", bf16_base: bool = False) -> dict[str, Any]:
    """What one training process holds, part by part (bytes): the transformer in float32 (the trained
    copy), for full training its gradients, AdamW's two moments (8 bytes, or 2 in 8 bits) and the
    sampling EMA; the activations of a batch; the VAE; the text encoders where they sit (a GPU run
    keeps them on the CPU: captions are encoded once and cached). An estimate to refuse a run that
    cannot fit, not a measurement. ``frozen`` names a frozen float32 copy a method keeps (a teacher, a
    reference, a target), ``second_trained`` a second network it trains (DMD's fake score)."""
    parts = checked["parts"]
    def params(part: str) -> int:
        return sum(b // DTYPE_BYTES.get(d, 4) for d, b in parts.get(part, {}).get("dtypes", {}).items())

    p = params("transformer")
    held: list[list[Any]] = [["transformer weights (bfloat16, frozen under LoRA)", 2 * p] if lora and bf16_base else ["transformer weights (float32)", 4 * p]]
    if lora:
        held.append(["LoRA adapters, gradients and AdamW states (about 1 % of the weights)", int(0.01 * p) * 16])
    else:
        held.append(["gradients (float32)", 4 * p])
        held.append(["AdamW states (8-bit)" if eight_bit else "AdamW states (two float32 moments)", (2 if eight_bit else 8) * p])
        if ema:
            held.append(["EMA copy for sampling", 4 * p])
    if frozen:
        held.append([f"{frozen} (frozen, float32)", 4 * p])
    if second_trained:
        held.append([f"{second_trained} (trained: weights, gradients, AdamW states)", 16 * p])
    tokens = image_tokens + shape["text_tokens"]
    per_block = batch * tokens * shape["hidden"]
    act = per_block * (shape["layers"] * bits // 8 + ACT_BYTES[bits]) if checkpointing else per_block * shape["layers"] * ACT_BYTES[bits]
    held.append([f"activations (batch {batch}, {tokens} tokens{', checkpointed' if checkpointing else ''})", act])
    held.append(["VAE (float32)", 4 * params("vae")])
    encoders = sum(4 * params(k) for k in parts if k.startswith("text_encoder"))
    if not on_gpu:
        held.append(["text encoders (float32, on the CPU)", encoders])
    return {"bytes": sum(b for _, b in held), "held": held, "text_encoders_on_cpu": encoders if on_gpu else 0}


def device_memory(on_gpu: bool) -> tuple[int | None, str]:
    """(bytes, name) of the memory a run would use: the first GPU's, or the RAM available now."""
    if on_gpu:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return int(props.total_memory), props.name
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return info.get("MemAvailable", info.get("MemTotal")), "RAM available"
    except OSError:
        return None, "RAM"


def memory_knobs(mem: dict[str, Any], *, lora: bool, checkpointing: bool, eight_bit: bool, batch: int, on_gpu: bool,
                 fields: dict[str, str] | None = None) -> list[str]:
    """What to turn, with what each saves, for a run that does not fit (a knob that would save under
    2 % of the total is not offered). ``fields`` names the recipe's fields for each knob (a knob the
    recipe has no field for is not offered): checkpointing, eight_bit, ema, lora, batch."""
    f = {"checkpointing": "compute.gradient_checkpointing", "eight_bit": "optim.eight_bit", "ema": "optim.ema",
         "lora": "train a LoRA instead (Personalize, or Align with lora_rank > 0)", "batch": "optim.batch_size"} if fields is None else fields
    held = {what: b for what, b in mem["held"]}
    gib = 2**30
    knobs = []
    act = next((b for what, b in held.items() if what.startswith("activations")), 0)
    if not checkpointing and act > 0.02 * mem["bytes"] and "checkpointing" in f:
        knobs.append(f"{f['checkpointing']} = true (activations {act / gib:.1f} GiB -> a fraction)")
    if not lora and not eight_bit and on_gpu and "eight_bit" in f:
        states = next((b for what, b in held.items() if what.startswith("AdamW")), 0)
        knobs.append(f"{f['eight_bit']} = true (AdamW states {states / gib:.1f} -> {states / 4 / gib:.1f} GiB)")
    ema = held.get("EMA copy for sampling", 0)
    if ema and "ema" in f:
        knobs.append(f"{f['ema']} = 0 (no EMA copy: {ema / gib:.1f} GiB)")
    if not lora and "lora" in f:
        knobs.append(f"{f['lora']}: no gradients or states for the frozen weights, and no frozen copy")
    if batch > 1 and "batch" in f:
        knobs.append(f"a smaller {f['batch']} (now {batch})")
    return knobs


def with_device(mem: dict[str, Any], on_gpu: bool, knobs: list[str]) -> dict[str, Any]:
    available, where = device_memory(on_gpu)
    return {**mem, "available": available, "device": where, "fits": available is None or mem["bytes"] <= HEADROOM * available, "knobs": knobs}


def stage_memory(recipe: Any, folder: Any, on_gpu: bool) -> dict[str, Any]:
    """The memory plan of an align, personalize or distill recipe that starts from a real model's folder:
    what each method holds beside the trained network (DPO/GRPO's reference, a teacher, DMD's fake
    score, the consistency target) at the batch it trains on."""
    checked = check_stock_folder(folder)
    shape = stock_shape(folder, checked["family"])
    s = recipe.sampler
    tokens = (s.width // shape["pixels_per_token"]) * (s.height // shape["pixels_per_token"])
    frozen = second = ""
    base = "float32"
    if recipe.kind == "personalize":
        lora, base = recipe.lora.rank > 0, recipe.lora.base_dtype
        batch = recipe.batch_size * (2 if recipe.prior.mode == "class_images" else 1)
        frozen = "frozen base for the prior" if recipe.prior.mode == "frozen" and not lora else ""
        fields = {"lora": "lora.rank > 0", "batch": "batch_size"}
    elif recipe.kind == "align":
        lora, base = recipe.lora_rank > 0, recipe.lora_base_dtype
        m = recipe.method
        batch = {"dpo": 2 * recipe.batch_size, "grpo": max(1, recipe.grpo.group_size * recipe.grpo.prompts_per_step // recipe.grpo.minibatches),
                 "refl": recipe.refl.batch_size, "sft": recipe.data.batch_size}[m]
        frozen = "reference" if not lora and m in ("dpo", "grpo") else ""
        fields = {"lora": "lora_rank > 0", "batch": {"dpo": "batch_size", "grpo": "grpo.prompts_per_step", "refl": "refl.batch_size",
                                                     "sft": "data.batch_size"}[m]}
    else:  # distill: the student trains fully beside its teacher
        lora, batch = False, recipe.data.batch_size
        frozen = "teacher and the consistency target" if recipe.method == "consistency" else "teacher"
        second = "fake-score network" if recipe.method == "dmd" else ""
        fields = {"batch": "data.batch_size"}
    mem = training_memory(checked, shape, batch=batch, image_tokens=tokens, on_gpu=on_gpu, lora=lora, ema=getattr(recipe, "ema", 0) > 0,
                          bits=16 if on_gpu else 32, frozen=frozen, second_trained=second,
                          bf16_base=base == "bfloat16" or (base == "auto" and on_gpu))  # as base_dtype_for decides for a real family
    if recipe.kind == "distill" and recipe.method == "consistency":  # two frozen copies: the teacher and the target
        mem["held"].append(["consistency target (EMA of the student)", 4 * transformer_params(checked)])
        mem["bytes"] = sum(b for _, b in mem["held"])
    return with_device(mem, on_gpu, memory_knobs(mem, lora=lora, checkpointing=False, eight_bit=False, batch=batch, on_gpu=on_gpu, fields=fields))


def pretrain_memory(recipe: PretrainRecipe, on_gpu: bool) -> dict[str, Any] | None:
    """The memory plan of a pretrain recipe that continues a real model (None for the embedded families)."""
    m = recipe.model
    if m.family not in ("sd3", "flux"):
        return None
    checked = check_stock_folder(m.init)
    shape = stock_shape(m.init, checked["family"])
    sizes = [(w, h) for st in recipe.curriculum for w, h in st.buckets]
    image_tokens = max((w // shape["pixels_per_token"]) * (h // shape["pixels_per_token"]) for w, h in sizes)
    precision = recipe.optim.precision
    bits = 16 if (precision in ("bf16", "fp16") or (precision == "auto" and on_gpu)) else 32
    c = recipe.compute
    mem = training_memory(checked, shape, batch=recipe.optim.batch_size, image_tokens=image_tokens, on_gpu=on_gpu, ema=recipe.optim.ema > 0,
                          checkpointing=c.gradient_checkpointing, eight_bit=recipe.optim.eight_bit, bits=bits)
    return with_device(mem, on_gpu, memory_knobs(mem, lora=False, checkpointing=c.gradient_checkpointing, eight_bit=recipe.optim.eight_bit,
                                                 batch=recipe.optim.batch_size, on_gpu=on_gpu))


def stock_estimate(recipe: PretrainRecipe, cores: int = 2, gpu: bool = False) -> dict[str, Any]:
    """``estimate`` of a recipe continuing a real model, with its memory plan (``memory``)."""
    checked = check_stock_folder(recipe.model.init)
    shape = stock_shape(recipe.model.init, checked["family"])
    out = estimate(recipe, cores=cores, gpu=gpu, stock={"params": transformer_params(checked), **shape})
    out["memory"] = pretrain_memory(recipe, on_gpu=gpu)
    return out
