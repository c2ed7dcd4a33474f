"""GPU training throughput (MFU) on the SD3.5-Medium-shaped MMDiT, and the loop's GPU path checked.

DESIGN.md's anchors were measured on an H200 with this shape (2.24B parameters, 24 layers of
24 x 64 heads, 13 dual-attention layers, 16 latent channels, batch 4 at 1024 px = 4096 image
tokens, 333 text tokens of 4096 dims, random weights): 24.8 % MFU for an eager loop in the
diffusers example style, 41.2 % with torch.compile and fused AdamW. Here, in one run:

- ``reference``: that eager loop (fp32 master weights, bf16 autocast, foreach AdamW, reading the
  loss back every step as the example scripts do for their progress bar);
- ``studio``: the real ``Trainer`` (the one every stage trains through) on the same model and
  batch: bf16 (the default on a GPU), fused AdamW, compiled blocks (``compute.compile = true``), EMA;
- ``studio-noema``: the same without EMA, like for like with the anchors;
- ``studio-eager``: the Trainer without compilation (and without EMA, like the reference);
- probes of alternatives: ``studio-model`` (whole-network compile), ``studio-b8`` (batch 8),
  ``studio-autotune`` (Inductor max-autotune on each block), all without EMA;
- ``studio-b12a2`` / ``studio-b12a4``: batch 12 with 2 or 4 micro-batches of gradient accumulation
  per optimizer step (the loop's ``grad_accum``), which spreads the per-step optimizer, clipping
  and EMA work over more images (on an H200 it gained nothing: 44.5 % and 44.2 % against 44.5 %
  for plain batch 12); ``studio-b12a4-ema`` the same with EMA, as a user would train;
- ``resume``: a tiny model trained 6 steps straight and 3 + 3 with a resume, on the GPU, in bf16.

FLOPs per step are counted by ``torch.utils.flop_counter`` on one eager forward and backward
(matrix products and attention); MFU = FLOPs / step time / 989 TFLOP/s (dense bf16, H100/H200).

    python bench/train_step_gpu.py [--batch 4] [--size 1024] [--steps 8] [--variants ...] [--profile VARIANTS] [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Collect  # noqa: E402

PEAK = 989e12
VARIANTS: dict[str, dict] = {  # name -> studio() arguments (and batch override)
    "studio": {"compile": "blocks", "ema": 0.999},
    "studio-noema": {"compile": "blocks", "ema": 0.0},
    "studio-eager": {"compile": None, "ema": 0.0},
    "studio-model": {"compile": "model", "ema": 0.0},
    "studio-b8": {"compile": "blocks", "ema": 0.0, "batch": 8},
    "studio-autotune": {"compile": "blocks-autotune", "ema": 0.0},
    "studio-b12": {"compile": "blocks", "ema": 0.0, "batch": 12},
    "studio-flash": {"compile": "blocks", "ema": 0.0, "attention": "flash"},
    "studio-cdt": {"compile": "blocks-cdt", "ema": 0.0},
    "studio-b12a2": {"compile": "blocks", "ema": 0.0, "batch": 12, "grad_accum": 2},
    "studio-b12a4": {"compile": "blocks", "ema": 0.0, "batch": 12, "grad_accum": 4},
    "studio-b12a4-ema": {"compile": "blocks", "ema": 0.999, "batch": 12, "grad_accum": 4},
    # issue 24's memory features and LoRA (bench/real_families_gpu.py runs these)
    "full-ckpt": {"compile": "blocks", "ema": 0.0, "checkpointing": True},
    "full-ckpt-b16": {"compile": "blocks", "ema": 0.0, "checkpointing": True, "batch": 16},
    "full-8bit": {"compile": "blocks", "ema": 0.0, "eight_bit": True},
    "lora": {"compile": "blocks", "ema": 0.0, "lora": 64},
    "lora-b12": {"compile": "blocks", "ema": 0.0, "lora": 64, "batch": 12},
}
KERNEL_KINDS = (  # (category, substrings of CUDA kernel names), first match wins
    ("attention-bwd", ("bprop", "bwd", "backward")),
    ("attention-fwd", ("fprop", "fmha", "flash", "attention")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "sm90_", "cublas")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "norm_kernel")),
    ("triton (compiled fusions)", ("triton",)),
    ("copy", ("memcpy", "memset", "copy")),
)
DEV = "cuda"
SHAPE = {"layers": 24, "heads": 24, "dual": 13}  # --dry-run shrinks it to try the script on a CPU
TEXT_TOKENS = 333  # CLIP-L/G's 77 + T5's 256, as SD3 pipelines feed the network


def sd35m(device: str, layers: int | None = None, heads: int | None = None, dual: int | None = None):
    from diffusers import SD3Transformer2DModel

    layers, heads, dual = layers or SHAPE["layers"], heads or SHAPE["heads"], SHAPE["dual"] if dual is None else dual
    with torch.device(device):
        return SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=layers,
            attention_head_dim=64, num_attention_heads=heads, joint_attention_dim=4096,
            caption_projection_dim=heads * 64, pooled_projection_dim=2048, pos_embed_max_size=384,
            qk_norm="rms_norm", dual_attention_layers=tuple(range(dual)),
        )


def tiny_vae(device: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         latent_channels=16, layers_per_block=1, norm_num_groups=8).to(device).requires_grad_(False)


def make_batches(batch: int, size: int, n: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A few host-side batches (latents, text states, pooled), like a latent/text cache in RAM."""
    g = torch.Generator().manual_seed(seed)
    lat = size // 8
    return [(torch.randn(batch, 16, lat, lat, generator=g), torch.randn(batch, TEXT_TOKENS, 4096, generator=g) * 0.1,
             torch.randn(batch, 2048, generator=g) * 0.1) for _ in range(n)]


def count_flops(batch: int, size: int, lora: int = 0) -> tuple[float, dict[str, float]]:
    """FLOPs of one training step as it runs: with ``lora`` the frozen weights get no weight gradients
    (about two thirds of full training's), the adapters' own products are counted."""
    from torch.utils.flop_counter import FlopCounterMode

    net = with_lora(sd35m(DEV), lora)
    x, s, p = (t.to(DEV) for t in make_batches(batch, size, 1)[0])
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(DEV, torch.bfloat16):
        out = net(hidden_states=x, encoder_hidden_states=s, pooled_projections=p, timestep=torch.full((batch,), 500.0, device=DEV), return_dict=False)[0]
        out.float().pow(2).mean().backward()
    by_op = {str(k): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    total = float(counter.get_total_flops())
    params = sum(q.numel() for q in net.parameters())
    del net, out
    _free()
    return total, {"params": params, **{k: round(v / 1e12, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def with_lora(net, rank: int):
    """``net`` with a LoRA of ``rank`` on the family's attention projections (frozen base), as Personalize and Align train."""
    if rank:
        from backend.models.family import get_family
        from backend.models.lora import add_lora

        add_lora(net, get_family("mmdit"), rank=rank)
    return net


def _free() -> None:
    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def reference(batch: int, size: int, steps: int, warm: int) -> list[float]:
    """The diffusers example scripts' step: eager, fp32 master weights, bf16 autocast, AdamW."""
    net = sd35m(DEV).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4)
    data = make_batches(batch, size)
    g = torch.Generator().manual_seed(1)
    times = []
    for i in range(warm + steps):
        _sync()
        t0 = time.perf_counter()
        x0, s, p = (t.to(DEV) for t in data[i % len(data)])
        u = torch.sigmoid(torch.randn(batch, generator=g)).to(DEV)
        noise = torch.randn_like(x0)
        tt = u.view(-1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * noise
        with torch.autocast(DEV, torch.bfloat16):
            v = net(hidden_states=x_t, encoder_hidden_states=s, pooled_projections=p, timestep=u * 1000, return_dict=False)[0]
        loss = ((v.float() - (noise - x0)) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.detach().item()  # the scripts log the loss every step
        _sync()
        times.append(time.perf_counter() - t0)
    del net, opt
    _free()
    return times[warm:]


def kernel_profile(events, wall_s: float, steps: int) -> dict:
    """GPU kernel time per step by category, and the share of the wall time the GPU was busy."""
    by_kind: dict[str, float] = defaultdict(float)
    top: dict[str, float] = defaultdict(float)
    for e in events:  # a dry run on the CPU counts operators' CPU time instead, to try the plumbing
        if getattr(e, "is_user_annotation", False) or e.key.startswith(("ProfilerStep", "Optimizer.")):
            continue  # ranges around kernels (a step, the optimizer), not kernels: counting them doubles time
        on_gpu = str(getattr(e, "device_type", "")).endswith("CUDA")
        us = e.self_device_time_total if on_gpu else (e.self_cpu_time_total if DEV == "cpu" else 0)
        if us > 0 and (on_gpu or DEV == "cpu"):
            name = e.key.lower()
            kind = next((k for k, keys in KERNEL_KINDS if any(x in name for x in keys)), "other")
            by_kind[kind] += us / 1e3 / steps
            top[e.key[:140]] += us / 1e3 / steps
    busy = sum(by_kind.values())
    return {"wall_ms_per_step": round(wall_s * 1e3 / steps, 1), "kernel_ms_per_step": round(busy, 1), "gpu_busy": round(busy / (wall_s * 1e3 / steps), 3),
            "by_kind_ms": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms": {k: round(v, 2) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:25]}}


def studio(batch: int, size: int, steps: int, warm: int, *, compile: str | None = "blocks", ema: float = 0.999, log_every: int = 4,
           attention: str | None = None, grad_accum: int = 1, profile: bool = False, lora: int = 0, checkpointing: bool = False,
           eight_bit: bool = False) -> tuple[list[float], float, dict | None]:
    """The real Trainer: returns step times of the log windows after warm-up, the seconds of the
    first log window (its steps plus compilation) and, with ``profile``, a kernel breakdown of
    two steps after warm-up.

    ``compile``: "blocks" is the Trainer's own (``compute.compile = true``); "model" (the whole
    network), "blocks-autotune" (Inductor's max-autotune on each block) and "blocks-cdt" (Inductor's
    coordinate-descent tuning of its fused kernels) are probes of alternatives. ``attention``:
    "flash" turns cuDNN's attention off so SDPA takes FlashAttention-2 (cuDNN is torch's first
    choice on Hopper). The final checkpoint (36 GB at this size) is not written: this measures steps.
    """
    from backend.models.family import ModelBundle, PromptEmbeds
    from backend.recipes.pretrain import TimestepDensity
    from backend.train.loop import LoopConfig, Trainer
    from backend.train.objectives import FlowMatching
    from backend.train.objectives.base import Batch

    torch._dynamo.reset()  # each variant compiles for its own shapes, not a dynamic-shape fallback
    bundle = ModelBundle(with_lora(sd35m(DEV), lora), tiny_vae(DEV), None, {"family": "mmdit", "shift": {"kind": "fixed", "alpha": 3.0}})  # type: ignore[arg-type]
    data = make_batches(batch, size)
    if DEV == "cuda":
        data = [(x.pin_memory(), s.pin_memory(), p.pin_memory()) for x, s, p in data]

    prof = None
    marks: dict[int, float] = {}
    if profile:
        from torch.profiler import ProfilerActivity, schedule
        from torch.profiler import profile as torch_profile

        prof = torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=schedule(skip_first=warm, wait=0, warmup=1, active=2, repeat=1))

    def batches(step: int, micro: int, rank: int) -> Batch:
        if prof is not None and micro == 0:
            if step in (warm + 1, warm + 3):  # the profiler records steps warm + 1 and warm + 2
                _sync()
                marks[step] = time.perf_counter()
            prof.step()
        x, s, p = data[step % len(data)]
        return Batch(x, PromptEmbeds(s, p), size, size, 3.0, torch.Generator().manual_seed(step))

    total = warm + steps
    cfg = LoopConfig(steps=total, lr=1e-4, warmup=0, schedule="constant", ema=ema, grad_accum=grad_accum, precision="bf16", device=DEV, compile=compile == "blocks",
                     log_every=log_every, checkpoint_every=10**9, sample_every=0, gradient_checkpointing=checkpointing, eight_bit=eight_bit)
    rep = Collect()
    trainer = Trainer(bundle, [FlowMatching(TimestepDensity())], batches, cfg, Path(tempfile.mkdtemp()), rep)
    trainer.save = lambda: None  # type: ignore[method-assign]
    if compile == "model":
        trainer.wrapped = torch.compile(trainer.wrapped)
    elif compile == "blocks-autotune":
        for block in bundle.net.transformer_blocks:
            block.compile(mode="max-autotune-no-cudagraphs")
    elif compile == "blocks-cdt":
        for block in bundle.net.transformer_blocks:
            block.compile(options={"coordinate_descent_tuning": True})
    cached = torch._inductor.config.fx_graph_cache
    if attention == "flash":
        torch.backends.cuda.enable_cudnn_sdp(False)
        torch._inductor.config.fx_graph_cache = False  # else a cached graph with cuDNN's kernel may be served
    if prof is not None:
        prof.start()
    t0 = time.perf_counter()
    try:
        trainer.run(resume=False)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
        torch._inductor.config.fx_graph_cache = cached
    wall = time.perf_counter() - t0
    breakdown = None
    if prof is not None:
        prof.stop()
        if len(marks) == 2:
            breakdown = kernel_profile(prof.key_averages(), marks[warm + 3] - marks[warm + 1], 2)
    series = rep.series("step_s")
    first = series[0][1] * log_every if series else wall
    timed = [v for s_, v in series if s_ > warm]
    del trainer, bundle
    prof = None  # the profiler holds its trace until dropped
    _free()
    return timed, first, breakdown


def resume_check() -> dict[str, float]:
    """6 straight steps vs 3 + resume + 3 on the GPU in bf16: the same weights at the end."""
    from backend.models.family import ModelBundle, PromptEmbeds
    from backend.recipes.pretrain import TimestepDensity
    from backend.train.loop import LoopConfig, Trainer
    from backend.train.objectives import FlowMatching
    from backend.train.objectives.base import Batch

    def run(run_dir: Path, stop_at: int | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = sd35m(DEV, layers=2, heads=2, dual=1)
        bundle = ModelBundle(net, tiny_vae(DEV), None, {"family": "mmdit"})  # type: ignore[arg-type]

        def batches(step: int, micro: int, rank: int) -> Batch:
            g = torch.Generator().manual_seed(step)
            x = torch.randn(2, 16, 32, 32, generator=g)
            return Batch(x, PromptEmbeds(torch.randn(2, 20, 4096, generator=g) * 0.1, torch.randn(2, 2048, generator=g) * 0.1), 256, 256, 1.0, g)

        class Stop(Collect):
            def control(self):
                return "stop" if stop_at is not None and self.rows and max(s for s, _, _ in self.rows) >= stop_at else None

        cfg = LoopConfig(steps=6, lr=1e-3, warmup=2, precision="bf16", device=DEV, log_every=1, checkpoint_every=10**9, sample_every=0)
        Trainer(bundle, [FlowMatching(TimestepDensity())], batches, cfg, run_dir, Stop()).run(resume=True)
        if stop_at is not None:
            torch.manual_seed(123)  # a fresh process would start from other RNG states
            net2 = sd35m(DEV, layers=2, heads=2, dual=1)
            bundle = ModelBundle(net2, tiny_vae(DEV), None, {"family": "mmdit"})  # type: ignore[arg-type]
            t = Trainer(bundle, [FlowMatching(TimestepDensity())], batches, LoopConfig(**{**cfg.__dict__}), run_dir, Collect())
            t.run(resume=True)
            return {k: v.detach().float().cpu() for k, v in t.model.state_dict().items()}
        return {k: v.detach().float().cpu() for k, v in net.state_dict().items()}

    a = run(Path(tempfile.mkdtemp()), None)
    b = run(Path(tempfile.mkdtemp()), 3)
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(v.abs().max()) for v in a.values())
    return {"max_abs_diff": gap, "max_abs_weight": moved}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warm", type=int, default=4)
    ap.add_argument("--variants", default="resume,reference,studio-noema,studio,studio-eager,studio-model,studio-b8")
    ap.add_argument("--profile", default="", help="comma-separated variants to profile (kernel time by category over two steps)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip variants once this much time has passed")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dry-run", action="store_true", help="a 2-layer model on the CPU: checks the script, measures nothing")
    args = ap.parse_args()
    global DEV
    if args.dry_run:
        DEV = "cpu"
        SHAPE.update(layers=2, heads=2, dual=1)
    elif not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (bench/train_step.py measures the CPU); --dry-run tries it on a CPU")
    start = time.perf_counter()
    result: dict = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run)", "shape": dict(SHAPE), "torch": torch.__version__, "batch": args.batch, "size": args.size,
                    "text_tokens": TEXT_TOKENS, "steps": args.steps, "warm": args.warm, "peak_flops": PEAK, "variants": {}}

    def save(last: str | None = None) -> None:
        row = result["variants"].get(last, {}) if last else {k: v for k, v in result.items() if k != "variants"}
        print(last or "setup", json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")

    flops, detail = count_flops(args.batch, args.size)
    result["flops_per_step"] = flops
    result["flop_detail_tflop"] = detail
    save()
    lora_flops: dict[int, float] = {}
    for name in args.variants.split(","):
        if time.perf_counter() - start > args.budget_s:
            result["variants"][name] = {"skipped": "time budget"}
            save(name)
            continue
        t0 = time.perf_counter()
        try:
            if name == "resume":
                row: dict = resume_check()
            else:
                spec = dict(VARIANTS.get(name, {}))
                batch = spec.pop("batch", args.batch)
                accum = spec.get("grad_accum", 1)
                breakdown = None
                if name == "reference":
                    times, first = reference(batch, args.size, args.steps, args.warm), None
                elif name in VARIANTS:
                    times, first, breakdown = studio(batch, args.size, args.steps, args.warm, profile=name in args.profile.split(","), **spec)
                else:
                    raise KeyError(f"unknown variant {name!r}; known: reference, resume, {', '.join(VARIANTS)}")
                step = statistics.median(times)
                rank = spec.get("lora", 0)
                if rank and rank not in lora_flops:
                    lora_flops[rank] = count_flops(args.batch, args.size, lora=rank)[0]
                per = lora_flops[rank] if rank else flops
                row = {"batch": batch, "grad_accum": accum, "step_s": round(step, 4), "images_per_s": round(batch * accum / step, 2),
                       "mfu": round(per * batch * accum / args.batch / step / PEAK, 4), "flops_per_step": per * batch * accum / args.batch,
                       "times": [round(t, 4) for t in times], "first_window_s": None if first is None else round(first, 2),
                       "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if DEV == "cuda" else None}
                if breakdown:
                    row["profile"] = breakdown
                if DEV == "cuda":
                    torch.cuda.reset_peak_memory_stats()
        except Exception as exc:  # keep the other variants' figures
            row = {"error": f"{type(exc).__name__}: {exc}"}
            _free()
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        result["variants"][name] = row
        save(name)


if __name__ == "__main__":
    main()
