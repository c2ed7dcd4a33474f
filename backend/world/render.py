"""Anti-aliased rendering of ShapesWorld scenes with PIL.

Shapes are drawn at 4x and reduced with a box filter, which gives exact area coverage at the
edges (the anti-aliasing a camera or a VAE would produce) while fills keep their exact colour.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from .spec import COLORS, PlacedObject, Scene, pastel

SUPERSAMPLE = 4


def shape_polygon(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    """Outline of ``shape`` centred at (cx, cy), fitting a circle of radius ``r``."""
    rot = math.radians(rotation)

    def polar(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        out = []
        for x, y in points:
            xr = x * math.cos(rot) - y * math.sin(rot)
            yr = x * math.sin(rot) + y * math.cos(rot)
            out.append((cx + xr * r, cy + yr * r))
        return out

    if shape == "circle":
        n = 64
        return [(cx + r * 0.92 * math.cos(2 * math.pi * k / n), cy + r * 0.92 * math.sin(2 * math.pi * k / n)) for k in range(n)]
    if shape == "square":
        h = 0.75
        return polar([(-h, -h), (h, -h), (h, h), (-h, h)])
    if shape == "triangle":
        pts = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (-90, 30, 150)]
        return polar([(x, y + 0.12) for x, y in pts])
    if shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            a = math.radians(-90 + 36 * k)
            pts.append((rad * math.cos(a), rad * math.sin(a) + 0.06))
        return polar(pts)
    if shape == "cross":
        w, L = 0.3, 0.9
        return polar([(-w, -L), (w, -L), (w, -w), (L, -w), (L, w), (w, w), (w, L), (-w, L), (-w, w), (-L, w), (-L, -w), (-w, -w)])
    if shape == "heart":
        pts = []
        for k in range(60):
            t = 2 * math.pi * k / 60
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x / 17.0, (y + 2.5) / 17.0))
        return polar(pts)
    raise ValueError(f"unknown shape {shape!r}")


def draw_background(draw: ImageDraw.ImageDraw, scene: Scene, W: int, H: int) -> None:
    bg = scene.background
    short = min(W, H)
    v = bg.variant
    if bg.kind == "plain":
        draw.rectangle([0, 0, W, H], fill=pastel(bg.color))
    elif bg.kind == "gradient":
        a, b = pastel(bg.color, 0.35), pastel(bg.color, 0.9)
        horizontal = v % 2 == 0
        n = W if horizontal else H
        for i in range(n):
            f = i / max(1, n - 1)
            if v % 4 >= 2:
                f = 1 - f
            c = tuple(int(round(a[k] + (b[k] - a[k]) * f)) for k in range(3))
            if horizontal:
                draw.line([(i, 0), (i, H)], fill=c)
            else:
                draw.line([(0, i), (W, i)], fill=c)
    elif bg.kind == "stripes":
        draw.rectangle([0, 0, W, H], fill=(250, 250, 250))
        period = short / 5.0
        width = period / 2.0
        col = pastel(bg.color, 0.45)
        direction = v % 3
        if direction == 0:  # horizontal
            y = (v % 7) / 7.0 * period
            while y < H:
                draw.rectangle([0, y, W, y + width], fill=col)
                y += period
        elif direction == 1:  # vertical
            x = (v % 7) / 7.0 * period
            while x < W:
                draw.rectangle([x, 0, x + width, H], fill=col)
                x += period
        else:  # diagonal
            step = period * math.sqrt(2)
            x = -H
            while x < W:
                draw.polygon([(x, 0), (x + width * math.sqrt(2), 0), (x + width * math.sqrt(2) + H, H), (x + H, H)], fill=col)
                x += step
    elif bg.kind == "dots":
        draw.rectangle([0, 0, W, H], fill=(250, 250, 250))
        spacing = short / 6.0
        rad = short / 36.0
        col = pastel(bg.color, 0.4)
        off = (v % 5) / 5.0 * spacing
        y = off / 2
        row = 0
        while y < H + spacing:
            x = off + (spacing / 2 if row % 2 else 0)
            while x < W + spacing:
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=col)
                x += spacing
            y += spacing
            row += 1
    else:
        raise ValueError(f"unknown background {bg.kind!r}")


def draw_object(draw: ImageDraw.ImageDraw, obj: PlacedObject, W: int, H: int, fill: tuple[int, int, int] | None = None) -> None:
    short = min(W, H)
    cx, cy = obj.center[0] * W, obj.center[1] * H
    poly = shape_polygon(obj.shape, cx, cy, obj.radius * short, obj.rotation)
    draw.polygon(poly, fill=fill or COLORS[obj.color])


def render(scene: Scene) -> Image.Image:
    """The RGB image of ``scene`` at its own resolution."""
    W, H = scene.width * SUPERSAMPLE, scene.height * SUPERSAMPLE
    img = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(img)
    draw_background(draw, scene, W, H)
    for obj in scene.objects:
        draw_object(draw, obj, W, H)
    return img.resize((scene.width, scene.height), Image.BOX)
