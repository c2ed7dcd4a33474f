"""ShapesWorld vocabulary and the structured ground truth of a scene.

A scene is what a caption promises (groups of identical objects, an optional relation between
two groups, a background) plus where every object ended up. The same structure is the
ground truth the detector is scored against, so it is plain data that round-trips through JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
PLURALS = {"cross": "crosses"}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 45),
    "orange": (245, 135, 20),
    "yellow": (240, 210, 25),
    "green": (40, 165, 65),
    "cyan": (30, 190, 210),
    "blue": (40, 75, 215),
    "purple": (125, 55, 185),
    "pink": (240, 115, 190),
}
COLOR_NAMES = tuple(COLORS)
SIZES = {"small": 0.26, "large": 0.42}  # object diameter as a fraction of the image's shorter side
BACKGROUNDS = ("plain", "gradient", "stripes", "dots")
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}  # scenes hold at most four; five names a copy with one too many
CATEGORIES = ("single_object", "counting", "colour_binding", "spatial", "background")
# Image sizes (width, height): 32 to 128 px, aspect ratios 1:1, 4:3, 3:4, 3:2, 2:3, 2:1, 1:2.
RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (32, 32), (48, 48), (64, 64), (96, 96), (128, 128),
    (64, 48), (128, 96), (48, 64), (96, 128),
    (96, 64), (64, 96),
    (64, 32), (128, 64), (32, 64), (64, 128),
)


def plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


def pastel(color: str, amount: float = 0.62) -> tuple[int, int, int]:
    """The light tint of a named colour used for backgrounds (never confused with object fills)."""
    r, g, b = COLORS[color]
    return tuple(int(round(c + (255 - c) * amount)) for c in (r, g, b))  # type: ignore[return-value]


@dataclass
class Group:
    """``count`` identical objects: same shape, colour and size."""

    shape: str
    color: str
    size: str = "small"
    count: int = 1


@dataclass
class Relation:
    """Group ``a`` is ``kind`` group ``b`` (e.g. group 0 'above' group 1)."""

    kind: str
    a: int = 0
    b: int = 1


@dataclass
class Background:
    kind: str = "plain"
    color: str = "yellow"
    variant: int = 0  # rendering detail (gradient/stripe direction, dot phase); not captioned


@dataclass
class PlacedObject:
    shape: str
    color: str
    size: str
    group: int
    center: tuple[float, float]  # normalised (x, y), y down
    radius: float  # normalised to the shorter side
    rotation: float = 0.0

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Normalised bounding box (x0, y0, x1, y1) of the object's circumscribed circle."""
        short = min(width, height)
        rx, ry = self.radius * short / width, self.radius * short / height
        cx, cy = self.center
        return (cx - rx, cy - ry, cx + rx, cy + ry)


@dataclass
class Scene:
    """Everything a caption can promise about an image, and where the objects went."""

    width: int
    height: int
    category: str
    groups: list[Group]
    background: Background
    relation: Relation | None = None
    objects: list[PlacedObject] = field(default_factory=list)
    mention_size: bool = False
    mention_background: bool = False

    @property
    def complexity(self) -> int:
        """1 = one plain object ... 4 = two related groups; the curriculum draws by this."""
        if self.relation is not None:
            return 4
        if len(self.groups) > 1:
            return 3
        g = self.groups[0]
        if g.count > 1 or self.mention_size or self.mention_background:
            return 2
        return 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["complexity"] = self.complexity
        data["objects"] = [
            {**asdict(o), "box": [round(v, 4) for v in o.box(self.width, self.height)]} for o in self.objects
        ]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scene:
        objects = [
            PlacedObject(
                shape=o["shape"], color=o["color"], size=o["size"], group=o["group"],
                center=tuple(o["center"]), radius=o["radius"], rotation=o.get("rotation", 0.0),
            )
            for o in data.get("objects", [])
        ]
        rel = data.get("relation")
        return cls(
            width=data["width"],
            height=data["height"],
            category=data["category"],
            groups=[Group(**g) for g in data["groups"]],
            background=Background(**data["background"]),
            relation=Relation(**rel) if rel else None,
            objects=objects,
            mention_size=data.get("mention_size", False),
            mention_background=data.get("mention_background", False),
        )
