"""Build the Studio as a desktop bundle with PyInstaller (``make package``).

The Studio imports no ML library (an import-linter contract), so the bundle holds Qt, pyqtgraph,
numpy, httpx and our ``studio`` package, not torch: the engine runs in a Python environment of its
own that the bundled Studio starts backends with (File → Backend environment…). The build leaves
``dist/signal-studio/`` (a folder bundle: start ``dist/signal-studio/signal-studio``), puts the
freedesktop entry and the icons beside it, prints the bundle's size, and with ``--smoke`` launches it
offscreen and saves a screenshot of its start page to ``dist/signal-studio-smoke.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DIST = REPO / "dist"
# engine libraries the Studio never imports (import-linter forbids it): keep PyInstaller from following them
EXCLUDE = ["torch", "torchvision", "diffusers", "transformers", "accelerate", "peft", "lpips", "safetensors", "sqlite_utils",
           "fastapi", "uvicorn", "pyarrow", "pandas", "scipy", "matplotlib", "tkinter", "IPython", "pytest"]


def build() -> Path:
    import PyInstaller.__main__

    sep = os.pathsep
    args = [str(REPO / "packaging" / "launcher.py"), "--name", "signal-studio", "--onedir", "--windowed", "--noconfirm", "--clean",
            "--distpath", str(DIST), "--workpath", str(REPO / "build" / "pyinstaller"), "--specpath", str(REPO / "build" / "pyinstaller"),
            "--paths", str(REPO), "--icon", str(REPO / "resources" / "icons" / "signal-studio.ico"),
            "--add-data", f"{REPO / 'resources' / 'icons'}{sep}resources/icons", "--log-level", "WARN"]
    for mod in EXCLUDE:
        args += ["--exclude-module", mod]
    PyInstaller.__main__.run(args)
    out = DIST / "signal-studio"
    shutil.copy(REPO / "packaging" / "signal-studio.desktop", DIST / "signal-studio.desktop")
    shutil.copytree(REPO / "resources" / "icons", DIST / "icons", dirs_exist_ok=True)
    return out


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def smoke(folder: Path, shot: Path) -> None:
    """Start the bundle offscreen; it shows its start page, saves a screenshot and quits."""
    exe = folder / ("signal-studio.exe" if os.name == "nt" else "signal-studio")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    env.pop("SIGNAL_STUDIO_PYTHON", None)
    subprocess.run([str(exe), "--screenshot", str(shot)], env=env, check=True, timeout=120)
    if not shot.exists():
        raise SystemExit(f"the bundle started but wrote no screenshot to {shot}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="launch the built bundle offscreen and screenshot its start page")
    args = ap.parse_args()
    folder = build()
    bundled_torch = [p for p in folder.rglob("*") if p.name.startswith(("libtorch", "torch"))]
    print(f"bundle {folder.relative_to(REPO)}: {size_mb(folder):.0f} MiB" + (f"; WARNING torch files inside: {bundled_torch[:3]}" if bundled_torch else ", no torch inside"))
    if args.smoke:
        shot = DIST / "signal-studio-smoke.png"
        shot.unlink(missing_ok=True)
        smoke(folder, shot)
        print(f"smoke launch: start page screenshot {shot.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
