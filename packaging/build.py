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


def build(dist: Path = DIST, work: Path = REPO / "build" / "pyinstaller") -> Path:
    import PyInstaller.__main__

    sep = os.pathsep
    args = [str(REPO / "packaging" / "launcher.py"), "--name", "signal-studio", "--onedir", "--windowed", "--noconfirm", "--clean",
            "--distpath", str(dist), "--workpath", str(work), "--specpath", str(work),
            "--paths", str(REPO), "--icon", str(REPO / "resources" / "icons" / "signal-studio.ico"),
            "--add-data", f"{REPO / 'resources' / 'icons'}{sep}resources/icons", "--log-level", "WARN"]
    for mod in EXCLUDE:
        args += ["--exclude-module", mod]
    PyInstaller.__main__.run(args)
    out = dist / "signal-studio"
    shutil.copy(REPO / "packaging" / "signal-studio.desktop", dist / "signal-studio.desktop")
    shutil.copytree(REPO / "resources" / "icons", dist / "icons", dirs_exist_ok=True)
    return out


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def smoke(folder: Path, shot: Path) -> str:
    """Start the bundle offscreen (a fresh settings folder, no backend chosen): it shows its start page,
    saves a screenshot and quits. Returns what it said it showed."""
    exe = folder / ("signal-studio.exe" if os.name == "nt" else "signal-studio")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(shot.parent / "smoke-config")}
    env.pop("SIGNAL_STUDIO_PYTHON", None)
    run = subprocess.run([str(exe), "--screenshot", str(shot)], env=env, check=True, timeout=120, capture_output=True, text=True)
    if not shot.exists():
        raise SystemExit(f"the bundle started but wrote no screenshot to {shot}\n{run.stdout}{run.stderr}")
    return run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="launch the built bundle offscreen and screenshot its start page")
    ap.add_argument("--dist", type=Path, default=DIST, help="where the bundle goes (default dist/)")
    args = ap.parse_args()
    dist = args.dist.resolve()
    folder = build(dist, dist.parent / f"{dist.name}-pyinstaller-work" if args.dist != DIST else REPO / "build" / "pyinstaller")
    bundled = engine_files(folder)
    print(f"bundle {folder}: {size_mb(folder):.0f} MiB" + (f"; WARNING engine files inside: {bundled[:3]}" if bundled else ", no torch inside"))
    if args.smoke:
        shot = dist / "signal-studio-smoke.png"
        shot.unlink(missing_ok=True)
        said = smoke(folder, shot)
        print(f"smoke launch: {said or 'no report'}; screenshot {shot}")


def engine_files(folder: Path) -> list[Path]:
    """Files of the engine libraries the bundle must not hold (the Studio imports none of them)."""
    return [p for p in folder.rglob("*") if p.name.split(".")[0].lower() in ("torch", "libtorch", "libtorch_cpu", "diffusers", "transformers")]


if __name__ == "__main__":
    sys.exit(main())
