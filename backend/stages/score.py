"""The ``score`` stage: rewards of given images for their prompts, from a reward model.

The service never runs a model itself, so scoring is a (short) job like sampling: a worker loads
the reward model, reads the images (project files or stored images by hash; nothing outside the
project unless the recipe names an absolute path, as every recipe may), and writes ``scores.json``
into the run folder; the scores are also the job's summary.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from backend.recipes.reward import ScoreRecipe
from backend.store import Project

HASH = re.compile(r"^[0-9a-f]{64}$")


def _open(project: Project, ref: str):
    from PIL import Image, UnidentifiedImageError

    from backend.train.resolve import locate

    path = project.blob_path(ref, "png") if HASH.match(ref) else locate(project, ref)
    try:
        return Image.open(path).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"image {ref!r}: not a readable image ({exc})") from None


def run(project: Project, recipe: ScoreRecipe, run_dir: Path, reporter: Any, resume: bool) -> dict[str, Any]:
    from backend.stages.sample import score_with

    images = [_open(project, item.image) for item in recipe.items]
    rewards = score_with(project, recipe.reward, images, [item.prompt for item in recipe.items])
    scores = [{"image": item.image, "prompt": item.prompt, "reward": round(r, 4)} for item, r in zip(recipe.items, rewards)]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "scores.json").write_text(json.dumps(scores, indent=2))
    reporter.log(f"scored {len(scores)} image(s) with {recipe.reward}")
    return {"state": "done", "reward": recipe.reward, "scores": scores}
