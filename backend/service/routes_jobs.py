"""Routes for jobs: create from a recipe, list, control, delete, log, metrics, samples."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from backend.store import job_state

from .params import MAX_INT, Id, like_pattern

router = APIRouter()
ACTIONS = ("stop", "pause", "resume", "sample", "save")


def _state(request: Request):
    return request.app.state.service


def _job(request: Request, job_id: Id) -> dict[str, Any]:
    rows = _state(request).rows("SELECT * FROM jobs WHERE id = ?", [job_id])
    if not rows:
        raise HTTPException(404, f"no job {job_id}")
    return rows[0]


class JobCreate(BaseModel):
    recipe: str = Field(..., description="TOML recipe text")
    name: str | None = Field(None, max_length=200)


@lru_cache(maxsize=1024)
def _sample_size(recipe_text: str) -> list[int] | None:
    """The size a run's checkpoints are meant to be sampled at (the ``eval_size`` of a recipe that
    trains a model), so the Playground opens a run's latest checkpoint as it does a saved model.
    A job's recipe never changes, so each is parsed once."""
    from backend.recipes import RecipeError, loads_recipe

    try:
        recipe = loads_recipe(recipe_text)
    except RecipeError:
        return None
    size = getattr(recipe, "eval_size", None)
    return list(size) if size else None


@router.get("/jobs")
def jobs(request: Request, state: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT id, kind, name, state, progress, step, total_steps, control, error, resumable, created, started, ended, run_dir, recipe FROM jobs"
    params: list[Any] = []
    if state:
        sql += " WHERE state = ?"
        params.append(state)
    rows = _state(request).rows(sql + " ORDER BY id DESC", params)
    for row in rows:
        text = row.pop("recipe") or ""
        row["size"] = _sample_size(text)
    return rows


@router.post("/jobs", status_code=201)
def create(request: Request, body: JobCreate) -> dict[str, Any]:
    """Validate the recipe and queue a job; a bad recipe is a 422 listing every problem."""
    from backend.jobs import create_job
    from backend.recipes import RecipeError, loads_recipe

    try:
        recipe = loads_recipe(body.recipe)
        job_id = create_job(_state(request).project(), recipe, body.name)
    except RecipeError as exc:
        raise HTTPException(422, {"message": "invalid recipe", "issues": [{"path": i.path, "reason": i.reason} for i in exc.issues]}) from None
    return _job(request, job_id)


@router.get("/jobs/{job_id}")
def get(request: Request, job_id: Id) -> dict[str, Any]:
    return _job(request, job_id)


@router.post("/jobs/{job_id}/{action}")
def control(request: Request, job_id: Id, action: Literal["stop", "pause", "resume", "sample", "save"]) -> dict[str, Any]:
    """stop/pause: checkpoint then exit (a stop becomes a kill after a timeout); resume: queue again
    from the last checkpoint; sample/save: a preview grid or a checkpoint now."""
    st = _state(request)
    job = _job(request, job_id)
    db = st.db()
    if action == "resume":
        if not job_state.move(db, job_id, "queued", only_from=job_state.RESUMABLE_FROM, control=None, error=None, ended=None):
            raise HTTPException(409, f"job {job_id} is {_job(request, job_id)['state']}; only paused, stopped, interrupted or failed jobs resume")
    elif job["state"] == "queued" and action == "stop" and job_state.move(db, job_id, "stopped", only_from=("queued",), resumable=0):
        pass  # stopped before it started; had the runner claimed it meanwhile, the stop becomes a control flag below
    elif not job_state.set_control(db, job_id, action):
        raise HTTPException(409, f"job {job_id} is {_job(request, job_id)['state']}; '{action}' needs a running job")
    return _job(request, job_id)


@router.delete("/jobs/{job_id}")
def delete(request: Request, job_id: Id) -> dict[str, Any]:
    """Delete a job that is not running, with its run folder (its models stay)."""
    from backend.jobs import delete_run

    job = _job(request, job_id)
    if job["state"] == "running":
        raise HTTPException(409, "stop the job before deleting it")
    delete_run(_state(request).project(), job_id)
    return {"deleted": job_id}


@router.get("/jobs/{job_id}/log")
def log(request: Request, job_id: Id, offset: int = Query(0, ge=0, le=MAX_INT), limit: int = Query(65536, ge=1, le=1 << 22)) -> dict[str, Any]:
    """The job's log from byte ``offset`` (poll with the returned ``next``)."""
    job = _job(request, job_id)
    text, nxt = "", offset
    if job["run_dir"]:
        path = _state(request).project().resolve(job["run_dir"]) / "log.txt"
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(limit)
            text, nxt = data.decode("utf-8", errors="replace"), offset + len(data)
    return {"text": text, "next": nxt}


@router.get("/jobs/{job_id}/metrics")
def metrics(
    request: Request,
    job_id: Id,
    since_step: int = Query(0, ge=0, le=MAX_INT),
    stride: int = Query(1, ge=1, le=100000),
    keys: str | None = Query(None, max_length=2000, description="comma-separated keys; prefix* matches a prefix"),
) -> dict[str, list[list[float]]]:
    """Series per key: [[step, value], ...] for steps > since_step, every ``stride``-th row."""
    _job(request, job_id)
    sql = "SELECT key, step, value FROM metrics WHERE job_id = ? AND step > ?"
    params: list[Any] = [job_id, since_step]
    if keys:
        clauses = []
        for k in (k.strip() for k in keys.split(",") if k.strip()):
            if k.endswith("*"):
                clauses.append("key LIKE ? ESCAPE '\\'")
                params.append(like_pattern(k[:-1], prefix_only=True))
            else:
                clauses.append("key = ?")
                params.append(k)
        if clauses:
            sql += " AND (" + " OR ".join(clauses) + ")"
    out: dict[str, list[list[float]]] = {}
    for key, step, value in _state(request).db().execute(sql + " ORDER BY key, step", params):
        series = out.setdefault(key, [])
        series.append([step, value])
    if stride > 1:
        out = {k: v[::stride] + ([v[-1]] if (len(v) - 1) % stride else []) for k, v in out.items()}
    return out


@router.get("/jobs/{job_id}/samples")
def job_samples(request: Request, job_id: Id, since_id: int = Query(0, ge=0, le=MAX_INT), limit: int = Query(500, ge=1, le=5000)) -> list[dict[str, Any]]:
    _job(request, job_id)
    rows = _state(request).rows(
        "SELECT id, job_id, step, prompt, seed, image_hash, settings, created FROM samples WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
        [job_id, since_id, limit],
    )
    for r in rows:
        r["settings"] = json.loads(r["settings"] or "{}")
    return rows
