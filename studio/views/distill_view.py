"""Distill: a few-step student from a teacher, with each method's cost and risk said up front.

One page like Align: the five methods (each with a line on what it costs and risks), the teacher, the student's steps and the
schedule of rounds, the data the teacher's trajectories start from, the knobs with the recipe's
help as tooltips, the estimate (run time, network passes per image of teacher and student, and
what it holds in memory: DMD2's fake network is a second model), the
commented recipe, Start. The student then appears in the Playground, sampled at its own steps
beside the teacher, with each column's latency per image.
"""

from __future__ import annotations

from typing import Any

import tomllib
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
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
    "progressive": ("Progressive distillation", "Rounds halve the steps (16 → 8 → 4): the student learns two teacher steps in one, then teaches "
                    "the next round. Stable and cheap (one teacher and one student in memory); each halving loses a little, so 1-2 steps suffer."),
    "reflow": ("Reflow → InstaFlow", "Draws the teacher's samples once (cached), straightens its paths on them, then (for 1 step) regresses a "
               "one-step student onto them, L2 then a perceptual distance (LPIPS only if its weights are cached here, else the world "
               "encoder's features). Costs the couplings up front; inherits the teacher's mistakes. Measured: 88 % at 4 steps "
               "(reflow alone), 23 % at 1 step."),
    "consistency": ("Consistency distillation (LCM-style)",
                    "The student learns to jump from any point of a teacher trajectory to its end, against a slowly moving copy of "
                    "itself; samples by jumping and re-noising, 1-4 steps. One training phase (no rounds); a third network (the target) "
                    "in memory; too few teacher points or a fast target make it drift. "
                    "Recommended: on the shipped base its 4-step student kept 96 % of the 20-step teacher's strict score at cfg 1, "
                    "4.9x faster, the best or tied-best at 1, 2, 4 and 8 steps (bench/evidence_distill.py)."),
    "dmd": ("DMD2", "Matches the student's output distribution to the teacher's through a second, fake-score network trained on the "
            "student's samples (several updates per student update): strong at 1 step, twice the memory (the fake network is a "
            "whole model with its optimizer); collapses when the two are out of balance. Measured: 96 % at 4 steps, 27 % at 1 step, "
            "2.7x consistency's training time."),
    "ladd": ("LADD", "Adversarial heads on the frozen teacher's features of re-noised latents, plus the teacher's denoising as a "
             "distillation term; no decoding. Sharp shapes; adversarial training can be unstable (watch the discriminator's accuracy). "
             "Measured: 69 % at 4 steps after 300 steps."),
}


class DistillView(RecipeForm, QWidget):
    job_started = Signal(object)

    def __init__(self, link, parent: QWidget | None = None):
        super().__init__(parent)
        self.link = link
        self.recipe: dict[str, Any] | None = None
        self.schema: RecipeSchema | None = None
        self.text = ""
        lay = QVBoxLayout(self)
        lay.addWidget(heading("Distill"))
        lay.addWidget(hint("Make a student that samples in a few steps from a teacher. The student is a new model whose card names "
                           "the teacher and its own sampler; compare them side by side in the Playground, with latency per image."))
        self.method_group = QButtonGroup(self)
        self.method_buttons: dict[str, QRadioButton] = {}
        for key, (title, about) in METHODS.items():
            b = QRadioButton(title)
            b.setToolTip(about)
            b.toggled.connect(self._method_changed)
            self.method_group.addButton(b)
            self.method_buttons[key] = b
            lay.addWidget(b)
        self.method_about = hint(METHODS["consistency"][1])
        lay.addWidget(self.method_about)
        self.form = QFormLayout()
        lay.addLayout(self.form)
        self.model = QComboBox()
        self.model.setToolTip("The teacher; the student starts from its weights")
        self.target = QComboBox()
        for n in (1, 2, 4, 8):
            self.target.addItem(f"{n} step{'s' if n > 1 else ''}", n)
        self.target.setToolTip("The student's sampling steps")
        self.dataset = QLineEdit("shapesworld")
        self.dataset.setToolTip("The dataset whose images (their curated view) the teacher's steps start from")
        self.form.addRow("Teacher", self._model_row(self.model))
        self.form.addRow("Student steps", self.target)
        self.form.addRow("Data", self.dataset)
        self.knobs: dict[str, Any] = {}
        self.shown_for: dict[str, set[str]] = {}  # knob -> the methods it belongs to
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        self._tail = self._make_tail("name of the student (optional)")
        for w in (self.model, self.target):
            w.currentIndexChanged.connect(self._target_changed)
        self.dataset.textChanged.connect(lambda *_: self._review_timer.start())
        self.method_buttons["consistency"].setChecked(True)  # the one that kept the teacher's score (bench/evidence_distill.py)

    def reload(self) -> None:
        if self.recipe is None:
            self.link.call("default_recipe", "distill", done=lambda text: self.link.call(
                "recipe_schema", "distill", done=lambda schema: self._build(text, schema)))
        self.link.call("models", done=self._fill_models)

    def _build(self, text: str, schema: dict) -> None:
        if self.recipe is not None:  # a second reload asked before the first answer came: the form is built once
            return
        self.recipe = tomllib.loads(text)
        self.schema = RecipeSchema(schema)
        r = self.recipe
        pr, co, rf, dm, la = {"progressive"}, {"consistency"}, {"reflow"}, {"dmd"}, {"ladd"}
        every = set(METHODS)
        knobs = [
            ("progressive.start_steps", "First round's student steps", ispin(*self._limits("progressive.start_steps"),
                                                                             r["progressive"]["start_steps"]), pr),
            ("progressive.steps_per_round", "Training steps per round", ispin(*self._limits("progressive.steps_per_round"),
                                                                              r["progressive"]["steps_per_round"], 50), pr),
            ("consistency.steps", "Training steps", ispin(*self._limits("consistency.steps"), r["consistency"]["steps"], 100), co),
            ("consistency.schedule", "Teacher ODE points", ispin(*self._limits("consistency.schedule"), r["consistency"]["schedule"], 4), co),
            ("consistency.ema", "Target EMA decay", spin(*self.schema.limits("consistency.ema", step=0.01), r["consistency"]["ema"], 0.01, 3), co),
            ("reflow.pairs", "Teacher couplings", ispin(*self._limits("reflow.pairs"), r["reflow"]["pairs"], 128), rf),
            ("reflow.reflow_steps", "Reflow steps", ispin(*self._limits("reflow.reflow_steps"), r["reflow"]["reflow_steps"], 100), rf),
            ("reflow.distill_steps", "One-step phase (1-step students)", ispin(*self._limits("reflow.distill_steps"),
                                                                              r["reflow"]["distill_steps"], 100), rf),
            ("reflow.l2_share", "L2 share before the perceptual distance", spin(*self.schema.limits("reflow.l2_share", step=0.05),
                                                                                 r["reflow"]["l2_share"], 0.1, 2), rf),
            ("dmd.steps", "Generator updates", ispin(*self._limits("dmd.steps"), r["dmd"]["steps"], 100), dm),
            ("dmd.fake_updates", "Fake-score updates per generator update", ispin(*self._limits("dmd.fake_updates"), r["dmd"]["fake_updates"]), dm),
            ("dmd.gan_weight", "GAN head weight (0 = off)", spin(*self.schema.limits("dmd.gan_weight", step=0.01), r["dmd"]["gan_weight"], 0.05, 3), dm),
            ("ladd.steps", "Student updates", ispin(*self._limits("ladd.steps"), r["ladd"]["steps"], 100), la),
            ("ladd.distill_weight", "Distillation weight λ", spin(*self.schema.limits("ladd.distill_weight", step=0.1), r["ladd"]["distill_weight"],
                                                                   0.5, 2), la),
            ("ladd.r1", "R1 penalty", spin(*self.schema.limits("ladd.r1", step=1e-5), r["ladd"]["r1"], 1e-4, 5), la),
            ("lr", "Learning rate", spin(*self.schema.limits("lr", step=1e-6), r["lr"], 1e-5, 6), every),
            ("data.batch_size", "Images per step", ispin(*self._limits("data.batch_size"), r["data"]["batch_size"]), every),
            ("eval_images", "ShapesEval images", ispin(*self._limits("eval_images"), r["eval_images"], 16), every),
            ("sample_every", "Previews every (steps)", ispin(*self._limits("sample_every"), r["sample_every"], 50), every),
        ]
        self._add_knobs([(path, label, box) for path, label, box, _ in knobs])
        self.shown_for = {path: which for path, _, _, which in knobs}
        self.target.setCurrentIndex(max(0, self.target.findData(r["target_steps"])))
        self._finish_build(self._tail)
        self._method_changed()

    def _fill_models(self, models: list[dict]) -> None:
        self._fill_model_combo(self.model, models, ("base", "tuned", "personalized"))

    def method(self) -> str:
        return next((k for k, b in self.method_buttons.items() if b.isChecked()), "progressive")

    def _method_changed(self, *_: object) -> None:
        m = self.method()
        self.method_about.setText(METHODS[m][1])
        for path, box in self.knobs.items():
            self.form.setRowVisible(box, m in self.shown_for[path])
        if self._built:
            self._review_timer.start()

    def _target_changed(self, *_: object) -> None:
        """Keep the first round a power-of-two multiple of the target (16 -> 8 -> 4 for 4 steps)."""
        box = self.knobs.get("progressive.start_steps")
        n = self.target.currentData() or 4
        if box is not None:
            start = box.value()
            k = max(1, round(start / n).bit_length() - 1) if start >= n else 1
            box.setValue(n * 2 ** k)
        if self._built:
            self._review_timer.start()

    def collect(self) -> dict[str, Any]:
        assert self.recipe is not None
        r = {**self.recipe, **{k: dict(self.recipe[k]) for k in ("progressive", "consistency", "reflow", "dmd", "ladd", "data")}}
        r["method"] = self.method()
        if self.model.currentData():
            r["model"] = self.model.currentData()
        r["target_steps"] = self.target.currentData()
        r["data"]["dataset"] = self.dataset.text().strip() or "shapesworld"
        r["name"] = self.name.text().strip()
        for path, box in self.knobs.items():
            where, key = (r[path.split(".")[0]], path.split(".")[1]) if "." in path else (r, path)
            where[key] = box.value()
        return r

    def _show_estimate(self, est: dict) -> None:
        rounds = f"{est['rounds']} round{'s' if est['rounds'] != 1 else ''}, " if self.method() == "progressive" else ""
        self.estimate.setText(f"{est['params'] / 1e6:.2f}M parameters · {rounds}"
                              f"{est['steps']} steps · about {duration_text(est['seconds'])} on this machine · "
                              f"sampling: {est['student_passes_per_image']} network passes per image against the teacher's "
                              f"{est['teacher_passes_per_image']} · memory about {est['memory_bytes'] / 2**20:.0f} MiB: "
                              + ", ".join(f"{what} {b / 2**20:.0f} MiB" for what, b in est["held"]))

    def start(self) -> None:
        self.submit(self.name.text().strip() or f"distill {self.method()} {self.target.currentData()}-step")
