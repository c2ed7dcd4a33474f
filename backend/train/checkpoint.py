"""Resumable checkpoints in safetensors, written atomically.

accelerate's ``save_state`` pickles the optimizer and RNG states; the project loads nothing
through pickle, so this module flattens every piece of state into tensors (safetensors) plus
a JSON file for the scalars: model, EMA and extra modules, AdamW moments, LR-scheduler
state, the torch RNG state, the step (which fixes the data position: batches are drawn from
(seed, step)), and any objective state. A checkpoint folder is written under a temporary
name and renamed into place, then ``latest`` is replaced atomically, so a kill at any moment
leaves the previous checkpoint intact. ``state.json`` carries the sha256 of every other file, so
a checkpoint damaged after it was written (a truncated copy, a bad disk) is caught on resume and the
one before it is used (``damage``, ``checkpoints_newest_first``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from backend.store.project import atomic_write_text, disk_full


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


class TrainableOnly:
    """A module seen through its trainable parameters only: what a LoRA run checkpoints (the frozen
    base is the model it started from, so writing it at every checkpoint would only cost disk)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        wanted = set(self.state_dict())
        if set(state) != wanted:
            raise ValueError(f"checkpoint holds {len(state)} trainable tensors, the module has {len(wanted)} "
                             f"(missing {sorted(wanted - set(state))[:3]}, unexpected {sorted(set(state) - wanted)[:3]})")
        self.module.load_state_dict(state, strict=False)


def save_checkpoint(
    run_dir: Path,
    step: int,
    modules: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``run_dir/checkpoints/step-XXXXXXX`` and point ``latest`` at it. Optimizer ``main``
    goes to ``optimizer.safetensors`` (the layout from before methods had several), any other
    ``name`` to ``optimizer-<name>.safetensors``."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_state(tmp, step, modules, optimizers, schedulers, extra)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_full(e, root, f"the checkpoint of step {step} (the previous one is intact)") from e
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(root / "latest", final.name + "\n")
    _prune(root, keep)
    return final


def _write_state(tmp: Path, step: int, modules: dict[str, Any], optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
                 extra: dict[str, Any] | None) -> None:
    for name, module in modules.items():
        save_file(_state(module), str(tmp / f"{name}.safetensors"))
    opt_meta: dict[str, Any] = {}
    for name, optimizer in optimizers.items():
        opt_tensors, opt_meta[name] = _flatten_optimizer(optimizer)
        save_file(opt_tensors or {"_empty": torch.zeros(0)}, str(tmp / _optimizer_file(name)))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    files = {path.name: file_digest(path) for path in sorted(tmp.iterdir())}
    meta = {
        "step": step,
        "optimizer": opt_meta.get("main"),
        "scheduler": schedulers["main"].state_dict() if schedulers.get("main") is not None else None,
        "optimizers": {k: v for k, v in opt_meta.items() if k != "main"},
        "schedulers": {k: v.state_dict() for k, v in schedulers.items() if k != "main" and v is not None},
        "modules": sorted(modules),
        "extra": extra or {},
        "files": files,  # sha256 of every file above: a truncated or damaged checkpoint is caught on load
    }
    (tmp / "state.json").write_text(json.dumps(meta, default=_json_default) + "\n")
    for path in tmp.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def _optimizer_file(name: str) -> str:
    return "optimizer.safetensors" if name == "main" else f"optimizer-{name}.safetensors"


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def _prune(root: Path, keep: int) -> None:
    ckpts = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.partial"):
        shutil.rmtree(stale, ignore_errors=True)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def damage(path: Path) -> str | None:
    """What is wrong with a checkpoint folder (a missing, truncated or altered file), or None. Checkpoints
    written before checksums existed are taken as they are."""
    try:
        meta = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        return f"state.json unreadable ({e})"
    for name, digest in (meta.get("files") or {}).items():
        file = path / name
        if not file.exists():
            return f"{name} is missing"
        if file_digest(file) != digest:
            return f"{name} does not match its checksum (truncated or altered)"
    return None


def checkpoints_newest_first(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, the one ``latest`` points at first, then the others newest first."""
    root = run_dir / "checkpoints"
    complete = sorted((p for p in root.glob("step-*") if (p / "state.json").exists()), reverse=True)
    pointer = root / "latest"
    if pointer.exists():
        first = root / pointer.read_text().strip()
        if first in complete:
            complete.remove(first)
            complete.insert(0, first)
    return complete


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` points at (or the newest complete one), or None."""
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if (path / "state.json").exists():
            return path
    complete = sorted(p for p in root.glob("step-*") if (p / "state.json").exists())
    return complete[-1] if complete else None


def load_checkpoint(
    path: Path,
    modules: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    schedulers: dict[str, Any] | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the JSON state (step, extra)."""
    meta = json.loads((path / "state.json").read_text())
    for name, module in modules.items():
        file = path / f"{name}.safetensors"
        if not file.exists():
            raise FileNotFoundError(f"checkpoint {path} has no {name} weights")
        module.load_state_dict(load_file(str(file)))
    for name, optimizer in (optimizers or {}).items():
        file = path / _optimizer_file(name)
        if not file.exists():
            raise FileNotFoundError(f"checkpoint {path} has no state for optimizer {name!r}")
        tensors = load_file(str(file))
        tensors.pop("_empty", None)
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"] if name == "main" else meta["optimizers"][name]))
    for name, scheduler in (schedulers or {}).items():
        state = meta.get("scheduler") if name == "main" else meta.get("schedulers", {}).get(name)
        if scheduler is not None and state is not None:
            scheduler.load_state_dict(state)
    if restore_rng:
        torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    return meta
