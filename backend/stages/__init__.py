"""Stages: every kind of job, declared once (see ``registry.py``).

The built-in stages are listed here; each lives in its own module of this package, which holds
the runner a worker calls. Importing this package registers them, then any plugin stages named in
``SIGNAL_STAGES``.
"""

from backend.recipes import ImportRecipe, PretrainRecipe, SampleRecipe, WorldRecipe
from backend.recipes.align import AlignRecipe
from backend.recipes.distill import DistillRecipe
from backend.recipes.pairs import PairsRecipe
from backend.recipes.personalize import PersonalizeRecipe
from backend.recipes.reward import RewardRecipe, ScoreRecipe

from .registry import Stage, all_stages, get_stage, load_plugins, register_stage

register_stage(Stage(
    kind="world", title="Render ShapesWorld", page="Data", order=10, recipe=WorldRecipe, runner="backend.stages.world:run",
    produces="dataset", summary="Render the embedded world's scenes with captions, import and curate them.",
    evaluation="the import and curation reports (items kept, duplicates, flagged)",
))
register_stage(Stage(
    kind="import", title="Import images", page="Data", order=11, recipe=ImportRecipe, runner="backend.stages.importing:run",
    produces="dataset", summary="Import folders or archives of images with captions into a dataset.",
    evaluation="the import report: every file kept, skipped or rejected, with the reason",
))
register_stage(Stage(
    kind="pretrain", title="Pretrain", page="Pretrain", order=20, recipe=PretrainRecipe, runner="backend.stages.pretrain:run",
    produces="model", summary="Train a flow-matching model from scratch with a curriculum and a chosen allocation of training signal.",
    evaluation="strict ShapesEval with its shape-swap control, FD to true renders, a labelled sample grid",
))
register_stage(Stage(
    kind="pairs", title="Generate pairs", page="Rate", order=30, recipe=PairsRecipe, runner="backend.stages.pairs:run",
    produces="image pairs queued for rating", summary="Images of the same prompt from one model (different seeds) or two, paired for rating.",
    evaluation="ratings: the tally, the share of left picks and agreement on repeated pairs",
))
register_stage(Stage(
    kind="reward", title="Train a reward model", page="Rate", order=31, recipe=RewardRecipe, runner="backend.stages.reward:run",
    produces="a reward model", summary="A Bradley-Terry reward head on the frozen image encoder and MiniLM, learned from the ratings.",
    evaluation="held-out pairwise accuracy (split by prompt) and calibration error, against chance 0.5",
))
register_stage(Stage(
    kind="align", title="Align", page="Align", order=40, recipe=AlignRecipe, runner="backend.stages.align:run",
    produces="a tuned model", summary="Tune a model on your ratings: Diffusion-DPO against the starting model as the reference.",
    evaluation="held-out implicit accuracy (split by prompt) as it trains, against chance 0.5",
))
register_stage(Stage(
    kind="personalize", title="Personalize", page="Personalize", order=50, recipe=PersonalizeRecipe, runner="backend.stages.personalize:run",
    produces="a personalization (LoRA adapter)", summary="Teach a model one subject from a few pictures (DreamBooth), held to its class "
    "by prior preservation.",
    evaluation="subject fidelity against the references, prompt fidelity in new contexts, class preservation (strict ShapesEval on the "
    "class) and leakage, base vs personalized",
))
register_stage(Stage(
    kind="distill", title="Distill", page="Distill", order=60, recipe=DistillRecipe, runner="backend.stages.distill:run",
    produces="a few-step student model", summary="Distill a teacher into a student that samples in a few steps (progressive distillation).",
    evaluation="strict ShapesEval of the student at its steps and the per-image latency of student and teacher",
))
register_stage(Stage(
    kind="score", title="Score images", page="Playground", order=91, recipe=ScoreRecipe, runner="backend.stages.score:run",
    produces="rewards", summary="Score images for their prompts with a reward model (the shipped prior or one trained on your ratings).",
    evaluation="the scores, in the job's summary and scores.json",
))
register_stage(Stage(
    kind="sample", title="Sample", page="Playground", order=90, recipe=SampleRecipe, runner="backend.stages.sample:run",
    produces="images", summary="Images from a model, a run or a checkpoint for a list of prompts and seeds.",
    evaluation="`eval shapes` on the images when the prompts come from the ShapesEval set",
))

load_plugins()

__all__ = ["Stage", "all_stages", "get_stage", "load_plugins", "register_stage"]
