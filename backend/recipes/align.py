"""Recipe for aligning a model: Diffusion-DPO or SFT on the project's ratings, Flow-GRPO or ReFL on a reward."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import RecipeBase, Section
from .pretrain import PreviewSection
from .sampling import SamplerSettings


class GRPOSection(Section):
    """Flow-GRPO's knobs (METHODS.md §2); defaults sized for the embedded model on a CPU."""

    rewards: str = Field("rule", description="What is rewarded: 'rule' (share of the prompt's promises the detector finds kept, "
                         "1 = exactly the promised objects), 'strict' (1 on a strict pass, else 0), one promise ('relation', 'count', "
                         "'color', 'size', 'object', 'background', 'exact': 1 kept or not made), a reward model folder, "
                         "or several weighted: 'rule=1, relation=2' or 'rule=1, models/reward-3=0.5'")
    group_size: int = Field(8, ge=2, le=256, description="Images per prompt; advantages are relative to the group")
    prompts_per_step: int = Field(4, ge=1, le=1024, description="Prompts drawn per step (each gets a group)")
    sde_steps: int = Field(10, ge=2, le=100, description="SDE steps of a rollout (evaluation uses the ODE at sampler.steps)")
    noise: float = Field(0.7, gt=0.0, le=2.0, description="a in σ_t = a sqrt(t/(1-t)): how far rollouts explore around the ODE")
    clip: float = Field(1e-4, gt=0, le=1, description="PPO clip range ε on the probability ratio")
    kl: float = Field(0.04, ge=0, le=100, description="β of the KL to the starting model: higher resists reward hacking, slows the gain")
    adv_clip: float = Field(5.0, gt=0, description="Advantages are clipped to ± this")
    cfg: float | None = Field(None, ge=1.0, le=50.0, description="Guidance in rollouts and training; empty = sampler.cfg")
    minibatches: int = Field(2, ge=1, le=64, description="Optimizer updates per rollout batch")
    train_steps: int = Field(0, ge=0, le=100, description="Denoising steps trained per update (random); 0 = all")
    focus: float = Field(0.0, ge=0.0, le=1.0, description="Share of the prompt draws that follows where groups still teach: a group whose "
                         "images all score alike (e.g. single objects the base already draws) costs a rollout and teaches nothing; "
                         "0 = every category equally often, 1 = in proportion to each category's rate of groups that differ")
    pool: int = Field(200, ge=4, le=100_000, description="Training prompts per ShapesEval category (kept apart from the eval prompts "
                      "except single objects, whose 48 shape-colour prompts are the whole vocabulary)")


class ReFLSection(Section):
    """ReFL's knobs (METHODS.md §2)."""

    reward: str = Field("models/shapes-reward-prior", description="A reward model folder (differentiable in the pixels); the detector "
                        "rule is not, so ReFL needs a reward model")
    batch_size: int = Field(8, ge=1, le=1024, description="Prompts (one image each) per step")
    late: int = Field(5, ge=1, le=1000, description="The one step with gradients is one of the sampler's last N steps")
    reward_weight: float = Field(1.0, gt=0, le=1e6, description="Weight of φ(reward) against the flow regulariser")
    margin: float | None = Field(None, description="φ(r) = ReLU(margin - r): stop pushing images already rewarded above the margin; "
                                 "empty = φ(r) = -r")
    regulariser: float = Field(1.0, ge=0, le=1e6, description="Weight of the flow loss on the project's data (0 = none)")
    shift: int = Field(0, ge=0, le=64, description="Score each image at a random translation of up to this many pixels: the "
                       "reward stops paying for patterns tied to one exact pixel alignment (one way a reward model is hacked; it did not stop "
                       "the shape deformation measured on the demo's reward model); 0 = as drawn")


class AlignDataSection(Section):
    """Training images where a method uses them: SFT's data (source 'dataset') and ReFL's regulariser."""

    dataset: str = Field("shapesworld", description="Dataset name in the project")
    view: str = Field("curated", description="Which items: curated | all | keep")
    batch_size: int = Field(16, ge=1, le=4096, description="Images per step")
    source: Literal["winners", "dataset"] = Field("winners", description="SFT learns from: 'winners' = the images that won your "
                                                   "ratings; 'dataset' = the dataset view above (continued training)")


class AlignRecipe(RecipeBase):
    """Align a model from its starting weights. 'dpo': Diffusion-DPO (flow form) on rated pairs; 'grpo':
    Flow-GRPO on a reward (the detector rule, a reward model, or both); 'refl': ReFL on a reward model;
    'sft': the flow loss on the rated winners or a dataset view."""

    kind: Literal["align"] = "align"
    method: Literal["dpo", "grpo", "refl", "sft"] = Field(
        "dpo", description="'dpo': learn from rated pairs directly, no reward model (Diffusion-DPO); 'grpo': sample groups, reward them, "
        "push towards the better ones (Flow-GRPO); 'refl': climb a reward model's gradient through a one-step image estimate (ReFL); "
        "'sft': the plain flow loss on the winners of your ratings or a dataset view, at a low rate (continued training)")
    model: str = Field("models/shapes-base", description="The model to tune, and the reference it is held to")
    rater: str | None = Field(None, description="Only this rater's judgements; empty = every rater's")
    beta: float = Field(100.0, gt=0, le=1e6, description="DPO's β on the per-element mean flow error: higher holds the model closer to the reference")
    steps: int = Field(300, ge=1, le=1_000_000)
    batch_size: int = Field(16, ge=1, le=4096, description="Rated pairs per step")
    lr: float = Field(1e-5, gt=0, le=1, description="Peak learning rate (AdamW; tuning wants far less than pretraining)")
    heldout: float = Field(0.2, ge=0.05, le=0.5, description="Share of prompts held out for the implicit accuracy")
    eval_every: int = Field(50, ge=1, description="Held-out implicit accuracy and DPO loss every N steps")
    seed: int = Field(0, ge=0)
    lora_rank: int = Field(0, ge=0, le=512, description="0 = tune every weight; r > 0 = a LoRA adapter of rank r (the reference is "
                           "the base with it switched off, no second copy)")
    lora_base_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="The frozen weights' type under LoRA: 'auto' = bfloat16 for a real model (SD3, FLUX) on a CUDA GPU, float32 otherwise")
    eval_images: int = Field(96, ge=0, description="Strict ShapesEval images at each evaluation (ODE at sampler settings); 0 = none")
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    refl: ReFLSection = Field(default_factory=ReFLSection)
    data: AlignDataSection = Field(default_factory=AlignDataSection)
    preview: PreviewSection = Field(default_factory=lambda: PreviewSection(sampler=SamplerSettings(steps=20, cfg=3.0, width=64, height=64)),
                                    description="Fixed prompts and seeds drawn every sample_every steps, so the change shows")
    sample_every: int = Field(50, ge=0, description="Preview grid every N steps (0 = none)")
    sampler: SamplerSettings = Field(default_factory=lambda: SamplerSettings(steps=20, cfg=3.0, width=64, height=64),
                                     description="Size the rated images are trained at, and how previews are drawn")
