"""Recipe for personalizing a model: DreamBooth on a handful of subject images, as a LoRA or fully."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import RecipeBase, Section
from .pretrain import PreviewSection
from .sampling import SamplerSettings

CONTEXT_PROMPTS = ["a {token} {cls} on a striped yellow background", "two {token} {cls}s", "a {token} {cls} left of a red square",
                   "a {cls}"]


class PriorSection(Section):
    """Prior preservation (METHODS.md §3): keep the class as the base draws it while the subject is learned."""

    mode: Literal["class_images", "frozen", "none"] = Field(
        "class_images", description="'class_images': the frozen base draws images for the class prompt, trained on beside the subject; "
        "'frozen': no images, the frozen base's own velocity for the class prompt at the subject's noisy latents is the target; "
        "'none': no prior term (the subject may take over the class)")
    # 3, not the paper's 1: on the shipped 11M base, 300 steps at lr 1e-3 with λ = 1 took strict ShapesEval on circle
    # prompts from 0.739 to 0.361; λ = 3 kept 0.551 and showed the subject as often (0.94 against 0.88; README, 2026-12-06)
    weight: float = Field(3.0, ge=0.0, le=100.0, description="λ of the prior term (3 held the class best for as much subject)")
    class_images: int = Field(100, ge=1, le=5000, description="Class images the frozen base draws (cached and reused across runs)")
    class_prompt: str = Field("a {cls}", description="The class prompt; {cls} is the class noun")


class LoraSection(Section):
    """The adapter (rank 0 = every weight trains)."""

    rank: int = Field(8, ge=0, le=512, description="LoRA rank r; 0 = full fine-tuning (a frozen copy is kept for the 'frozen' prior)")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha (W = W0 + alpha/r B A); empty = r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input")
    base_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="The frozen weights' type under LoRA: 'auto' = bfloat16 for a real model (SD3, FLUX) on a CUDA GPU (half "
        "their memory; the adapter trains in float32 under bf16 autocast), float32 otherwise")


class PersonalizeRecipe(RecipeBase):
    """Teach a model one subject from a few images (DreamBooth), held to its class by prior preservation."""

    kind: Literal["personalize"] = "personalize"
    model: str = Field("models/shapes-base", description="The model to personalize (stays frozen under LoRA)")
    dataset: str = Field("subject", description="Dataset holding the subject's images (the demo imports the ShapesWorld subject as 'subject')")
    view: str = Field("all", description="Which of its items: all | curated | keep")
    token: str = Field("sks", min_length=1, description="The rare identifier that will mean the subject")
    class_noun: str = Field("circle", min_length=1, description="What the subject is (its class)")
    instance_prompt: str = Field("a {token} {cls}", description="Caption of every subject image; {token} and {cls} are filled in")
    prior: PriorSection = Field(default_factory=PriorSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    steps: int = Field(300, ge=1, le=1_000_000)
    batch_size: int = Field(4, ge=1, le=1024, description="Subject images per step (and as many class images with the prior)")
    lr: float = Field(1e-3, gt=0, le=1, description="Peak learning rate (AdamW); LoRA wants ~1e-4-1e-3, full fine-tuning ~1e-5")
    ema: float = Field(0.0, ge=0.0, lt=1.0, description="EMA decay of the trained weights for sampling (0 = off)")
    seed: int = Field(0, ge=0)
    context_prompts: list[str] = Field(default_factory=lambda: list(CONTEXT_PROMPTS), min_length=1,
                                       description="Subject in new contexts (and the class alone): previews and prompt fidelity")
    preview_seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1, description="Fixed seeds of the previews")
    sample_every: int = Field(50, ge=0, description="Previews every N steps (0 = none)")
    eval_every: int = Field(100, ge=1, description="Subject fidelity and leakage every N steps")
    eval_images: int = Field(16, ge=1, le=4096, description="Images per prompt for the fidelity figures")
    class_eval_images: int = Field(64, ge=0, le=4096, description="Strict ShapesEval images on the eval prompts naming the class "
                                   "(class preservation, base vs personalized); 0 = none")
    fused: bool = Field(False, description="Also save a whole model with the adapter merged in (loads without peft)")
    sampler: SamplerSettings = Field(default_factory=lambda: SamplerSettings(steps=20, cfg=3.0, width=64, height=64),
                                     description="Size the subject trains at, and how class images, previews and evaluations are drawn")

    @field_validator("token")
    @classmethod
    def _one_word(cls, v: str) -> str:
        if len(v.split()) != 1:
            raise ValueError("the identifier is one word (e.g. 'sks')")
        return v

    def fill(self, template: str) -> str:
        """A prompt template with the identifier and class noun filled in."""
        return template.replace("{token}", self.token).replace("{cls}", self.class_noun)

    def preview_section(self) -> PreviewSection:
        return PreviewSection(prompts=[self.fill(p) for p in self.context_prompts], seeds=self.preview_seeds, sampler=self.sampler)
