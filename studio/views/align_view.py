"""Align: tune a model towards what is wanted, with the method in plain words and its cost up front.

One page rather than a multi-page wizard: a method (each with a line on what it does and what it
costs), the starting model, the data it learns from (a reward for Flow-GRPO, the project's
ratings for Diffusion-DPO), the knobs that matter with the recipe's own help text as tooltips, an
estimate of the run's duration, the commented recipe, and Start. Like the pretraining wizard it
edits the recipe as plain data and lets the backend render, validate and estimate it; the run
then shows in Runs (the Method tab plots its reward, implicit accuracy, KL and advantage
collapse beside the loss and strict ShapesEval), and the tuned model joins the Playground with
its parent named.
"""

from __future__ import annotations

from typing import Any

import tomllib
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QLabel,
    QLineEdit,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ..recipe_schema import RecipeSchema
from ..widgets import duration_text, heading, hint
from .pretrain_wizard import ispin, spin
from .recipe_form import RecipeForm

METHODS = {
    "grpo": ("Flow-GRPO — reward tuning",
             "Draws a group of images for each training prompt, scores them with a reward and pushes the model towards the "
             "better ones of each group, held near the starting model by a KL term. Needs no ratings when the reward is the "
             "detector rule. The costliest: every step samples its groups and trains through each of their SDE steps."),
    "dpo": ("Diffusion-DPO — learn from your ratings",
            "Learns straight from the pairs you rated (winner over loser), held to the starting model by β; no reward model. "
            "Cheap per step (each pair once through the model and the reference); needs at least 8 decisive judgements "
            "(a or b) on several prompts."),
    "refl": ("ReFL — climb a reward model",
             "Samples most of the way without gradients, takes one late step with them, and follows the reward model's gradient "
             "through that step's image estimate, with the flow loss on your dataset as a regulariser. Fast per step; needs a "
             "reward model (it can chase that model's blind spots: watch the samples)."),
    "sft": ("SFT — more of what won",
            "Plain flow-matching training on the images that won your ratings (or on a dataset view: continued training), at a "
            "low learning rate. The cheapest and the gentlest; it only imitates, it never learns what lost."),
}
ALL = set(METHODS)
# Flow-GRPO's rollouts move the policy far less per update than DPO's pairs: on the shipped base 1e-4 gained
# (bench/evidence_alignment.py) where the recipe's 1e-5 barely moves it; the others keep the recipe's default
METHOD_LR = {"grpo": 1e-4}
REWARDS = [("rule", "the detector rule: share of the prompt's promises kept (1 = exactly the promised objects)"),
           ("strict", "the detector rule, all or nothing (1 on a strict pass)"),
           ("rule=1, relation=2", "the detector rule, with a kept spatial relation ('left of', 'above') worth more than every other "
                                  "promise together: the rule alone counts it as one promise among several")]


class AlignView(RecipeForm, QWidget):
    job_started = Signal(object)

    def __init__(self, link, parent: QWidget | None = None):
        super().__init__(parent)
        self.link = link
        self.recipe: dict[str, Any] | None = None
        self.schema: RecipeSchema | None = None
        self.text = ""
        lay = QVBoxLayout(self)
        lay.addWidget(heading("Align"))
        lay.addWidget(hint("Tune a model so it draws more of what is wanted. Every run saves a new model whose card names its parent, "
                           "method and data; compare it with its parent in the Playground (same seeds)."))
        grid = QGridLayout()
        self.method_group = QButtonGroup(self)
        self.method_buttons: dict[str, QRadioButton] = {}
        for i, (key, (title, _)) in enumerate(METHODS.items()):
            b = QRadioButton(title)
            self.method_group.addButton(b)
            self.method_buttons[key] = b
            grid.addWidget(b, i // 2, i % 2)
            b.toggled.connect(self._method_changed)
        grid.setColumnStretch(2, 1)
        lay.addLayout(grid)
        self.method_about = hint("")
        lay.addWidget(self.method_about)
        self.form = QFormLayout()
        lay.addLayout(self.form)
        self.model = QComboBox()
        self.model.setToolTip("The model to tune; it is also the reference the run is held to")
        self.reward = QComboBox()
        self.reward.setEditable(True)
        self.reward.setToolTip("What Flow-GRPO rewards: a rule, one promise of it ('relation', 'count', 'color', 'size', 'object', "
                               "'background', 'exact'), a reward model trained from your ratings, or several weighted, "
                               "e.g. 'rule=1, relation=2' or 'rule=1, models/reward-3=0.5'")
        self.refl_reward = QComboBox()
        self.refl_reward.setToolTip("The reward model ReFL climbs (trained on the Rate page's judgements, or the shipped prior)")
        self.source = QComboBox()
        self.source.addItem("the winners of my ratings", "winners")
        self.source.addItem("a dataset view (continued training)", "dataset")
        self.source.setToolTip("What SFT trains on")
        self.dataset = QLineEdit("shapesworld")
        self.dataset.setToolTip("The dataset (its curated view) for SFT's continued training and ReFL's regulariser")
        self.ratings = QLabel("")
        self.rater = QLineEdit()
        self.rater.setPlaceholderText("every rater")
        self.rater.setToolTip("Learn from this rater's judgements only; empty = everyone's")
        self.form.addRow("Reward", self.reward)
        self.form.addRow("Reward model", self.refl_reward)
        self.form.addRow("Train on", self.source)
        self.form.addRow("Dataset", self.dataset)
        self.form.addRow("Ratings", self.ratings)
        self.form.addRow("Rater", self.rater)
        self.knobs: dict[str, Any] = {}
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        buttons = self._make_tail("name of the tuned model (optional)")
        self.form.insertRow(0, "Starting model", self._model_row(self.model))
        self._lr_method = "dpo"  # the recipe's default method, whose rate the default recipe carries
        self._tail = (buttons, self.estimate, self.recipe_text)

    # --- loading ---------------------------------------------------------------------------------

    def reload(self) -> None:
        """Fetch the default recipe and its schema (once), the project's models and the ratings tally."""
        if self.recipe is None:
            self.link.call("default_recipe", "align", done=lambda text: self.link.call(
                "recipe_schema", "align", done=lambda schema: self._build(text, schema)))
        self.link.call("models", done=self._fill_models)
        self.link.call("rating_stats", done=self._fill_ratings)

    def _build(self, text: str, schema: dict) -> None:
        if self.recipe is not None:  # a second reload asked before the first answer came: the form is built once
            return
        self.recipe = tomllib.loads(text)
        self.schema = RecipeSchema(schema)
        r, g = self.recipe, self.recipe["grpo"]
        f = self.recipe["refl"]
        knobs = [
            ("steps", "Steps", ispin(*self._limits("steps"), r["steps"], 50), ALL),
            ("lr", "Learning rate", spin(*self._limits("lr", 1e-6), r["lr"], 1e-5, 6), ALL),
            ("grpo.kl", "KL weight β", spin(*self._limits("grpo.kl", 1e-3), g["kl"], 0.01, 3), {"grpo"}),
            ("grpo.group_size", "Images per prompt (group)", ispin(*self._limits("grpo.group_size"), g["group_size"]), {"grpo"}),
            ("grpo.prompts_per_step", "Prompts per step", ispin(*self._limits("grpo.prompts_per_step"), g["prompts_per_step"]), {"grpo"}),
            ("grpo.sde_steps", "SDE steps per rollout", ispin(*self._limits("grpo.sde_steps"), g["sde_steps"]), {"grpo"}),
            ("grpo.focus", "Focus on prompts still learning", spin(*self._limits("grpo.focus", 0.25), g["focus"], 0.25, 2), {"grpo"}),
            ("beta", "β (closeness to the start)", spin(*self._limits("beta", 1.0), r["beta"], 10.0, 1), {"dpo"}),
            ("batch_size", "Rated pairs per step", ispin(*self._limits("batch_size"), r["batch_size"]), {"dpo", "sft"}),
            ("refl.batch_size", "Images per step", ispin(*self._limits("refl.batch_size"), f["batch_size"]), {"refl"}),
            ("refl.late", "Gradient step among the last", ispin(*self._limits("refl.late"), f["late"]), {"refl"}),
            ("refl.regulariser", "Flow regulariser weight", spin(*self._limits("refl.regulariser", 0.01), f["regulariser"], 0.1, 2), {"refl"}),
            ("data.batch_size", "Dataset images per step", ispin(*self._limits("data.batch_size"), self.recipe["data"]["batch_size"]), {"refl", "sft"}),
            ("lora_rank", "LoRA rank (0 = every weight)", ispin(*self._limits("lora_rank"), r["lora_rank"], 4), ALL),
            ("eval_images", "ShapesEval images", ispin(*self._limits("eval_images"), r["eval_images"], 16), ALL),
            ("eval_every", "Evaluate every", ispin(*self._limits("eval_every"), r["eval_every"], 10), ALL),
        ]
        for path, label, box, which in knobs:
            box.setToolTip(self.schema.description(path))
            box.valueChanged.connect(lambda *_: self._review_timer.start())
            self.form.addRow(label, box)
            self.knobs[path] = (box, which)
        self._estimate_rows()
        lay = self.layout()
        lay.addLayout(self._tail[0])
        lay.addWidget(self._tail[2], 1)
        self.source.currentIndexChanged.connect(self._method_changed)
        self.method_buttons["grpo"].setChecked(True)  # needs no ratings: the method a new project can run first
        self._method_changed()
        self._built = True
        self.review()

    def _fill_models(self, models: list[dict]) -> None:
        self._fill_model_combo(self.model, models)
        typed = self.reward.currentText()
        self.reward.clear()
        for key, about in REWARDS:
            self.reward.addItem(key)
            self.reward.setItemData(self.reward.count() - 1, about, Qt.ToolTipRole)
        chosen = self.refl_reward.currentData()
        self.refl_reward.clear()
        for m in reversed([m for m in models if m.get("kind") == "reward"]):
            self.reward.addItem(m["path"])
            self.reward.addItem(f"rule=1, {m['path']}=0.5")
            self.refl_reward.addItem(f"#{m['id']} {m['name']}", m["path"])
        self.reward.setCurrentText(typed or "rule")
        self.refl_reward.setCurrentIndex(max(0, self.refl_reward.findData(chosen)))

    def _fill_ratings(self, stats: dict) -> None:
        tally = stats.get("tally", {})
        decisive = tally.get("a", 0) + tally.get("b", 0)
        self.ratings.setText(f"{decisive} decisive judgements (a or b) · {tally.get('tie', 0)} ties and {tally.get('both_bad', 0)} "
                             "'both bad' are left out" + ("" if decisive >= 8 else " — rate at least 8 pairs on the Rate page first"))

    # --- editing ---------------------------------------------------------------------------------

    def method(self) -> str:
        return next((k for k, b in self.method_buttons.items() if b.isChecked()), "grpo")

    def _method_changed(self, *_: object) -> None:
        m = self.method()
        lr = self.knobs.get("lr", (None,))[0]
        if lr is not None and self.recipe is not None:  # a rate the user has not touched follows the method's measured default
            was = METHOD_LR.get(self._lr_method, self.recipe["lr"])
            if abs(lr.value() - was) < 1e-12:
                lr.setValue(METHOD_LR.get(m, self.recipe["lr"]))
            self._lr_method = m
        self.method_about.setText(METHODS[m][1])
        shown = {self.reward: m == "grpo", self.refl_reward: m == "refl", self.source: m == "sft",
                 self.dataset: m == "refl" or (m == "sft" and self.source.currentData() == "dataset"),
                 self.ratings: m == "dpo" or (m == "sft" and self.source.currentData() == "winners"),
                 self.rater: m == "dpo" or (m == "sft" and self.source.currentData() == "winners")}
        for widget, visible in shown.items():
            self.form.setRowVisible(widget, visible)
        for box, which in self.knobs.values():
            self.form.setRowVisible(box, m in which)
        if self._built:
            self._review_timer.start()

    def collect(self) -> dict[str, Any]:
        """The recipe as the widgets say."""
        assert self.recipe is not None
        r = {**self.recipe, **{k: dict(self.recipe[k]) for k in ("grpo", "refl", "data")}}
        r["method"] = self.method()
        if self.model.currentData():
            r["model"] = self.model.currentData()
        r["grpo"]["rewards"] = self.reward.currentText().strip() or "rule"
        if self.refl_reward.currentData():
            r["refl"]["reward"] = self.refl_reward.currentData()
        r["data"]["source"] = self.source.currentData()
        r["data"]["dataset"] = self.dataset.text().strip() or "shapesworld"
        rater = self.rater.text().strip()
        if rater:
            r["rater"] = rater
        else:
            r.pop("rater", None)
        r["name"] = self.name.text().strip()
        for path, (box, _) in self.knobs.items():
            where, key = (r[path.split(".")[0]], path.split(".")[1]) if "." in path else (r, path)
            where[key] = box.value()
        return r

    def _show_estimate(self, est: dict) -> None:
        self.estimate.setText(f"{est['params'] / 1e6:.2f}M parameters · {est['steps']} steps · {est['images']} images through the model · "
                              f"about {duration_text(est['seconds'])} on this machine")

    def start(self) -> None:
        self.submit(self.name.text().strip() or f"align {self.method()}")
