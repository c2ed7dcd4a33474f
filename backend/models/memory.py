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
                    ema: bool = False, checkpointing: bool = False, eight_bit: bool = False, bits: int = 16) -> dict[str, Any]:
    """What one training process holds, part by part (bytes): the transformer in float32 (the trained
    copy), for full training its gradients, AdamW's two moments (8 bytes, or 2 in 8 bits) and the
    sampling EMA; the activations of a batch; the VAE; the text encoders where they sit (a GPU run
    keeps them on the CPU: captions are encoded once and cached). An estimate to refuse a run that
    cannot fit, not a measurement."""
    parts = checked["parts"]
    def params(part: str) -> int:
        return sum(b // DTYPE_BYTES.get(d, 4) for d, b in parts.get(part, {}).get("dtypes", {}).items())

    p = params("transformer")
    held: list[list[Any]] = [["transformer weights (float32)", 4 * p]]
    if lora:
        held.append(["LoRA adapters, gradients and AdamW states (about 1 % of the weights)", int(0.01 * p) * 16])
    else:
        held.append(["gradients (float32)", 4 * p])
        held.append(["AdamW states (8-bit)" if eight_bit else "AdamW states (two float32 moments)", (2 if eight_bit else 8) * p])
        if ema:
            held.append(["EMA copy for sampling", 4 * p])
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


def memory_knobs(mem: dict[str, Any], *, lora: bool, checkpointing: bool, eight_bit: bool, batch: int, on_gpu: bool) -> list[str]:
    """What to turn, with what each saves, for a run that does not fit (a knob that would save under
    2 % of the total is not offered)."""
    held = {what: b for what, b in mem["held"]}
    gib = 2**30
    knobs = []
    act = next((b for what, b in held.items() if what.startswith("activations")), 0)
    if not checkpointing and act > 0.02 * mem["bytes"]:
        knobs.append(f"compute.gradient_checkpointing = true (activations {act / gib:.1f} GiB -> a fraction)")
    if not lora and not eight_bit and on_gpu:
        states = next((b for what, b in held.items() if what.startswith("AdamW")), 0)
        knobs.append(f"optim.eight_bit = true (AdamW states {states / gib:.1f} -> {states / 4 / gib:.1f} GiB)")
    ema = held.get("EMA copy for sampling", 0)
    if ema:
        knobs.append(f"optim.ema = 0 (no EMA copy: {ema / gib:.1f} GiB)")
    if not lora:
        knobs.append("train a LoRA instead (Personalize, or Align with lora_rank > 0): no gradients or states for the frozen weights")
    if batch > 1:
        knobs.append(f"a smaller optim.batch_size (now {batch}) with optim.grad_accum to keep the images per step")
    return knobs


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
    available, where = device_memory(on_gpu)
    mem.update({"available": available, "device": where, "fits": available is None or mem["bytes"] <= HEADROOM * available,
                "knobs": memory_knobs(mem, lora=False, checkpointing=c.gradient_checkpointing, eight_bit=recipe.optim.eight_bit,
                                      batch=recipe.optim.batch_size, on_gpu=on_gpu)})
    return mem


def stock_estimate(recipe: PretrainRecipe, cores: int = 2, gpu: bool = False) -> dict[str, Any]:
    """``estimate`` of a recipe continuing a real model, with its memory plan (``memory``)."""
    checked = check_stock_folder(recipe.model.init)
    shape = stock_shape(recipe.model.init, checked["family"])
    out = estimate(recipe, cores=cores, gpu=gpu, stock={"params": transformer_params(checked), **shape})
    out["memory"] = pretrain_memory(recipe, on_gpu=gpu)
    return out
