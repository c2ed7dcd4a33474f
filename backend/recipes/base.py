"""Shared pieces of every recipe: strict models and the section helpers.

Recipes are pydantic models with ``extra="forbid"`` so a misspelt field is an error that
names the field, not a silently ignored line.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A table of a recipe. Unknown keys are errors; defaults are documented in descriptions."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class RecipeBase(Section):
    """Fields every recipe has. ``kind`` selects the stage model."""

    kind: str
    name: str = ""
