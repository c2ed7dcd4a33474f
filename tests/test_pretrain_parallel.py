"""Data-parallel pretraining: the same recipe with two CPU processes through accelerate launch
keeps identical replicas; caches rebuild only what changed; REPA aligns; training learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli, tiny_pretrain_recipe

from backend.data.cache import TensorCache, cache_key
from backend.store import Project


def _job(project: Path, name: str) -> dict:
    with Project.open(project) as p:
        cur = p.db.execute("SELECT * FROM jobs WHERE name = ? ORDER BY id DESC", [name])
        cols = [c[0] for c in cur.description]
        return dict(zip(cols, cur.fetchone()))


def _metric(project: Path, job_id: int, key: str) -> list[float]:
    with Project.open(project) as p:
        return [r[0] for r in p.db.execute("SELECT value FROM metrics WHERE job_id = ? AND key = ? ORDER BY step", [job_id, key])]


def test_two_processes_keep_identical_replicas(shapes_project: Path, tmp_path: Path):
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(tiny_pretrain_recipe(steps=6, processes=2, threads=1, sample_every=100, eval_images=2, name="ddp"))
    proc = run_cli("run", str(recipe), "--project", str(shapes_project), "--name", "ddp", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    job = _job(shapes_project, "ddp")
    assert job["state"] == "done"
    assert _metric(shapes_project, job["id"], "replicas/processes") == [2.0]
    assert _metric(shapes_project, job["id"], "replicas/max_abs_diff") == [0.0]
    # each process drew its own micro-batch: images per step (images/s x s/step) is twice the batch of 8
    per_step = [a * b for a, b in zip(_metric(shapes_project, job["id"], "images_per_s"), _metric(shapes_project, job["id"], "step_s"))]
    assert per_step and all(abs(x - 16) < 1e-6 for x in per_step), per_step


def test_caches_rebuild_only_what_changed(tmp_path: Path):
    cache = TensorCache(tmp_path, "text-encoderA")
    calls: list[list[str]] = []

    def compute(keys: list[str]) -> list[dict[str, torch.Tensor]]:
        calls.append(keys)
        return [{"v": torch.full((2,), float(len(k)))} for k in keys]

    keys = [cache_key("text", c) for c in ("a red circle", "a blue square", "two green stars")]
    assert cache.ensure(keys, compute) == 3
    again = TensorCache(tmp_path, "text-encoderA")  # a new process reading the same files
    assert again.ensure(keys, compute) == 0
    changed = keys[:2] + [cache_key("text", "three green stars")]  # one caption edited
    assert again.ensure(changed, compute) == 1 and calls[-1] == [changed[2]]
    other = TensorCache(tmp_path, "text-encoderB")  # another encoder identity: nothing reused
    assert other.ensure(keys, compute) == 3
    assert torch.equal(again.stack(keys, "v"), cache.stack(keys, "v"))



def test_cache_keeps_entries_computed_before_a_failing_input(tmp_path: Path):
    """Shards are written in batches, not per chunk; an input that fails still leaves the earlier
    entries on disk, so the next run computes only what is left."""
    keys = [cache_key("latent", str(i)) for i in range(40)]

    def compute(chunk: list[str]) -> list[dict[str, torch.Tensor]]:
        if keys[30] in chunk:
            raise OSError("image file is truncated")
        return [{"z": torch.full((3,), float(keys.index(k)))} for k in chunk]

    cache = TensorCache(tmp_path, "latents-x", flush_s=3600.0)  # no timed flush inside this call
    with pytest.raises(OSError, match="truncated"):
        cache.ensure(keys, compute, batch=10)
    reopened = TensorCache(tmp_path, "latents-x")  # what a new process finds on disk
    assert reopened.missing(keys) == keys[30:]
    assert reopened.ensure(keys[:30], compute) == 0
    assert torch.equal(reopened.stack(keys[:30], "z")[:, 0], torch.arange(30.0))

def test_pretrain_reuses_caches_and_reencodes_an_edited_caption(shapes_project: Path, tmp_path: Path):
    recipe = tmp_path / "c1.toml"
    recipe.write_text(tiny_pretrain_recipe(steps=2, sample_every=100, eval_images=2, name="cache-a"))
    assert run_cli("run", str(recipe), "--project", str(shapes_project), "--name", "cache-a").returncode == 0
    with Project.open(shapes_project) as p:
        item = p.db.execute("SELECT id FROM items ORDER BY id LIMIT 1").fetchone()[0]
        from backend.data.edit import edit_caption

        edit_caption(p, item, "a brand new caption about a green heart")
    recipe.write_text(tiny_pretrain_recipe(steps=2, sample_every=100, eval_images=2, name="cache-b"))
    assert run_cli("run", str(recipe), "--project", str(shapes_project), "--name", "cache-b").returncode == 0
    log = (shapes_project / _job(shapes_project, "cache-b")["run_dir"] / "log.txt").read_text()
    assert "encoded 0 latents, 1 captions" in log, log[:2000]


def test_repa_aligns_and_flow_loss_falls(shapes_project: Path, tmp_path: Path):
    recipe = tmp_path / "repa.toml"
    recipe.write_text(tiny_pretrain_recipe(steps=60, repa=True, sample_every=1000, checkpoint_every=1000, eval_images=2, name="repa"))
    proc = run_cli("run", str(recipe), "--project", str(shapes_project), "--name", "repa")
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = _job(shapes_project, "repa")
    align = _metric(shapes_project, job["id"], "repa/alignment")
    loss = _metric(shapes_project, job["id"], "loss/flow")
    assert len(align) >= 10
    assert sum(align[-3:]) / 3 > sum(align[:3]) / 3 + 0.05, f"alignment did not improve: {align}"
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, f"flow loss did not fall: {loss}"
    run_dir = shapes_project / job["run_dir"]
    ckpt = json.loads((run_dir / "checkpoints" / "step-0000060" / "state.json").read_text())
    assert "repa_projector" in ckpt["modules"]
