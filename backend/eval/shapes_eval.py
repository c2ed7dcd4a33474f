"""ShapesEval: GenEval for the embedded world.

The detector reads each generated image; a prompt's ground-truth spec says what must be
there. Checks: every object present (shape), colour binding (shape in its colour), exact
counts, sizes when the prompt names them, the spatial relation, and the background when
the prompt names it. An image passes when every check that applies passes; accuracy is
reported per category and overall, and per check.

Like GenEval, a promised object only has to be found, so an image cluttered with extra objects
can still pass (strong guidance on an undertrained model scatters fragments, and one of them
may read as the right shape). Passing is kept as it is, so scores stay comparable, and the
share of images with more objects than promised is reported beside it, per category.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from backend.world.captions import caption
from backend.world.detector import Detection
from backend.world.generate import PlacementError, place, sample_scene
from backend.world.spec import CATEGORIES, Scene

CHECKS = ("object", "color", "count", "size", "relation", "background")


@dataclass
class EvalPrompt:
    id: str
    category: str
    prompt: str
    spec: dict[str, Any]
    seeds: list[int] = field(default_factory=lambda: [0])

    @property
    def scene(self) -> Scene:
        return Scene.from_json(self.spec)


def build_eval_prompts(seed: int = 31337, per_category: int = 16, seeds_per_prompt: int = 2, size: tuple[int, int] = (64, 64)) -> list[EvalPrompt]:
    """A fixed, balanced prompt set: ``per_category`` prompts per category, canonical captions."""
    out = []
    for cat in CATEGORIES:
        rng = random.Random(f"eval:{seed}:{cat}")
        seen: set[str] = set()
        k = 0
        while k < per_category:
            scene = sample_scene(rng, cat, size)
            try:
                place(scene, rng)  # only promises that fit on the canvas
            except PlacementError:
                continue
            text = caption(scene)
            if text in seen:
                continue
            seen.add(text)
            scene.objects = []
            out.append(EvalPrompt(f"{cat}-{k:02d}", cat, text, scene.to_json(), list(range(seeds_per_prompt))))
            k += 1
    return out


def save_eval_prompts(prompts: list[EvalPrompt], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for p in prompts:
            fh.write(json.dumps({"id": p.id, "category": p.category, "prompt": p.prompt, "seeds": p.seeds, "spec": p.spec}) + "\n")


def load_eval_prompts(path: Path | None = None) -> list[EvalPrompt]:
    if path is None:
        from backend.paths import resources_dir

        path = resources_dir() / "eval" / "shapes_eval.jsonl"
    prompts = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            prompts.append(EvalPrompt(d["id"], d["category"], d["prompt"], d["spec"], d.get("seeds", [0])))
    return prompts


def _group_detections(det: Detection, shape: str, color: str) -> list:
    return [o for o in det.objects if o.shape == shape and o.color == color]


def check_image(spec: Scene, det: Detection) -> dict[str, bool]:
    """Which of the prompt's promises the detector finds kept (only applicable checks appear)."""
    res: dict[str, bool] = {}
    res["object"] = all(any(o.shape == g.shape for o in det.objects) for g in spec.groups)
    res["color"] = all(_group_detections(det, g.shape, g.color) for g in spec.groups)
    if any(g.count > 1 for g in spec.groups):
        res["count"] = all(len(_group_detections(det, g.shape, g.color)) == g.count for g in spec.groups if g.count > 1)
    if spec.mention_size or spec.complexity == 4:
        res["size"] = all(
            bool(found) and all(o.size == g.size for o in found)
            for g in spec.groups
            for found in [_group_detections(det, g.shape, g.color)]
        )
    if spec.relation is not None:
        a = _group_detections(det, spec.groups[spec.relation.a].shape, spec.groups[spec.relation.a].color)
        b = _group_detections(det, spec.groups[spec.relation.b].shape, spec.groups[spec.relation.b].color)
        ok = False
        if a and b:
            ax = sum(o.center[0] for o in a) / len(a)
            ay = sum(o.center[1] for o in a) / len(a)
            bx = sum(o.center[0] for o in b) / len(b)
            by = sum(o.center[1] for o in b) / len(b)
            kind = spec.relation.kind
            ok = {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[kind]
            ok = ok and abs((ax - bx) if kind in ("left of", "right of") else (ay - by)) > 0.05
        res["relation"] = ok
    if spec.mention_background:
        res["background"] = det.background.get("kind") == spec.background.kind and det.background.get("color") == spec.background.color
    return res


@dataclass
class ShapesEvalReport:
    overall: float
    categories: dict[str, float]
    checks: dict[str, float]
    n: int
    per_image: list[dict[str, Any]] = field(default_factory=list)
    extra_objects: dict[str, float] = field(default_factory=dict)  # category -> share of images with more objects than promised

    def to_json(self) -> dict[str, Any]:
        return {"overall": self.overall, "categories": self.categories, "checks": self.checks, "n": self.n,
                "extra_objects": self.extra_objects, "per_image": self.per_image}

    def table(self) -> str:
        lines = [f"{'category':<16}{'accuracy':>10}{'extra objects':>15}"]
        for cat, acc in self.categories.items():
            extra = self.extra_objects.get(cat)
            lines.append(f"{cat:<16}{acc:>10.3f}" + (f"{extra:>15.3f}" if extra is not None else ""))
        lines.append(f"{'overall':<16}{self.overall:>10.3f}")
        lines.append("")
        lines.append(f"{'check':<16}{'pass rate':>10}")
        for chk, acc in self.checks.items():
            lines.append(f"{chk:<16}{acc:>10.3f}")
        lines.append(f"({self.n} images)")
        return "\n".join(lines)


def score(specs: list[Scene], detections: list[Detection], names: list[str] | None = None) -> ShapesEvalReport:
    """Aggregate per-image checks into per-category and per-check accuracies."""
    by_cat: dict[str, list[bool]] = {}
    by_check: dict[str, list[bool]] = {}
    extra: dict[str, list[bool]] = {}
    per_image = []
    for i, (spec, det) in enumerate(zip(specs, detections)):
        res = check_image(spec, det)
        ok = all(res.values())
        by_cat.setdefault(spec.category, []).append(ok)
        cluttered = len(det.objects) > sum(g.count for g in spec.groups)
        extra.setdefault(spec.category, []).append(cluttered)
        for k, v in res.items():
            by_check.setdefault(k, []).append(v)
        per_image.append({"name": names[i] if names else i, "category": spec.category, "pass": ok, "checks": res, "extra_objects": cluttered,
                          "detected": [f"{o.size} {o.color} {o.shape}" for o in det.objects], "background": det.background})
    cats = {c: sum(v) / len(v) for c in CATEGORIES for v in [by_cat.get(c)] if v}
    checks = {c: sum(v) / len(v) for c in CHECKS for v in [by_check.get(c)] if v}
    overall = sum(cats.values()) / len(cats) if cats else 0.0
    extra_share = {c: sum(v) / len(v) for c in CATEGORIES for v in [extra.get(c)] if v}
    return ShapesEvalReport(overall, cats, checks, len(specs), per_image, extra_share)


def shapes_eval(images: list[Image.Image], specs: list[Scene], detector: Any, names: list[str] | None = None) -> ShapesEvalReport:
    """Detect every image and score it against its prompt's spec."""
    if len(images) != len(specs):
        raise ValueError("one spec per image is needed")
    return score(specs, detector(images), names)
