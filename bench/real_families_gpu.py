"""Issue 24's GPU figures in one run (planned to fit ~10 minutes on an H100/H200), or a CPU dry run
of the same code paths (``--dry-run``: tiny shapes, measures nothing).

1. **Throughput and memory** (``bench/train_step_gpu.py`` in a child process, a fresh CUDA state):
   the SD3.5-Medium-shaped MMDiT (random weights) at 1024 px through the real ``Trainer``, bf16,
   compiled blocks: MFU of full fine-tuning at batch 4 and 12, of LoRA (rank 64) at batch 4 and 12,
   and the peak memory of each feature: plain, gradient checkpointing (batch 4 and 16), 8-bit AdamW
   states (bitsandbytes, when the environment has it).
2. **End to end**: an SD3.5-Medium-shaped stock folder with random weights, built on the machine
   (nothing can be downloaded there), a ShapesWorld project at 512 px, ``signal-backend run`` of an
   ``sd3`` recipe (compiled), then the saved folder through ``StableDiffusion3Pipeline.from_pretrained``
   and through our sampler with the same seed: the largest pixel difference of the two images.

    python bench/real_families_gpu.py [--json bench/results/real_families_gpu.json] [--dry-run] [--skip throughput]

On the lent GPU image (torch, transformers, peft, accelerate) carry wheels of diffusers,
sqlite-utils (with sqlite-fts4, click-default-group, tabulate, python-dateutil, pluggy),
tomli-w and pyarrow-free extras the backend imports (see /work/.library/device/README.md).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, scratch_project  # noqa: E402

THROUGHPUT = "studio-noema,studio-b12,lora,lora-b12,full-ckpt,full-ckpt-b16,full-8bit"

RECIPE = """kind = "pretrain"
name = "sd3-e2e"
[data]
dataset = "shapesworld"
[model]
family = "sd3"
init = "{folder}"
[allocation.shift]
kind = "fixed"
alpha = 3.0
[[curriculum]]
steps = {steps}
buckets = [[{size}, {size}]]
[optim]
batch_size = {batch}
lr = 1e-5
warmup = 2
ema = 0.0
[schedule]
log_every = {log_every}
checkpoint_every = {steps}
sample_every = {steps}
eval_images = {eval_images}
[preview]
prompts = ["a red circle", "two blue squares"]
seeds = [0]
[preview.sampler]
steps = 8
cfg = 4.0
width = {size}
height = {size}
[compute]
compile = {compile}
"""


def throughput(dry: bool, out: Path) -> dict:
    cmd = [sys.executable, str(REPO / "bench" / "train_step_gpu.py"), "--variants", THROUGHPUT, "--json", str(out)]
    cmd += ["--dry-run", "--size", "64", "--steps", "2", "--warm", "1"] if dry else ["--size", "1024", "--steps", "6", "--warm", "3", "--budget-s", "390"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "wall_s": round(time.perf_counter() - t0, 1)}
    result = json.loads(out.read_text())
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def end_to_end(dry: bool, work: Path) -> dict:
    from backend.models.family import load_model
    from backend.models.tiny_folders import build_tiny_folder
    from backend.sample.euler import SampleSettings, generate

    t0 = time.perf_counter()
    folder = build_tiny_folder(work / "sd3", "sd3", shape="tiny" if dry else "sd35m", dtype=torch.float32 if dry else torch.bfloat16)
    built = time.perf_counter() - t0
    size = 32 if dry else 512
    project = scratch_project(n=48 if dry else 192, resolution=(size, size), root=work / "data")
    steps = 4 if dry else 30
    recipe = work / "sd3.toml"
    recipe.write_text(RECIPE.format(folder=folder, steps=steps, size=size, batch=2 if dry else 4, log_every=1 if dry else 5,
                                    eval_images=2 if dry else 8, compile=str(not dry).lower()))
    t1 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "backend", "run", str(recipe), "--project", str(project)], cwd=REPO, capture_output=True, text=True)
    run_s = time.perf_counter() - t1
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:], "run_s": round(run_s, 1)}
    db = sqlite3.connect(project / "project.db")
    job = db.execute("SELECT id FROM jobs ORDER BY id DESC").fetchone()[0]
    series = {k: [v for (v,) in db.execute("SELECT value FROM metrics WHERE job_id = ? AND key = ? ORDER BY step", [job, k])]
              for k in ("step_s", "images_per_s", "loss/flow")}
    saved = project / db.execute("SELECT path FROM models WHERE job_id = ?", [job]).fetchone()[0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(saved), local_files_only=True, dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a red circle", num_inference_steps=8, height=size, width=size, guidance_scale=4.0,
                  generator=torch.Generator().manual_seed(7), output_type="np").images[0]
    del pipe
    bundle = load_model(saved, device)
    ours = np.asarray(generate(bundle, ["a red circle"], [7], SampleSettings(width=size, height=size, steps=8, cfg=4.0))[0]).astype(np.float32) / 255
    return {"folder_params": sum(p.numel() for p in bundle.net.parameters()), "build_s": round(built, 1), "run_s": round(run_s, 1),
            "steps": steps, "size": size, "step_s_last_window": series["step_s"][-1:] or None,
            "images_per_s_last_window": series["images_per_s"][-1:] or None, "loss_first_last": [series["loss/flow"][0], series["loss/flow"][-1]],
            "stock_vs_ours_max_abs_pixel": float(np.abs(theirs - ours).max()), "saved": str(saved.name)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: throughput, e2e")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU; --dry-run tries every part on the CPU at tiny sizes")
    work = Path(tempfile.mkdtemp(prefix="signal-real-gpu-"))
    result: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)", "torch": torch.__version__,
                    "dry_run": args.dry_run}
    skip = set(filter(None, args.skip.split(",")))
    for name, part in (("e2e", lambda: end_to_end(args.dry_run, work)), ("throughput", lambda: throughput(args.dry_run, work / "throughput.json"))):
        if name in skip:
            continue
        t0 = time.perf_counter()
        try:
            result[name] = part()
        except Exception as exc:  # keep the other part's figures
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        result[name]["part_s"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(result[name])[:2000], flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
