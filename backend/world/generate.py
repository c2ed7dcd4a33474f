"""Deterministic ShapesWorld scenes: ``make_scene(seed, index)`` always gives the same scene.

Each category exercises one skill (GenEval-style): one object, counting, colour binding of two
objects, spatial relations, and backgrounds. Objects never overlap and keep a gap, so counts and
relations are unambiguous in the ground truth.
"""

from __future__ import annotations

import math
import random

from .captions import caption
from .spec import (
    BACKGROUNDS,
    CATEGORIES,
    COLOR_NAMES,
    RELATIONS,
    RESOLUTIONS,
    SHAPES,
    SIZES,
    Background,
    Group,
    PlacedObject,
    Relation,
    Scene,
)

GAP = 0.05  # minimum gap between objects, fraction of the shorter side
# A caption that does not mention the background mostly shows a plain one (as product photos and
# clip art do); patterned backgrounds come with captions that say so, or as the remaining quarter.
PLAIN_WHEN_UNSAID = 0.75
MARGIN = 0.03


class PlacementError(RuntimeError):
    """The objects do not fit; the caller draws another scene."""


def scene_rng(seed: int, index: int, salt: str = "scene") -> random.Random:
    return random.Random(f"{salt}:{seed}:{index}")


def _resolutions(category: str) -> list[tuple[int, int]]:
    if category in ("single_object", "background"):
        return list(RESOLUTIONS)
    return [r for r in RESOLUTIONS if min(r) >= 48]


def sample_scene(rng: random.Random, category: str, resolution: tuple[int, int] | None = None) -> Scene:
    """Draw the promise of a scene (no placement yet)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; one of {CATEGORIES}")
    width, height = resolution or rng.choice(_resolutions(category))
    bg = Background(kind=rng.choice(BACKGROUNDS), color=rng.choice(COLOR_NAMES), variant=rng.randrange(1000))
    colors = [c for c in COLOR_NAMES if c != bg.color]
    shapes = list(SHAPES)
    rng.shuffle(colors)
    rng.shuffle(shapes)
    relation = None
    mention_size = False
    mention_bg = False
    if category == "single_object":
        groups = [Group(shapes[0], colors[0], rng.choice(tuple(SIZES)), 1)]
        mention_size = rng.random() < 0.3
    elif category == "counting":
        groups = [Group(shapes[0], colors[0], "small", rng.randint(2, 4))]
        mention_size = rng.random() < 0.3
    elif category == "colour_binding":
        groups = [Group(shapes[0], colors[0], rng.choice(tuple(SIZES)), 1), Group(shapes[1], colors[1], rng.choice(tuple(SIZES)), 1)]
        mention_size = rng.random() < 0.3
    elif category == "spatial":
        groups = [
            Group(shapes[0], colors[0], rng.choice(tuple(SIZES)), rng.choice((1, 1, 1, 2))),
            Group(shapes[1], colors[1], rng.choice(tuple(SIZES)), rng.choice((1, 1, 2))),
        ]
        relation = Relation(rng.choice(RELATIONS), 0, 1)
        mention_bg = rng.random() < 0.3
    else:  # background
        groups = [Group(shapes[0], colors[0], rng.choice(tuple(SIZES)), 1)]
        mention_bg = True
    if not mention_bg and rng.random() < PLAIN_WHEN_UNSAID:
        bg.kind = "plain"
    return Scene(width, height, category, groups, bg, relation, [], mention_size, mention_bg)


def _regions(scene: Scene, rng: random.Random) -> list[tuple[float, float, float, float]]:
    """Allowed centre region (x0, y0, x1, y1), normalised, per group."""
    full = (0.0, 0.0, 1.0, 1.0)
    if scene.relation is None:
        return [full] * len(scene.groups)
    split = rng.uniform(0.45, 0.55)
    first, second = (0.0, 0.0, split, 1.0), (split, 0.0, 1.0, 1.0)
    if scene.relation.kind in ("above", "below"):
        first, second = (0.0, 0.0, 1.0, split), (0.0, split, 1.0, 1.0)
    regions = [full] * len(scene.groups)
    a, b = scene.relation.a, scene.relation.b
    if scene.relation.kind in ("left of", "above"):
        regions[a], regions[b] = first, second
    else:
        regions[a], regions[b] = second, first
    return regions


def draw_rotation(shape: str, rng: random.Random) -> float:
    """The rotation the world gives a new object: none for a circle, within 15 degrees of upright otherwise
    (a square at 45 degrees would be a diamond, which no caption names)."""
    return 0.0 if shape == "circle" else rng.uniform(-15, 15)


def place(scene: Scene, rng: random.Random, tries: int = 300) -> Scene:
    """Put every object of ``scene`` on the canvas without overlaps; raises PlacementError."""
    W, H = scene.width, scene.height
    short = min(W, H)
    regions = _regions(scene, rng)
    placed: list[PlacedObject] = []
    for gi, group in enumerate(scene.groups):
        radius = SIZES[group.size] / 2 * rng.uniform(0.92, 1.08)
        rx, ry = radius * short / W, radius * short / H
        mx, my = MARGIN * short / W, MARGIN * short / H
        x0, y0, x1, y1 = regions[gi]
        lo_x, hi_x = x0 + rx + mx, x1 - rx - mx
        lo_y, hi_y = y0 + ry + my, y1 - ry - my
        if lo_x > hi_x or lo_y > hi_y:
            raise PlacementError("object larger than its region")
        for _ in range(group.count):
            for _attempt in range(tries):
                cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
                ok = True
                for other in placed:
                    dx = (cx - other.center[0]) * W
                    dy = (cy - other.center[1]) * H
                    if math.hypot(dx, dy) < (radius + other.radius + GAP) * short:
                        ok = False
                        break
                if ok:
                    placed.append(PlacedObject(group.shape, group.color, group.size, gi, (cx, cy), radius, draw_rotation(group.shape, rng)))
                    break
            else:
                raise PlacementError("no free spot left")
    scene.objects = placed
    return scene


def make_scene(seed: int, index: int, category: str | None = None, resolution: tuple[int, int] | None = None) -> Scene:
    """The scene number ``index`` of world ``seed`` (category drawn uniformly unless given)."""
    rng = scene_rng(seed, index)
    cat = category or rng.choice(CATEGORIES)
    for _ in range(50):
        scene = sample_scene(rng, cat, resolution)
        try:
            return place(scene, rng)
        except PlacementError:
            continue
    raise PlacementError(f"could not place scene {index} of category {cat}")


def make_caption(seed: int, index: int, scene: Scene, paraphrase: bool = True) -> str:
    """Caption of scene ``index``: canonical, or a paraphrase drawn deterministically."""
    rng = scene_rng(seed, index, "caption")
    return caption(scene, paraphrase=1 if paraphrase else 0, rng=rng)
