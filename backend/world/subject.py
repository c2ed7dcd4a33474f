"""The DreamBooth subject: one specific patterned object that the base data never contains.

Base objects are flat single-colour fills from the palette. The subject is a circle with a
teal/magenta checkerboard and a dark rim, colours outside the palette, so "is it there?" has
an exact answer. Its class is "circle", so the class prompt for prior preservation is "a circle".
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from .render import SUPERSAMPLE, draw_background
from .spec import BACKGROUNDS, COLOR_NAMES, Background, Scene

SUBJECT_CLASS = "circle"
SUBJECT_TOKEN = "sks"
SUBJECT_COLORS = ((0, 128, 128), (200, 0, 120))  # teal, magenta: not in the palette
SUBJECT_RIM = (30, 30, 40)


def _draw_subject(img: Image.Image, cx: float, cy: float, r: float, angle: float) -> None:
    W, H = img.size
    mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(mask).ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    pattern = Image.new("RGB", (W, H))
    pd = ImageDraw.Draw(pattern)
    cell = r / 2.0
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for i in range(-4, 4):
        for j in range(-4, 4):
            corners = []
            for di, dj in ((0, 0), (1, 0), (1, 1), (0, 1)):
                x, y = (i + di) * cell, (j + dj) * cell
                corners.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
            pd.polygon(corners, fill=SUBJECT_COLORS[(i + j) % 2])
    img.paste(pattern, (0, 0), mask)
    ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], outline=SUBJECT_RIM, width=max(1, int(r * 0.12)))


def subject_render(seed: int, index: int, size: tuple[int, int] = (64, 64)) -> tuple[Image.Image, dict]:
    """Instance ``index``: the subject in a new pose, size, place and background."""
    rng = random.Random(f"subject:{seed}:{index}")
    width, height = size
    bg = Background(kind=BACKGROUNDS[index % len(BACKGROUNDS)], color=rng.choice(COLOR_NAMES), variant=rng.randrange(1000))
    scene = Scene(width, height, "subject", [], bg)
    W, H = width * SUPERSAMPLE, height * SUPERSAMPLE
    img = Image.new("RGB", (W, H))
    draw_background(ImageDraw.Draw(img), scene, W, H)
    short = min(W, H)
    radius = short * rng.uniform(0.22, 0.36)
    cx = rng.uniform(radius + 2, W - radius - 2)
    cy = rng.uniform(radius + 2, H - radius - 2)
    angle = rng.uniform(0, 90)
    _draw_subject(img, cx, cy, radius, angle)
    meta = {
        "subject": True,
        "class": SUBJECT_CLASS,
        "center": [cx / W, cy / H],
        "radius": radius / short,
        "angle": angle,
        "background": {"kind": bg.kind, "color": bg.color},
    }
    return img.resize((width, height), Image.BOX), meta


def subject_instances(seed: int = 0, n: int = 5, size: tuple[int, int] = (64, 64)) -> list[tuple[Image.Image, dict]]:
    """The 4-6 reference renders a user would photograph of their subject."""
    if not 1 <= n <= 12:
        raise ValueError("n must be between 1 and 12")
    return [subject_render(seed, i, size) for i in range(n)]


def subject_prompt(context: str = "") -> str:
    text = f"a {SUBJECT_TOKEN} {SUBJECT_CLASS}"
    return f"{text} {context}".strip()
