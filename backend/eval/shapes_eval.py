"""ShapesEval: GenEval for the embedded world, scored strictly.

The detector reads each generated image; a prompt's ground-truth spec says what must be
there. Checks: every object present (shape), colour binding (shape in its colour), exact
counts, sizes when the prompt names them, the spatial relation, and the background when
the prompt names it.

Two pass rules, per category and overall:
- **strict** (the headline): every check that applies passes *and* the image holds exactly the
  promised objects (each group's count exact, no other object). The detector always names one
  of six shapes, so under the lenient rule four fragments pass "a red circle" about half the
  time; strict is not fooled by clutter.
- **lenient** (GenEval's rule, kept as a second column for comparison): a promised object only
  has to be found.

Every accuracy carries its binomial standard error. The **shape-swap control** scores each
image against its own spec with the shape vocabulary rotated (circle -> square -> ..., each of
the five non-identity rotations) and reports true minus swapped strict accuracy: a model that
knows nothing of shape scores the same against either, so the control is about 0 for it and
about the strict score itself for a model that draws the promised shapes.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from backend.world.captions import caption
from backend.world.detector import Detection
from backend.world.generate import PlacementError, place, sample_scene
from backend.world.spec import CATEGORIES, COLOR_NAMES, SHAPES, Group, Scene

CHECKS = ("object", "color", "count", "size", "relation", "background")
EVAL_SEED_OFFSET = 1000  # eval images use seeds 1000 + k, never the seeds previews and training use


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


def build_eval_prompts(seed: int = 31337, per_category: int = 48, seeds_per_prompt: int = 4, size: tuple[int, int] = (64, 64)) -> list[EvalPrompt]:
    """A fixed, balanced prompt set with canonical captions: single objects are every shape x
    colour once (48 prompts); every other category gets ``per_category`` distinct prompts, so
    each category weighs the same; each prompt is rendered with ``seeds_per_prompt`` seeds."""
    out = []
    for cat in CATEGORIES:
        rng = random.Random(f"eval:{seed}:{cat}")
        seen: set[str] = set()
        wanted = [(s, c) for s in SHAPES for c in COLOR_NAMES] if cat == "single_object" else [None] * per_category
        k = 0
        while k < len(wanted):
            scene = sample_scene(rng, cat, size)
            if wanted[k] is not None:
                shape, color = wanted[k]
                if scene.background.color == color:
                    continue  # the world never puts an object on its own colour
                scene.groups = [Group(shape, color, scene.groups[0].size, 1)]
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


def training_prompts(per_category: int, seed: int = 7, size: tuple[int, int] = (64, 64)) -> list[EvalPrompt]:
    """Prompts of ShapesEval's distribution to tune on (Flow-GRPO's prompt pool), up to ``per_category``
    per category, none whose text is an eval prompt's, except single objects: their 48 shape-colour
    captions are the whole vocabulary, so a tuned model meets those texts again at evaluation (with
    other seeds)."""
    eval_texts = {p.prompt for p in load_eval_prompts()}
    out = [p for p in build_eval_prompts(seed=seed, seeds_per_prompt=1, size=size) if p.category == "single_object"]
    for cat in CATEGORIES:
        if cat == "single_object":
            continue
        rng = random.Random(f"train:{seed}:{cat}")
        seen: set[str] = set()
        for _ in range(50 * per_category):
            if len(seen) >= per_category:
                break
            scene = sample_scene(rng, cat, size)
            try:
                place(scene, rng)
            except PlacementError:
                continue
            text = caption(scene)
            if text in seen or text in eval_texts:
                continue
            seen.add(text)
            scene.objects = []
            out.append(EvalPrompt(f"train-{cat}-{len(seen):03d}", cat, text, scene.to_json(), [0]))
    return out


def stratified_pairs(prompts: list[EvalPrompt], n: int | None = None) -> list[tuple[EvalPrompt, int]]:
    """(prompt, seed) pairs ordered so that any prefix is balanced: categories take turns, and
    within a category every prompt comes once (seed 0) before any comes twice. The training-time
    evaluator takes the first ``n``, so a small budget still covers every category."""
    by_cat: dict[str, list[tuple[EvalPrompt, int]]] = {}
    for p in prompts:
        by_cat.setdefault(p.category, [])
    depth = max((len(p.seeds) for p in prompts), default=0)
    for k in range(depth):
        for p in prompts:
            if k < len(p.seeds):
                by_cat[p.category].append((p, p.seeds[k]))
    queues = list(by_cat.values())
    out: list[tuple[EvalPrompt, int]] = []
    i = 0
    while any(queues) and (n is None or len(out) < n):
        q = queues[i % len(queues)]
        if q:
            out.append(q.pop(0))
        i += 1
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


def exact_objects(spec: Scene, det: Detection) -> bool:
    """The image holds exactly the promised objects: each group's count, nothing else."""
    if len(det.objects) != sum(g.count for g in spec.groups):
        return False
    return all(len(_group_detections(det, g.shape, g.color)) == g.count for g in spec.groups)


def strict_pass(spec: Scene, det: Detection) -> bool:
    return all(check_image(spec, det).values()) and exact_objects(spec, det)


def shape_swapped(spec: Scene, k: int) -> Scene:
    """``spec`` with the shape vocabulary rotated by ``k`` (groups keep distinct shapes)."""
    swapped = Scene.from_json(spec.to_json())
    for g in swapped.groups:
        g.shape = SHAPES[(SHAPES.index(g.shape) + k) % len(SHAPES)]
    return swapped


def stderr(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else 0.0


def _rate(values: list[bool]) -> float:
    return sum(values) / len(values)


@dataclass
class ShapesEvalReport:
    """Strict accuracy is the headline (``overall``, ``categories``); ``se`` holds the binomial
    standard errors; ``lenient`` is GenEval's rule; ``swap_control`` = strict minus shape-swapped."""

    overall: float
    categories: dict[str, float]
    checks: dict[str, float]
    n: int
    per_image: list[dict[str, Any]] = field(default_factory=list)
    extra_objects: dict[str, float] = field(default_factory=dict)  # category -> share of images with more objects than promised
    se: dict[str, float] = field(default_factory=dict)  # "overall" and each category
    lenient: dict[str, float] = field(default_factory=dict)  # "overall" and each category
    counts: dict[str, int] = field(default_factory=dict)  # images per category
    swap_control: float = 0.0
    swap_control_se: float = 0.0
    swapped: float = 0.0  # strict accuracy against shape-swapped specs
    single_one_right_colour: float | None = None  # single objects: exactly one object, of the promised colour

    def to_json(self) -> dict[str, Any]:
        return {"overall": self.overall, "categories": self.categories, "se": self.se, "lenient": self.lenient, "counts": self.counts,
                "swap_control": self.swap_control, "swap_control_se": self.swap_control_se, "swapped": self.swapped,
                "single_one_right_colour": self.single_one_right_colour, "checks": self.checks, "n": self.n,
                "extra_objects": self.extra_objects, "per_image": self.per_image}

    def table(self) -> str:
        return format_table(self.to_json())


def format_table(report: dict[str, Any]) -> str:
    """The report (``ShapesEvalReport.to_json()``, as model cards store it) as a text table."""
    se, lenient, extra, counts = (report.get(k) or {} for k in ("se", "lenient", "extra_objects", "counts"))
    lines = [f"{'category':<16}{'strict':>8} {'±':<6}{'lenient':>9}{'extra objects':>15}{'n':>6}"]
    for cat, acc in report["categories"].items():
        lines.append(f"{cat:<16}{acc:>8.3f} {se.get(cat, 0.0):<6.3f}{lenient.get(cat, 0.0):>9.3f}"
                     + (f"{extra[cat]:>15.3f}" if cat in extra else f"{'':>15}") + f"{counts.get(cat, 0):>6}")
    lines.append(f"{'overall':<16}{report['overall']:>8.3f} {se.get('overall', 0.0):<6.3f}{lenient.get('overall', 0.0):>9.3f}")
    lines.append("")
    lines.append(f"shape-swap control (strict minus shape-swapped; 0 = knows nothing of shape): "
                 f"{report.get('swap_control', 0.0):.3f} ± {report.get('swap_control_se', 0.0):.3f} (swapped {report.get('swapped', 0.0):.3f})")
    if report.get("single_one_right_colour") is not None:
        lines.append(f"single objects with exactly one object of the promised colour: {report['single_one_right_colour']:.3f}")
    if report.get("checks"):
        lines.append("")
        lines.append(f"{'check':<16}{'pass rate':>10}")
        for chk, acc in report["checks"].items():
            lines.append(f"{chk:<16}{acc:>10.3f}")
    lines.append(f"({report.get('n', 0)} images; strict = exactly the promised objects and every check; lenient = GenEval's rule)")
    return "\n".join(lines)


def score(specs: list[Scene], detections: list[Detection], names: list[str] | None = None) -> ShapesEvalReport:
    """Aggregate per-image checks into strict and lenient accuracies, with errors and the control."""
    strict: dict[str, list[bool]] = {}
    lenient: dict[str, list[bool]] = {}
    by_check: dict[str, list[bool]] = {}
    extra: dict[str, list[bool]] = {}
    swap_gain: dict[str, list[float]] = {}
    swapped_rate: list[float] = []
    one_colour: list[bool] = []
    per_image = []
    for i, (spec, det) in enumerate(zip(specs, detections)):
        res = check_image(spec, det)
        ok = all(res.values())
        exact = ok and exact_objects(spec, det)
        swaps = [strict_pass(shape_swapped(spec, k), det) for k in range(1, len(SHAPES))]
        lenient.setdefault(spec.category, []).append(ok)
        strict.setdefault(spec.category, []).append(exact)
        swap_gain.setdefault(spec.category, []).append(float(exact) - sum(swaps) / len(swaps))
        swapped_rate.append(sum(swaps) / len(swaps))
        cluttered = len(det.objects) > sum(g.count for g in spec.groups)
        extra.setdefault(spec.category, []).append(cluttered)
        if spec.category == "single_object":
            one_colour.append(len(det.objects) == 1 and det.objects[0].color == spec.groups[0].color)
        for k, v in res.items():
            by_check.setdefault(k, []).append(v)
        per_image.append({"name": names[i] if names else i, "category": spec.category, "pass": exact, "lenient_pass": ok, "checks": res,
                          "extra_objects": cluttered, "detected": [f"{o.size} {o.color} {o.shape}" for o in det.objects], "background": det.background})
    order = [c for c in CATEGORIES if c in strict]
    cats = {c: _rate(strict[c]) for c in order}
    counts = {c: len(strict[c]) for c in order}
    se = {c: stderr(cats[c], counts[c]) for c in order}
    overall = sum(cats.values()) / len(cats) if cats else 0.0
    # the overall is a mean of category rates, so its variance is the mean of their variances over C
    se["overall"] = math.sqrt(sum(v * v for v in se.values())) / len(cats) if cats else 0.0
    len_cats = {c: _rate(lenient[c]) for c in order}
    len_cats["overall"] = sum(len_cats.values()) / len(order) if order else 0.0
    gains = {c: sum(v) / len(v) for c, v in swap_gain.items()}
    control = sum(gains[c] for c in order) / len(order) if order else 0.0
    # standard error of the control from the spread of per-image gains within each category
    var = 0.0
    for c in order:
        g = swap_gain[c]
        mu = gains[c]
        var += (sum((x - mu) ** 2 for x in g) / max(1, len(g) - 1)) / len(g)
    control_se = math.sqrt(var) / len(order) if order else 0.0
    checks = {c: _rate(v) for c in CHECKS for v in [by_check.get(c)] if v}
    extra_share = {c: _rate(extra[c]) for c in order}
    return ShapesEvalReport(overall, cats, checks, len(specs), per_image, extra_share, se, len_cats, counts, control, control_se,
                            sum(swapped_rate) / len(swapped_rate) if swapped_rate else 0.0, _rate(one_colour) if one_colour else None)


def metrics(report: ShapesEvalReport, prefix: str = "shapes_eval") -> dict[str, float]:
    """The report as flat metrics for the training log (strict unless named lenient)."""
    out = {f"{prefix}/overall": report.overall, f"{prefix}/se/overall": report.se.get("overall", 0.0),
           f"{prefix}/lenient/overall": report.lenient.get("overall", 0.0), f"{prefix}/swap_control": report.swap_control}
    out.update({f"{prefix}/{k}": v for k, v in report.categories.items()})
    out.update({f"{prefix}/se/{k}": v for k, v in report.se.items() if k != "overall"})
    out.update({f"{prefix}/lenient/{k}": v for k, v in report.lenient.items() if k != "overall"})
    out.update({f"{prefix}/extra_objects/{k}": v for k, v in report.extra_objects.items()})
    if report.single_one_right_colour is not None:
        out[f"{prefix}/single_one_right_colour"] = report.single_one_right_colour
    return out


def shapes_eval(images: list[Image.Image], specs: list[Scene], detector: Any, names: list[str] | None = None) -> ShapesEvalReport:
    """Detect every image and score it against its prompt's spec."""
    if len(images) != len(specs):
        raise ValueError("one spec per image is needed")
    return score(specs, detector(images), names)
