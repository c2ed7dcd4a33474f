"""Recipe for training a reward model on the project's ratings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from .base import RecipeBase


class RewardRecipe(RecipeBase):
    """Train a reward model on the project's judgements (Bradley-Terry; ties count half to each side)."""

    kind: Literal["reward"] = "reward"
    rater: str | None = Field(None, description="Only this rater's judgements; empty = every rater's")
    heldout: float = Field(0.2, ge=0.05, le=0.5, description="Share of prompts held out (every pair of a prompt on the same side of the split)")
    validation: float = Field(0.2, ge=0.0, le=0.5, description="Share of the training prompts set aside to choose the head by (lowest "
                                                           "validation loss, the starting head included); 0 = keep the last step's head")
    keep_start: float = Field(2.0, ge=0.0, le=100.0, description="With validation, from a prior or a model: the head of lowest validation "
                                                                 "loss replaces the starting head only when it ranks the validation judgements better by at least "
                                                                 "this many standard errors (paired: pairs only it orders as judged, "
                                                                 "minus pairs only the start does); otherwise the starting head is saved, "
                                                                 "rescaled. A few hundred noisy judgements often pick a head by chance: "
                                                                 "on the bench's base pairs, 500 judgements, the heads of lowest "
                                                                 "validation loss ranked worse than the prior (4-fold cross-validated "
                                                                 "0.833 against 0.857 for the prior alone). 0 = the lowest validation "
                                                                 "loss wins")
    steps: int = Field(600, ge=1, le=1_000_000, description="Optimizer steps")
    batch_size: int = Field(64, ge=1, le=4096, description="Pairs per step")
    lr: float | None = Field(None, gt=0, le=1, description="Peak learning rate (AdamW, cosine after warm-up); empty = 1e-3 with tune = "
                                                         "'all', 3e-2 with tune = 'terms'")
    weight_decay: float = Field(0.01, ge=0, le=1)
    init: str = Field("prior", description="Where the head starts: 'prior' = the shipped reward prior (matched to captions, no ratings), "
                                           "'none' = from nothing, or a reward model folder to continue from")
    anchor: float = Field(0.0, ge=0, le=1e6, description="Weight of the pull back towards the starting head (L2-SP): keeps what the prior knows "
                                                      "when the judgements are few")
    ties: Literal["half", "ignore"] = Field("half", description="Ties: 'half' = counted half to each side (the head learns to score "
                                                                "tied images alike), 'ignore' = left out like 'both bad' (with tune = "
                                                                "'terms' a little better on the bench's base pairs, cross-validated: "
                                                                "0.800 against 0.783 from 1000 judgements)")
    label_noise: float | None = Field(None, ge=0.0, lt=0.5, description="Share of decisive judgements taken to be mistakes (flipped): a "
                                                                     "robust Bradley-Terry, P(a judged better) = ε + (1 − 2ε)·σ(r_a − r_b), "
                                                                     "so a pair the head confidently ranks against its judgement costs at "
                                                                     "most −log ε and a few such pairs no longer decide the fit; 0 = plain "
                                                                     "Bradley-Terry; empty = 0.1 with tune = 'terms' (a few numbers those "
                                                                     "pairs would decide: on the bench's base pairs, 500 judgements, 4-fold "
                                                                     "cross-validated, 0.844 against 0.829 with 0), 0 with tune = 'all' (a "
                                                                     "whole head from nothing learnt less in 200 steps with 0.1)")
    tune: Literal["all", "terms"] | None = Field(None, description="What the judgements train: 'all' = the whole head, 'terms' = only how "
                                                                   "much each part of the starting head's reward counts (its judgement of "
                                                                   "the words, of each located object, of the relation): a few numbers "
                                                                   "that a few hundred judgements decide without memorising them; empty = "
                                                                   "'terms' from the prior or a reward model (on the bench's base pairs, "
                                                                   "4-fold cross-validated from 500 judgements, the prior before group "
                                                                   "breaks: 0.822 against 0.794 for the whole head), 'all' from init = 'none'")
    width: int = Field(32, ge=8, le=1024, description="Width of the head's attention with init = 'none' (a prior or a model brings its own)")
    trunk: int = Field(0, ge=0, le=8, description="Residual convolution blocks over the image's patch grid with init = 'none' (they let the "
                                                  "head see an object's outline; the prior has 2, learned from 12000 scenes, but from a few "
                                                  "hundred judgements they only memorise: 0.70 held out with 0, 0.38 with 2)")
    mix: int = Field(0, ge=0, le=8, description="Layers in which the prompt's tokens read each other's findings with init = 'none' "
                                                "(a relation between two objects is in no single token's reading)")
    where: bool = Field(False, description="With init = 'none': compare where the prompt's tokens found their objects (relations: "
                                           "left of, above); a prior or a model brings its own")
    bind: bool = Field(False, description="With init = 'none' and where: each token also judges the one object its locating attention "
                                          "found (a colour bound to its shape); a prior or a model brings its own")
    mirror: bool = Field(True, description="Each reward is the mean over the picture and its left-right mirror image under the prompt "
                                           "with left and right swapped (the world's shapes are all left-right symmetric, so both ask the "
                                           "same question); training reads both too. On the bench's base pairs the shipped prior alone went "
                                           "from 0.842 to 0.857 with it; a reader pays two image encodings per image")
    eval_every: int = Field(50, ge=1, description="Held-out accuracy and calibration every N steps")
    seed: int = Field(0, ge=0, description="Seed of the split, the head's weights and the batches")
    min_pairs: int = Field(20, ge=2, description="Refuse to train on fewer decisive judgements than this")

    @model_validator(mode="before")
    @classmethod
    def _tune_follows_init(cls, data: Any) -> Any:
        """An empty ``tune`` (and an empty ``label_noise``, which follows it) is decided here, so the job's
        recorded recipe says what trained."""
        if isinstance(data, dict) and data.get("tune") is None:
            data = {**data, "tune": "all" if data.get("init", "prior") == "none" else "terms"}
        if isinstance(data, dict) and data.get("label_noise") is None:
            data = {**data, "label_noise": 0.1 if data.get("tune") == "terms" else 0.0}
        return data

    @model_validator(mode="after")
    def _trunk_fits_width(self) -> RewardRecipe:
        if self.trunk and self.width % 8:
            raise ValueError(f"width = {self.width} with trunk = {self.trunk}: the trunk's group norm needs a width divisible by 8")
        if self.tune == "terms" and self.init == "none":
            raise ValueError("tune = 'terms' re-weighs the parts of a starting head's reward: it needs init = 'prior' or a reward model, not 'none'")
        if self.bind and not self.where:
            raise ValueError("bind = true needs where = true: it judges what the where term's attention located")
        return self


class ScoreItem(BaseModel):
    image: str = Field(..., min_length=1, description="A project file (project-relative path) or a stored image's content hash")
    prompt: str = Field(..., min_length=1, max_length=2000)


class ScoreRecipe(RecipeBase):
    """Score images for their prompts with a reward model (the result lands in the job's summary and scores.json)."""

    kind: Literal["score"] = "score"
    reward: str = Field("models/shapes-reward-prior", description="Reward model folder (project-relative or absolute)")
    items: list[ScoreItem] = Field(default_factory=lambda: [ScoreItem(image="exports/example.png", prompt="a red circle")], min_length=1, max_length=100_000, description="Images with the prompt each was drawn for")
