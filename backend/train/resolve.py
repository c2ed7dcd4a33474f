"""Turn what a user names (a model folder, a run, a checkpoint) into a loaded model bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backend.models.family import ModelBundle, is_model_folder, load_model
from backend.store import Project


def locate(project: Project | None, spec: str) -> Path:
    """Project-relative names stay inside the project; absolute paths are taken as given."""
    path = Path(spec).expanduser()
    if path.is_absolute():
        return path
    if project is None:
        return path.resolve()
    return project.resolve(spec)


def resolve_model(project: Project | None, spec: str, *, prefer_ema: bool = True, adapters: list[str] | None = None,
                  lora_scale: float = 1.0, merge: bool = False) -> tuple[ModelBundle, str]:
    """Load ``spec``; returns the bundle and a short description of what was loaded. A personalization
    (an adapter folder whose ``card.json`` names its parent) loads as its parent with the adapter on;
    ``adapters`` adds more adapter folders, every adapter at ``lora_scale``. ``merge`` folds loaded
    adapters into the weights (for stages that train on top: their own LoRA and its switched-off
    reference then start from the personalized model, not from its parent)."""
    from backend.models.lora import is_adapter_folder, load_adapters, merge_adapters

    if not spec:
        raise ValueError("no model given: name a model folder, a run folder or a checkpoint")
    path = locate(project, spec)
    if not path.exists():
        raise FileNotFoundError(f"model {spec!r} not found ({path})")
    folders = [locate(project, a) for a in adapters or []]
    if is_adapter_folder(path) and not is_model_folder(path):
        card_file = path / "card.json"
        parent = json.loads(card_file.read_text()).get("parent") if card_file.exists() else None
        if not parent:
            raise FileNotFoundError(f"{path} holds an adapter but no card.json naming the model it was trained on")
        bundle, what = resolve_model(project, parent, prefer_ema=prefer_ema)
        folders.insert(0, path)
        load_adapters(bundle.net, folders, lora_scale)
        if merge:
            merge_adapters(bundle.net)
        return bundle, f"{what} + " + ", ".join(f.name for f in folders) + (f" at scale {lora_scale:g}" if lora_scale != 1 else "")
    if folders:
        bundle, what = resolve_model(project, spec, prefer_ema=prefer_ema)
        load_adapters(bundle.net, folders, lora_scale)
        if merge:
            merge_adapters(bundle.net)
        return bundle, f"{what} + " + ", ".join(f.name for f in folders) + (f" at scale {lora_scale:g}" if lora_scale != 1 else "")
    if is_model_folder(path):
        return load_model(path), f"model {path.name}"
    from backend.train.checkpoint import latest_checkpoint, load_checkpoint
    ckpt = path if (path / "state.json").exists() else latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"{path} is neither a model folder nor a run with checkpoints")
    run_dir = ckpt.parent.parent
    recipe_file = run_dir / "recipe.toml"
    if not recipe_file.exists():
        raise FileNotFoundError(f"{run_dir} has no recipe.toml; cannot rebuild the network for {ckpt.name}")
    from backend.recipes import load_recipe
    from backend.train.pretrain import build_bundle

    recipe = load_recipe(recipe_file)
    bundle = build_bundle(recipe)  # type: ignore[arg-type]
    which = "ema" if prefer_ema and (ckpt / "ema.safetensors").exists() else "model"
    if which == "ema":
        from safetensors.torch import load_file

        state = load_file(str(ckpt / "ema.safetensors"))
        prefix = "module."
        bundle.net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    else:
        load_checkpoint(ckpt, {"model": bundle.net}, restore_rng=False)
    bundle.net.eval()
    return bundle, f"{run_dir.name}/{ckpt.name} ({which})"


def model_card(project: Project | None, spec: str) -> dict:
    """The card a model folder carries (empty when it has none or it cannot be read)."""
    card_file = locate(project, spec) / "card.json"
    try:
        card = json.loads(card_file.read_text()) if card_file.exists() else {}
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def refuse_distilled(project: Project | None, spec: str, stage: str, instead: str) -> None:
    """Stages that train with the flow loss or sample with a many-step sampler (personalize, distill)
    would undo a student's few-step sampling or draw it wrongly: say so and name the model to use."""
    card = model_card(project, spec)
    if card.get("kind") == "distilled":
        steps = (card.get("sampler") or {}).get("steps", "few")
        raise ValueError(f"{spec!r} is a distilled student ({steps}-step sampler); {stage} starts from a model that samples with "
                         f"many steps: {instead.format(parent=card.get('parent') or 'its teacher')}")


def own_sampler(project: Project | None, spec: str, sampler: Any) -> Any:
    """The sampler ``spec`` draws with: a distilled student's own (its card's steps, guidance and kind,
    at ``sampler``'s size), any other model's ``sampler`` unchanged. Where teacher and student are
    paired (rating, comparisons), each must draw the way it is meant to."""
    card = model_card(project, spec)
    if card.get("kind") != "distilled" or not isinstance(card.get("sampler"), dict):
        return sampler
    own = card["sampler"]
    return sampler.model_copy(update={k: own[k] for k in ("steps", "cfg", "kind") if k in own})
