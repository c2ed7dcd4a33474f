"""Recipe for adding ShapesWorld data to a project: export an ordinary folder, then import it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import RecipeBase


class WorldRecipe(RecipeBase):
    """Render ShapesWorld scenes into the project's exports/ and import them as a dataset."""

    kind: Literal["world"] = "world"
    dataset: str = Field("shapesworld", min_length=1, description="Dataset the scenes are imported into")
    images: int = Field(4000, ge=1, le=1_000_000, description="Number of scenes")
    seed: int = Field(0, description="World seed (same seed, same images)")
    resolution: tuple[int, int] | None = Field(None, description="Fixed (width, height); empty = mixed 32-128 px, 7 aspect ratios")
    defects: bool = Field(True, description="Plant a few corrupt files and duplicates, as real folders have")
    subject: bool = Field(True, description="Also import the DreamBooth subject's renders as dataset 'subject'")
    base_model: bool = Field(False, description="Also add the shipped ShapesWorld base model to the project's models (the demo project does)")
