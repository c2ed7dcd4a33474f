"""The desktop bundle (packaging/): built with PyInstaller as ``make package`` does, then launched
offscreen as a user's first start would be (fresh settings, no backend environment chosen).

The build takes about half a minute on two cores, so the suite builds it once here rather than
leaving the bundle to a bench target that CI would not run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def test_the_desktop_bundle_builds_without_the_engine_and_shows_its_start_page(tmp_path: Path):
    dist = tmp_path / "dist"
    run = subprocess.run([sys.executable, str(REPO / "packaging" / "build.py"), "--smoke", "--dist", str(dist)],
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    folder = dist / "signal-studio"
    assert (folder / "signal-studio").is_file() and (dist / "signal-studio.desktop").is_file() and (dist / "icons" / "signal-studio-256.png").is_file()
    assert "no torch inside" in run.stdout and not list(folder.rglob("libtorch*")) and not list(folder.rglob("torch/__init__.py"))
    size_mib = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    assert 30 < size_mib < 800, size_mib  # Qt and numpy, not a multi-GB engine
    # the bundle itself said what it showed: the start page, a backend still to be chosen (none ships inside)
    assert "shown: start page of 'Signal Studio', backend to choose" in run.stdout, run.stdout[-2000:]
    shot = np.asarray(Image.open(dist / "signal-studio-smoke.png").convert("L"), dtype=np.float32)
    assert shot.shape[0] >= 400 and shot.shape[1] >= 600 and shot.std() > 10  # a drawn window, not a blank frame
