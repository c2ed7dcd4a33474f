"""Recipe for generating image pairs to rate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import RecipeBase
from .sampling import SamplerSettings


class PairsRecipe(RecipeBase):
    """Generate image pairs of the same prompt for rating: from one model at different seeds
    (k images per prompt give k(k-1)/2 pairs), or from two models at the same seeds."""

    kind: Literal["pairs"] = "pairs"
    model: str = Field("models/shapes-base", description="Model folder, run folder or checkpoint that draws image a (project-relative or absolute)")
    model_b: str = Field("", description="A second model for image b (e.g. a tuned checkpoint); empty = both images from 'model'")
    prompts_from: Literal["eval", "dataset", "list"] = Field(
        "eval", description="'eval': the ShapesEval prompt set (its specs let the detector judge); 'dataset': a dataset's captions; 'list': 'prompts'")
    dataset: str = Field("", description="Dataset whose captions are the prompts (prompts_from = 'dataset')")
    prompts: list[str] = Field(default_factory=list, description="Prompts as typed or pasted (prompts_from = 'list')")
    categories: list[str] = Field(default_factory=list, description="ShapesEval categories to draw prompts from; empty = all, in proportion")
    max_prompts: int = Field(24, ge=1, le=100_000, description="At most this many prompts (drawn at random with 'seed')")
    images_per_prompt: int = Field(
        2, ge=2, le=8, description="One model: k images per prompt, all k(k-1)/2 pairs queued; two models: k seeds per prompt, one pair each")
    seed: int = Field(0, ge=0, description="Seed of the prompt draw and of the images' noise")
    sampler: SamplerSettings = Field(default_factory=lambda: SamplerSettings(steps=20, cfg=3.0, width=64, height=64))

    @model_validator(mode="after")
    def _source(self) -> PairsRecipe:
        if self.prompts_from == "list" and not [p for p in self.prompts if p.strip()]:
            raise ValueError("prompts_from = 'list' needs at least one prompt in 'prompts'")
        if self.prompts_from == "dataset" and not self.dataset:
            raise ValueError("prompts_from = 'dataset' needs 'dataset'")
        if not self.model:
            raise ValueError("'model' is empty: name a model folder, a run or a checkpoint")
        if self.model_b and self.model_b.rstrip("/") == self.model.rstrip("/"):
            raise ValueError("'model_b' is 'model' again: at the same seeds its pairs would be identical images; leave model_b empty")
        return self

    def pairs_per_prompt(self) -> int:
        k = self.images_per_prompt
        return k if self.model_b else k * (k - 1) // 2
