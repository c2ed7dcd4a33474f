"""Routes that describe the stages (from the stage registry) and their recipe schemas.

The Studio builds its sidebar from ``/stages`` and its wizards' limits, defaults and help text from
``/recipes/schema/{kind}``, so neither keeps a copy of what the backend decides."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from backend.recipes import RECIPE_KINDS
from backend.stages import all_stages

router = APIRouter()


@router.get("/stages")
def stages() -> list[dict[str, Any]]:
    """Every kind of job: title, what it produces, how that is measured, the Studio page that holds it."""
    return [s.describe() for s in all_stages()]


@router.get("/recipes/schema/{kind}")
def recipe_schema(kind: str) -> dict[str, Any]:
    """The JSON schema of a recipe kind: every field's type, default, limits and description."""
    model = RECIPE_KINDS.get(kind)
    if model is None:
        raise HTTPException(404, f"unknown recipe kind {kind!r}; one of {sorted(RECIPE_KINDS)}")
    return model.model_json_schema()
