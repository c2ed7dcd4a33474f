"""Export ShapesWorld as an ordinary folder a user could have made: PNGs, .txt sidecars, metadata.jsonl.

The subject's instance renders go to a sibling folder ``DIR-subject`` so that importing DIR
never mixes the subject into base data.

The folder then enters a project through the normal import path. ``defects=True`` plants the
kinds of bad files real folders have (corrupt, empty, mislabelled, duplicated) so a new user
sees curation at work on the demo.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from .generate import make_caption, make_scene
from .render import render
from .subject import SUBJECT_CLASS, subject_instances, subject_prompt


def export_world(
    out: Path,
    n: int,
    seed: int = 0,
    *,
    subject: bool = True,
    defects: bool = False,
    resolution: tuple[int, int] | None = None,
    categories: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write ``n`` scenes (and the subject's instance renders) into ``out``; returns a summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for i in range(n):
            category = categories[i % len(categories)] if categories else None
            scene = make_scene(seed, i, category=category, resolution=resolution)
            text = make_caption(seed, i, scene)
            name = f"{i:06d}.png"
            render(scene).save(out / name, optimize=False)
            (out / f"{i:06d}.txt").write_text(text + "\n", encoding="utf-8")
            record = {"file": name, "caption": text, "category": scene.category, "complexity": scene.complexity, "spec": scene.to_json()}
            meta.write(json.dumps(record) + "\n")
            counts[scene.category] = counts.get(scene.category, 0) + 1
            if progress and (i % 200 == 0 or i == n - 1):
                progress(i + 1, n)
    summary: dict = {"images": n, "categories": counts, "seed": seed}
    if subject:
        sub = subject_folder(out)
        sub.mkdir(exist_ok=True)
        with open(sub / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for k, (img, info) in enumerate(subject_instances(seed, 5)):
                name = f"subject_{k}.png"
                img.save(sub / name)
                text = subject_prompt()
                (sub / f"subject_{k}.txt").write_text(text + "\n", encoding="utf-8")
                meta.write(json.dumps({"file": name, "caption": text, "category": "subject", "spec": info}) + "\n")
        summary["subject"] = {"images": 5, "class": SUBJECT_CLASS, "prompt": subject_prompt(), "folder": str(sub)}
    if defects and n >= 2:
        summary["defects"] = plant_defects(out)
    return summary


def subject_folder(out: Path) -> Path:
    """The subject's renders go beside the base export, never inside it (base data never shows it)."""
    return out.with_name(out.name + "-subject")


def plant_defects(out: Path) -> dict[str, str]:
    """Add the bad files real folders contain; returns file name -> what is wrong with it."""
    planted: dict[str, str] = {}
    first = out / "000000.png"
    second = out / "000001.png"
    data = first.read_bytes()
    (out / "defect_exact_duplicate.png").write_bytes(data)
    (out / "defect_exact_duplicate.txt").write_text((out / "000000.txt").read_text(encoding="utf-8"), encoding="utf-8")
    planted["defect_exact_duplicate.png"] = "exact duplicate of 000000.png"
    buf = io.BytesIO()
    Image.open(second).convert("RGB").save(buf, "JPEG", quality=80)
    (out / "defect_near_duplicate.jpg").write_bytes(buf.getvalue())
    (out / "defect_near_duplicate.txt").write_text((out / "000001.txt").read_text(encoding="utf-8"), encoding="utf-8")
    planted["defect_near_duplicate.jpg"] = "re-encoded copy of 000001.png"
    (out / "defect_truncated.png").write_bytes(data[: len(data) // 2])
    planted["defect_truncated.png"] = "truncated file"
    (out / "defect_empty.png").write_bytes(b"")
    planted["defect_empty.png"] = "zero bytes"
    (out / "defect_not_an_image.png").write_text("this is a text file with an image extension\n", encoding="utf-8")
    planted["defect_not_an_image.png"] = "not an image"
    return planted
