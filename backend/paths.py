"""Where things live on this machine: per-user data, runtime files, shipped resources.

Everything goes through platformdirs so Linux, macOS and Windows each get their usual
places; ``SIGNAL_STUDIO_HOME`` overrides them all (tests and portable installs use it).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "signal-studio"


def data_home() -> Path:
    """Per-user data folder (demo project, settings)."""
    override = os.environ.get("SIGNAL_STUDIO_HOME")
    path = Path(override) if override else platformdirs.user_data_path(APP, appauthor=False)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runtime_dir() -> Path:
    """Owner-only folder for discovery files of running services."""
    override = os.environ.get("SIGNAL_STUDIO_HOME")
    if override:
        path = Path(override) / "run"
    else:
        try:
            path = platformdirs.user_runtime_path(APP, appauthor=False)
        except Exception:  # pragma: no cover - platforms without a runtime dir
            path = data_home() / "run"
    path.mkdir(parents=True, exist_ok=True)
    try:
        path.chmod(0o700)
    except OSError:  # pragma: no cover - e.g. Windows ACLs
        pass
    return path


def demo_project_dir() -> Path:
    return data_home() / "projects" / "shapesworld-demo"


def resources_dir() -> Path:
    """The repository's ``resources/`` (shipped weights, default recipes, eval prompts)."""
    override = os.environ.get("SIGNAL_STUDIO_RESOURCES")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "resources"


def shipped_base_dir() -> Path:
    """The shipped ShapesWorld base model (``make base`` trains it; later stages start from it)."""
    return resources_dir() / "models" / "shapes-base"


def shipped_reward_prior_dir() -> Path:
    """The shipped reward prior (``signal-backend reward pretrain``): where reward models start from."""
    return resources_dir() / "models" / "shapes-reward-prior"
