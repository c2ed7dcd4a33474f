"""Routes for curation: recompute flags, keeper choice, captions (edit, bulk replace, undo),
keyword categories, the mixture report and the import rejects."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from .params import Id

router = APIRouter()


def _project(request: Request):
    return request.app.state.service.project()


def _dataset(request: Request, name: str) -> int:
    row = request.app.state.service.db().execute("SELECT id FROM datasets WHERE name = ?", [name]).fetchone()
    if row is None:
        raise HTTPException(404, f"no dataset {name!r}")
    return int(row[0])


class CurateBody(BaseModel):
    near_threshold: int = Field(20, ge=0, le=256)
    min_side: int = Field(16, ge=1, le=100_000)
    max_aspect: float = Field(4.0, ge=1.0, le=100.0)
    min_caption_words: int = Field(1, ge=0, le=1000)
    max_caption_words: int = Field(120, ge=1, le=100_000)
    min_blur: float | None = Field(None, ge=0)


@router.post("/datasets/{name}/curate")
def curate(request: Request, name: str, body: CurateBody) -> dict[str, Any]:
    """Recompute the dataset's flags (duplicates, near duplicates, filters) from these settings."""
    from backend.data.curate import CurationSettings
    from backend.data.curate import curate as run

    _dataset(request, name)
    return run(_project(request), name, CurationSettings(**body.model_dump())).to_json()


@router.get("/datasets/{name}/mixture")
def mixture(request: Request, name: str, view: str = "curated") -> dict[str, Any]:
    from backend.data.curate import mixture as mix

    if view not in ("curated", "all"):
        raise HTTPException(422, "view must be 'curated' or 'all'")
    _dataset(request, name)
    return mix(_project(request), name, view=view)


@router.get("/datasets/{name}/rejects")
def rejects(request: Request, name: str) -> list[dict[str, Any]]:
    ds = _dataset(request, name)
    return request.app.state.service.rows("SELECT source_path, reason, detail, created FROM rejects WHERE dataset_id = ? ORDER BY id", [ds])


class CaptionBody(BaseModel):
    caption: str = Field(..., max_length=10_000)


@router.post("/items/{item_id}/caption")
def edit_caption(request: Request, item_id: Id, body: CaptionBody) -> dict[str, Any]:
    from backend.data.edit import edit_caption as edit

    try:
        return edit(_project(request), item_id, body.caption)
    except KeyError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/items/{item_id}/history")
def history(request: Request, item_id: Id) -> list[dict[str, Any]]:
    from backend.data.edit import caption_history

    return caption_history(_project(request), item_id)


@router.post("/items/{item_id}/keeper")
def keeper(request: Request, item_id: Id) -> dict[str, Any]:
    """Keep this item in its duplicate cluster (the others are flagged instead)."""
    from backend.data.curate import choose_keeper

    try:
        choose_keeper(_project(request), item_id)
    except KeyError as exc:
        raise HTTPException(404, str(exc)) from None
    return {"keeper": item_id}


class ReplaceBody(BaseModel):
    find: str = Field(..., min_length=1, max_length=1000)
    replace: str = Field("", max_length=1000)
    regex: bool = False
    case: bool = True


@router.post("/datasets/{name}/captions/replace")
def replace(request: Request, name: str, body: ReplaceBody) -> dict[str, Any]:
    from backend.data.edit import replace_captions

    _dataset(request, name)
    return replace_captions(_project(request), name, body.find, body.replace, regex=body.regex, case=body.case)


class UndoBody(BaseModel):
    batch: str = Field(..., min_length=1, max_length=64)


@router.post("/captions/undo")
def undo(request: Request, body: UndoBody) -> dict[str, Any]:
    from backend.data.edit import undo_batch

    n = undo_batch(_project(request), body.batch)
    if n == 0:
        raise HTTPException(404, f"no caption batch {body.batch!r}")
    return {"restored": n}


class CategoriseBody(BaseModel):
    rules: dict[str, list[str]] = Field(..., description="category -> keywords")
    overwrite: bool = False


@router.post("/datasets/{name}/categorise")
def categorise(request: Request, name: str, body: CategoriseBody) -> dict[str, int]:
    from backend.data.edit import categorise as run

    _dataset(request, name)
    return run(_project(request), name, body.rules, overwrite=body.overwrite)
