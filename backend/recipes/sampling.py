"""Recipe for generating images from a model or checkpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import RecipeBase, Section


class SamplerSettings(Section):
    steps: int = Field(28, ge=1, le=1000, description="Euler ODE steps from t=1 to t=0")
    cfg: float = Field(4.0, ge=0.0, le=50.0, description="Classifier-free guidance weight w (1 = no guidance)")
    shift: float | None = Field(None, gt=0, description="Resolution shift alpha; empty = the model's own rule for this size")
    width: int = Field(64, ge=16, le=4096, multiple_of=8, description="Image width in pixels")
    height: int = Field(64, ge=16, le=4096, multiple_of=8, description="Image height in pixels")
    kind: Literal["euler", "consistency"] = Field("euler", description="'euler': the ODE; 'consistency': a consistency-distilled "
                                                  "student's sampler (jump to the end, re-noise to the next point)")


class SampleRecipe(RecipeBase):
    """Generate images for prompts and seeds from a model folder or a run checkpoint."""

    kind: Literal["sample"] = "sample"
    model: str = Field("", description="Model folder, run folder or checkpoint (project-relative or absolute)")
    prompts: list[str] = Field(default_factory=lambda: ["a red circle"], min_length=1, description="Prompts to render")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="One image per prompt and seed")
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)
    out: str = Field("samples", description="Output folder (project-relative or absolute)")
    reward: str = Field("", description="A reward model folder to score every image with (its score goes into metadata.jsonl); empty = none")
    adapters: list[str] = Field(default_factory=list, description="LoRA adapter folders (personalizations) to add to the model")
    lora_scale: float = Field(1.0, ge=0.0, le=2.0, description="Scale of every LoRA adapter (0 = the base alone, 1 = as trained)")
    enhance: str = Field("", description="Prompt enhancement before sampling: '' = off; 'shapes' = the embedded ShapesWorld rewriter "
                         "(learned from the dataset's captions); or a local causal language model folder. metadata.jsonl keeps both "
                         "prompts")
