"""Recipe for tuning a model on the project's ratings (Diffusion-DPO so far)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import RecipeBase
from .sampling import SamplerSettings


class AlignRecipe(RecipeBase):
    """Tune a model on rated pairs. 'dpo': Diffusion-DPO (flow form) against the starting model as the reference."""

    kind: Literal["align"] = "align"
    method: Literal["dpo"] = Field("dpo", description="'dpo': learn from rated pairs directly, no reward model (Diffusion-DPO, flow form)")
    model: str = Field("models/shapes-base", description="The model to tune, and the reference it is held to")
    rater: str | None = Field(None, description="Only this rater's judgements; empty = every rater's")
    beta: float = Field(100.0, gt=0, le=1e6, description="DPO's β on the per-element mean flow error: higher holds the model closer to the reference")
    steps: int = Field(300, ge=1, le=1_000_000)
    batch_size: int = Field(16, ge=1, le=4096, description="Rated pairs per step")
    lr: float = Field(1e-5, gt=0, le=1, description="Peak learning rate (AdamW; tuning wants far less than pretraining)")
    heldout: float = Field(0.2, ge=0.05, le=0.5, description="Share of prompts held out for the implicit accuracy")
    eval_every: int = Field(50, ge=1, description="Held-out implicit accuracy and DPO loss every N steps")
    seed: int = Field(0, ge=0)
    sampler: SamplerSettings = Field(default_factory=lambda: SamplerSettings(steps=20, cfg=3.0, width=64, height=64),
                                     description="Size the rated images are trained at, and how previews are drawn")
