"""Recipe for bringing a folder of images and captions into a project."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import RecipeBase, Section


class ImportLimits(Section):
    max_pixels: int = Field(64_000_000, gt=0, description="Decompression-bomb guard: images with more pixels are rejected")
    min_side: int = Field(8, ge=1, description="Images with a shorter side are rejected as unusable")


class ImportRecipe(RecipeBase):
    """Import folders (recursive) of images with .txt sidecars, metadata.jsonl or CSV captions."""

    kind: Literal["import"] = "import"
    dataset: str = Field("default", min_length=1, description="Dataset the images land in (created if missing)")
    sources: list[str] = Field(default_factory=list, description="Folders or files to import")
    category_from: Literal["metadata", "folder", "none"] = Field(
        "metadata", description="Where an item's category comes from when metadata has none: parent folder name or nothing"
    )
    limits: ImportLimits = Field(default_factory=ImportLimits)
