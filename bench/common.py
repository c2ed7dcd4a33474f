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
