"""Shared fixtures: every test gets its own SIGNAL_STUDIO_HOME so nothing touches the user's data."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["SIGNAL_STUDIO_HOME"] = tempfile.mkdtemp(prefix="signal-home-")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest-xdist: the workers share the cores, so each (and its jobs) takes its part
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
atexit.register(shutil.rmtree, os.environ["SIGNAL_STUDIO_HOME"], True)


@pytest.fixture(autouse=True)
def studio_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("SIGNAL_STUDIO_HOME", str(home))
    return home


def run_cli(*args: str, check: bool = False, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``signal-backend`` as a user would: a real subprocess."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "backend", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"signal-backend {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def tiny_pretrain_recipe(**over) -> str:
    """A pretrain recipe small enough for a test (tiny MMDiT or UNet, 32x32, a handful of steps)."""
    steps = over.get("steps", 8)
    return f"""
kind = "pretrain"
name = "{over.get('name', 'tiny')}"
[data]
dataset = "shapes"
caption_dropout = 0.1
[model]
family = "{over.get('family', 'mmdit')}"
size = "tiny"
[allocation.timesteps]
kind = "{over.get('density', 'logit_normal')}"
[allocation.shift]
kind = "per_bucket"
base_resolution = 32
[[curriculum]]
name = "only"
steps = {steps}
buckets = [[32, 32]]
complexity = [1, 4]
[repa]
enabled = {str(over.get('repa', False)).lower()}
block = 0
[optim]
batch_size = {over.get('batch', 8)}
lr = {over.get('lr', 0.001)}
warmup = 2
ema = 0.9
seed = {over.get('seed', 0)}
[schedule]
log_every = 2
checkpoint_every = {over.get('checkpoint_every', 4)}
sample_every = {over.get('sample_every', 4)}
eval_images = {over.get('eval_images', 6)}
[preview]
prompts = ["a red circle", "a blue square"]
seeds = [0]
[preview.sampler]
steps = 4
cfg = 2.0
width = 32
height = 32
[compute]
processes = {over.get('processes', 1)}
threads = {over.get('threads', 0)}
"""


@pytest.fixture(scope="module")
def shapes_project(shapes_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with 160 ShapesWorld images at 32x32 in dataset 'shapes': each test file gets its own copy, so
    what one file's tests leave in it (jobs, ratings, links) is seen by that file alone, in any order."""
    root = tmp_path_factory.mktemp("shapes_project")
    shutil.copytree(shapes_template, root / "proj", symlinks=True)
    return root / "proj"


@pytest.fixture(scope="session")
def shapes_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project ``shapes_project`` copies, built once per session (per worker under pytest-xdist)."""
    root = tmp_path_factory.mktemp("shapes_template")
    export = root / "export"
    run_cli("world", "export", str(export), "--n", "160", "--seed", "11", "--resolution", "32x32", "--no-subject", check=True)
    run_cli("project", "init", str(root / "proj"), check=True)
    run_cli("import", str(export), "--project", str(root / "proj"), "--dataset", "shapes", check=True)
    return root / "proj"
