"""The DreamBooth subject: one specific patterned object that the base data never contains.

Base objects are flat single-colour fills from the palette and never touch. The subject is a
disc in four quarters, orange and blue alternating: two palette colours meeting along its
quarter lines, which no base image holds, so "is it there?" has an exact answer
(``subject_regions``). Its class is "circle", so the class prompt for prior preservation is
"a circle". An earlier subject (a teal/magenta checkerboard with a dark rim, colours outside the
palette) could not be learned: the shipped VAE, trained on palette colours only, returns it as a
green mottled disc, so no model drawing through that VAE could show it.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw

from .render import SUPERSAMPLE, draw_background
from .spec import BACKGROUNDS, COLOR_NAMES, COLORS, Background, Scene

SUBJECT_CLASS = "circle"
SUBJECT_TOKEN = "sks"
SUBJECT_COLOR_NAMES = ("orange", "blue")
SUBJECT_COLORS = (COLORS["orange"], COLORS["blue"])


def _draw_subject(img: Image.Image, cx: float, cy: float, r: float, angle: float) -> None:
    """A disc in four quarters, orange and blue alternating, turned by ``angle``."""
    W, H = img.size
    mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(mask).ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    pattern = Image.new("RGB", (W, H))
    pd = ImageDraw.Draw(pattern)
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for i in range(-2, 2):
        for j in range(-2, 2):
            corners = []
            for di, dj in ((0, 0), (1, 0), (1, 1), (0, 1)):
                x, y = (i + di) * r, (j + dj) * r
                corners.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
            pd.polygon(corners, fill=SUBJECT_COLORS[(i + j) % 2])
    img.paste(pattern, (0, 0), mask)


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


SUBJECT_TOLERANCE = 45.0  # RGB distance to orange / blue: about half the gap to their nearest palette neighbours (yellow 75, purple 92)
SUBJECT_MIN_AREA = 0.02  # of the image: a 64 px subject covers 15-40 %
SUBJECT_MIN_CONTACT = 0.008  # of the image: orange and blue pixels within 6 px of the other colour (the quarter lines)
SUBJECT_REACH = 6  # px at 64: the VAE's round trip blurs the quarter lines into a band up to ~5 px wide
# Calibrated on 64 px images: the subject's VAE round trips have contact >= 0.013 (60 renders), base renders 0 (2000),
# the shipped base's samples <= 0.004 (480 eval images, touching blobs of the two colours)


def subject_masks(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the pixels in the subject's two colours (orange, blue)."""
    x = np.asarray(img.convert("RGB"), dtype=np.float32)
    return tuple(np.sqrt(((x - np.array(c, dtype=np.float32)) ** 2).sum(-1)) < SUBJECT_TOLERANCE for c in SUBJECT_COLORS)  # type: ignore[return-value]


def subject_regions(img: Image.Image) -> list[tuple[float, float, float]]:
    """The subjects in an image as (centre x, centre y, area), fractions of the image: connected
    regions of orange and blue where the two colours meet along a line, as only the subject's
    quarters do. A flat orange or blue object, or two objects side by side, is not one."""
    from scipy import ndimage

    orange, blue = subject_masks(img)
    h, w = orange.shape
    reach = max(1, round(SUBJECT_REACH * min(h, w) / 64))
    coloured = orange | blue
    labels, n = ndimage.label(ndimage.binary_dilation(coloured, iterations=reach // 2))
    if n == 0:
        return []
    contact = (ndimage.binary_dilation(orange, iterations=reach) & blue) | (ndimage.binary_dilation(blue, iterations=reach) & orange)
    out = []
    for k in range(1, n + 1):
        region = (labels == k) & coloured
        area = float(region.mean())
        if area < SUBJECT_MIN_AREA or float((contact & region).mean()) < SUBJECT_MIN_CONTACT:
            continue
        if min(float((orange & region).sum()), float((blue & region).sum())) < 0.2 * float(region.sum()):
            continue  # one colour with a fringe of the other: not a quartered disc
        ys, xs = np.nonzero(region)
        out.append((float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h, area))
    return out


def subject_found(img: Image.Image) -> bool:
    """Whether the image shows the subject (in personalized samples) or lets it leak (into the class's)."""
    return bool(subject_regions(img))


def subject_center(img: Image.Image) -> tuple[float, float] | None:
    """Centre of the largest subject as fractions of the width and height, or None when absent."""
    regions = subject_regions(img)
    if not regions:
        return None
    x, y, _ = max(regions, key=lambda r: r[2])
    return x, y
