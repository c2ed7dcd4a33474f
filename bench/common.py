"""Shared helpers for the benchmark scripts: a scratch project with ShapesWorld data, a metrics sink."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SIGNAL_STUDIO_HOME", tempfile.mkdtemp(prefix="signal-bench-home-"))

from backend.train.reporter import Reporter  # noqa: E402


def scratch_project(n: int = 512, resolution: tuple[int, int] | None = (32, 32), seed: int = 0, root: Path | None = None,
                    categories: list[str] | None = None) -> Path:
    """A new project with ``n`` ShapesWorld scenes (of some categories only, if given) imported as dataset 'shapesworld'."""
    from backend.data.importer import import_sources
    from backend.store import Project
    from backend.world.export import export_world

    root = Path(root or tempfile.mkdtemp(prefix="signal-bench-"))
    export_world(root / "export", n, seed, subject=False, resolution=resolution, categories=categories)
    with Project.init(root / "proj") as project:
        import_sources(project, "shapesworld", [root / "export"])
    return root / "proj"


class Collect(Reporter):
    """Keeps every metric in memory; prints the log lines it gets."""

    def __init__(self, quiet: bool = True):
        self.rows: list[tuple[int, str, float]] = []
        self.quiet = quiet

    def log(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.rows += [(step, k, float(v)) for k, v in values.items()]

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(s, v) for s, k, v in self.rows if k == key]


def table(rows: list[list[Any]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in [h] + [r[i] for r in rows]) for i, h in enumerate(header)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def chart(series: dict[str, list[tuple[float, float, float]]], out: Path, *, xlabel: str, ylabel: str, hlines: list[tuple[float, str]] = (),
          logx: bool = False, ylim: tuple[float, float] = (0.0, 1.0), size: tuple[int, int] = (720, 440)) -> None:
    """A line chart with error bars, drawn with PIL (the benches need one PNG, not a plotting library)."""
    import math

    from PIL import Image, ImageDraw

    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    W, H = size
    left, right, top, bottom = 70, 20, 20, 110
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    xs = [x for pts in series.values() for x, _, _ in pts]
    fx = (lambda v: math.log10(v)) if logx else (lambda v: v)
    x0, x1 = fx(min(xs)), fx(max(xs))
    x0, x1 = (x0 - 0.05 * (x1 - x0 or 1), x1 + 0.05 * (x1 - x0 or 1))
    px = lambda v: left + (fx(v) - x0) / (x1 - x0) * (W - left - right)  # noqa: E731
    py = lambda v: top + (ylim[1] - v) / (ylim[1] - ylim[0]) * (H - top - bottom)  # noqa: E731
    d.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for k in range(11):
        v = ylim[0] + k * (ylim[1] - ylim[0]) / 10
        d.line([left - 4, py(v), left, py(v)], fill=(0, 0, 0))
        d.text((8, py(v) - 6), f"{v:.2f}", fill=(0, 0, 0))
    for x in sorted(set(xs)):
        d.line([px(x), H - bottom, px(x), H - bottom + 4], fill=(0, 0, 0))
        d.text((px(x) - 10, H - bottom + 8), f"{x:g}", fill=(0, 0, 0))
    d.text(((W - len(xlabel) * 6) // 2, H - bottom + 26), xlabel, fill=(0, 0, 0))
    d.text((8, 4), ylabel, fill=(0, 0, 0))
    legend_y = H - bottom + 44
    for k, (y, label) in enumerate(hlines):  # labels alternate left and right, so two close lines keep both readable
        grey = (120, 120, 120)
        for xx in range(left, W - right, 8):
            d.line([xx, py(y), xx + 4, py(y)], fill=grey)
        d.text((left + 4 if k % 2 == 0 else W - right - 4 - 6 * len(label), py(y) - 12), label, fill=grey)
    for i, (name, pts) in enumerate(series.items()):
        c = colours[i % len(colours)]
        pts = sorted(pts)
        d.line([(px(x), py(y)) for x, y, _ in pts], fill=c, width=2)
        for x, y, e in pts:
            d.line([px(x), py(y - e), px(x), py(y + e)], fill=c)
            d.ellipse([px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3], fill=c)
        lx, ly = left + 320 * (i % 2), legend_y + 20 + 14 * (i // 2)  # two columns, so long names do not run into each other
        d.rectangle([lx, ly + 2, lx + 12, ly + 10], fill=c)
        d.text((lx + 16, ly), name, fill=(0, 0, 0))
    img.save(out)


def stream_recipe(name: str) -> str:
    """A tiny pretraining job that streams a loss point every step and previews every 15 steps, for
    as long as a bench needs (stop it through the API)."""
    return f"""kind = "pretrain"
name = "{name}"
[data]
dataset = "shapesworld"
[model]
size = "tiny"
[[curriculum]]
steps = 100000
buckets = [[32, 32]]
[optim]
batch_size = 8
[schedule]
log_every = 1
sample_every = 15
checkpoint_every = 100000
[preview]
prompts = ["a red circle", "a blue square", "two green triangles", "a yellow star"]
seeds = [0, 1]
[preview.sampler]
steps = 4
width = 32
height = 32
"""
