"""Recipe for distilling a model into a few-step student."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .align import AlignDataSection
from .base import RecipeBase, Section
from .sampling import SamplerSettings


class ProgressiveSection(Section):
    """Progressive distillation's knobs (METHODS.md §4)."""

    start_steps: int = Field(16, ge=2, le=1024, description="The first round's student steps (its teacher takes twice as many)")
    steps_per_round: int = Field(200, ge=1, le=1_000_000, description="Training steps of each round; rounds halve the student's steps")


class ConsistencySection(Section):
    """Consistency distillation's knobs (METHODS.md §4, LCM-style)."""

    steps: int = Field(600, ge=1, le=1_000_000, description="Training steps")
    schedule: int = Field(32, ge=2, le=1000, description="Points of the teacher's ODE schedule; one guided teacher step joins adjacent ones")
    ema: float = Field(0.95, ge=0.0, lt=1.0, description="Decay of the target network (the student's EMA behind a stop-gradient)")
    loss: Literal["huber", "l2"] = Field("huber", description="Distance between the student's and the target's jumps to x0")


class ReflowSection(Section):
    """Reflow -> InstaFlow's knobs (METHODS.md §4)."""

    pairs: int = Field(512, ge=8, le=1_000_000, description="Teacher couplings (noise -> sample with the teacher's sampler), drawn "
                       "once and cached; prompts from the data view's captions")
    reflow_steps: int = Field(300, ge=1, le=1_000_000, description="Training steps on the straight lines between the coupled pairs")
    distill_steps: int = Field(200, ge=0, le=1_000_000, description="One-step distillation onto the teacher's samples after reflow "
                               "(only for a 1-step student; 0 = none)")
    l2_share: float = Field(0.5, ge=0.0, le=1.0, description="Share of the one-step phase with L2 on latents before the perceptual "
                            "distance on decoded images")
    distance: Literal["auto", "lpips", "encoder"] = Field("auto", description="The perceptual distance: LPIPS when torchvision's "
                                                           "AlexNet weights are in the local cache ('auto'), else the world encoder's features")


class DmdSection(Section):
    """DMD2's knobs (METHODS.md §4)."""

    steps: int = Field(400, ge=1, le=1_000_000, description="Generator updates")
    fake_updates: int = Field(5, ge=1, le=50, description="Fake-score network updates per generator update")
    fake_lr: float | None = Field(None, gt=0, le=1, description="The fake network's learning rate (empty: the recipe's lr)")
    gan_weight: float = Field(0.0, ge=0.0, le=10.0, description="Weight of the GAN head on the fake network's features (0 = off)")
    gan_block: int = Field(1, ge=0, le=64, description="The fake network's block whose features the GAN head reads")


class LaddSection(Section):
    """LADD's knobs (METHODS.md §4)."""

    steps: int = Field(400, ge=1, le=1_000_000, description="Student updates (one discriminator update each)")
    distill_weight: float = Field(2.5, ge=0.0, le=100.0, description="λ of the distillation term (the teacher denoising the re-noised "
                                  "student sample)")
    r1: float = Field(1e-4, ge=0.0, le=10.0, description="Weight of the R1 penalty on the real features")
    disc_lr: float | None = Field(None, gt=0, le=1, description="The discriminator heads' learning rate (empty: the recipe's lr)")
    blocks: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, max_length=16,
                              description="The teacher's blocks (in order) whose features the heads read")


class DistillRecipe(RecipeBase):
    """Distill a teacher into a student that samples in a few steps. 'progressive': rounds in which the
    student learns two teacher steps in one, the student becoming the next round's teacher;
    'consistency': the student learns to jump from any point of a teacher trajectory to its end; 'reflow': straight
    paths on teacher couplings, then (1 step) InstaFlow's one-step regression; 'dmd': DMD2's distribution matching with a
    fake-score network; 'ladd': adversarial heads on the teacher's features plus a distillation term."""

    kind: Literal["distill"] = "distill"
    method: Literal["progressive", "consistency", "reflow", "dmd", "ladd"] = Field(
        "consistency", description="'progressive': halve the steps round by round; 'consistency': jump to x0 from any point and "
        "re-noise (LCM-style); 'reflow': straighten the teacher's paths on its own samples, then (1 step) InstaFlow; 'dmd': DMD2; "
        "'ladd': latent adversarial distillation; all fold the teacher's guidance into the student, which samples without it")
    model: str = Field("models/shapes-base", description="The teacher (and the student's starting weights)")
    target_steps: int = Field(4, ge=1, le=64, description="The student's sampling steps")
    progressive: ProgressiveSection = Field(default_factory=ProgressiveSection)
    consistency: ConsistencySection = Field(default_factory=ConsistencySection)
    reflow: ReflowSection = Field(default_factory=ReflowSection)
    dmd: DmdSection = Field(default_factory=DmdSection)
    ladd: LaddSection = Field(default_factory=LaddSection)
    data: AlignDataSection = Field(default_factory=AlignDataSection, description="The data latents noised to the schedule's points "
                                   "(data.source is not used)")
    lr: float = Field(5e-5, gt=0, le=1, description="Peak learning rate (AdamW)")
    eval_every: int = Field(200, ge=1, description="Strict ShapesEval of the student at its current steps every N steps")
    eval_images: int = Field(96, ge=0, description="Strict ShapesEval images at each evaluation; 0 = none")
    sample_every: int = Field(100, ge=0, description="Previews of the student every N steps (0 = none)")
    seed: int = Field(0, ge=0)
    sampler: SamplerSettings = Field(default_factory=lambda: SamplerSettings(steps=20, cfg=3.0, width=64, height=64),
                                     description="The teacher's sampler (its guidance is folded into the student) and the training size")

    @model_validator(mode="after")
    def _halving(self) -> DistillRecipe:
        if self.method != "progressive":
            return self
        n = self.progressive.start_steps
        while n > self.target_steps:
            if n % 2:
                raise ValueError(f"progressive.start_steps {self.progressive.start_steps} does not halve down to target_steps "
                                 f"{self.target_steps}: use a power-of-two multiple of it (e.g. {self.target_steps * 4})")
            n //= 2
        if n != self.target_steps:
            raise ValueError(f"progressive.start_steps {self.progressive.start_steps} must be target_steps x 2^k")
        return self

    @property
    def sampler_kind(self) -> str:
        """How the student samples: the ODE (progressive, reflow) or jump-and-re-noise (consistency, DMD2, LADD)."""
        return "euler" if self.method in ("progressive", "reflow") else "consistency"

    @property
    def total_steps(self) -> int:
        if self.method in ("consistency", "dmd", "ladd"):
            return getattr(self, self.method).steps
        if self.method == "reflow":
            return self.reflow.reflow_steps + (self.reflow.distill_steps if self.target_steps == 1 else 0)
        n, rounds = self.progressive.start_steps, 1
        while n > self.target_steps:
            n //= 2
            rounds += 1
        return rounds * self.progressive.steps_per_round
