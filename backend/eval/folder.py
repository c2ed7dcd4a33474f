"""Read a folder of generated images together with the prompt spec each one was made for.

A spec can come from a ``NAME.json`` sidecar (``{"spec": ...}`` or the spec itself), from
``metadata.jsonl`` lines (``{"file": ..., "spec": ...}``, as ``world export`` and
``signal-backend sample`` write them), or from a ShapesEval prompt id at the start of the file
name (``spatial-03_s1.png``).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from backend.world.spec import Scene

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def read_images(folder: Path) -> tuple[list[Image.Image], list[str]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    images, names = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_EXTS:
            try:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
                names.append(path.name)
            except (UnidentifiedImageError, OSError):
                continue
    return images, names


def collect_specs(folder: Path) -> tuple[list[Image.Image], list[Scene], list[str], list[tuple[str, str]]]:
    """Images with a spec, their specs and names, and (name, reason) for the ones skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    meta: dict[str, dict] = {}
    if (folder / "metadata.jsonl").exists():
        for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                if "spec" in rec and "file" in rec:
                    meta[rec["file"]] = rec["spec"]
    prompt_specs: dict[str, dict] = {}
    try:
        from .shapes_eval import load_eval_prompts

        prompt_specs = {p.id: p.spec for p in load_eval_prompts()}
    except (FileNotFoundError, OSError):
        pass
    images, specs, names, skipped = [], [], [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTS:
            continue
        spec = meta.get(path.name)
        side = path.with_suffix(".json")
        if spec is None and side.exists():
            data = json.loads(side.read_text(encoding="utf-8"))
            spec = data.get("spec", data)
        if spec is None:
            spec = prompt_specs.get(path.stem.split("_")[0])
        if spec is None:
            skipped.append((path.name, "no prompt spec"))
            continue
        if spec.get("category") == "subject":
            skipped.append((path.name, "subject renders are not scored by ShapesEval"))
            continue
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            skipped.append((path.name, f"unreadable image ({exc.__class__.__name__})"))
            continue
        images.append(img)
        specs.append(Scene.from_json(spec))
        names.append(path.name)
    return images, specs, names, skipped
