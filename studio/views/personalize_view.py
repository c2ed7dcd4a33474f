"""Personalize: teach a model one subject from a few pictures, with what could go wrong said up front.

One page, top to bottom in the order a person decides: the subject's pictures (a dataset of the
project; pictures dropped on the strip or picked with "Add pictures…" are imported into it by an
ordinary import job), shown as thumbnails with their problems flagged (too few, duplicates, too
small for the training size); the identifier and class noun, with the caption every picture gets;
prior preservation with a sentence on what it prevents, its kind and the class-image count; the
LoRA rank with the run's estimate; steps and rate; the commented recipe; Start. The backend renders,
validates and estimates the recipe; the run streams its context-prompt previews to Runs, and the
personalization joins the Playground, where a LoRA scale slider runs it from the base to as trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomllib
from PySide6.QtCore import QSize, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..recipe_schema import RecipeSchema
from ..widgets import alive, duration_text, heading, hint, pixmap_from_bytes, show_error
from .pretrain_wizard import ispin, spin
from .recipe_form import RecipeForm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
PRIOR_ABOUT = ("Keeps '{class_prompt}' as the base draws it: without it, a few pictures captioned 'a {token} {cls}' teach the "
               "model that every {cls} is your subject. Class images are drawn once by the base and reused; the frozen-base kind needs none.")


def subject_problems(items: list[dict], size: int) -> list[str]:
    """What is wrong with a set of subject pictures, in words (empty = nothing)."""
    out = []
    if len(items) < 3:
        out.append(f"too few pictures: {len(items)} (DreamBooth needs 3-5 at least)")
    seen: dict[str, int] = {}
    for it in items:
        seen[it["hash"]] = seen.get(it["hash"], 0) + 1
    dupes = sum(n - 1 for n in seen.values() if n > 1) + sum(1 for it in items if any(
        str(f).startswith(("duplicate_of", "near_duplicate_of")) for f in it.get("flags") or []))
    if dupes:
        out.append(f"{dupes} duplicate picture(s): they add nothing and weigh their pose twice")
    small = [it for it in items if min(it["width"], it["height"]) < size]
    if small:
        out.append(f"{len(small)} picture(s) smaller than the training size {size} px: they will be upscaled and blurry")
    return out


class DropStrip(QListWidget):
    """The subject's thumbnails in a row; files or folders dropped on it are handed on for import."""

    dropped = Signal(list)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setViewMode(QListView.IconMode)
        self.setIconSize(QSize(72, 72))
        self.setGridSize(QSize(84, 96))
        self.setFlow(QListView.LeftToRight)
        self.setWrapping(False)
        self.setFixedHeight(106)
        self.setAcceptDrops(True)
        self.setToolTip("The subject's pictures. Drop image files or a folder here to add them.")

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt naming
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.dropped.emit(paths)
            event.acceptProposedAction()


class PersonalizeView(RecipeForm, QWidget):
    job_started = Signal(object)

    def __init__(self, link, parent: QWidget | None = None):
        super().__init__(parent)
        self.link = link
        self.recipe: dict[str, Any] | None = None
        self.schema: RecipeSchema | None = None
        self.text = ""
        self.items: list[dict] = []
        self._import_job: int | None = None
        self._strip_gen = 0
        lay = QVBoxLayout(self)
        lay.addWidget(heading("Personalize"))
        lay.addWidget(hint("Teach a model one subject from a few pictures (DreamBooth with a LoRA). The result is a small adapter "
                           "on its parent model; see it in new scenes in the Playground, side by side with the base."))
        top = QHBoxLayout()
        self.dataset = QComboBox()
        self.dataset.setEditable(True)
        self.dataset.setToolTip("The dataset holding the subject's pictures (the demo imports the ShapesWorld subject as 'subject')")
        self.dataset.currentTextChanged.connect(lambda *_: self._load_items())
        self.add_btn = QPushButton("Add pictures…")
        self.add_btn.setToolTip("Import image files into this dataset (or drop them on the strip below)")
        self.add_btn.clicked.connect(self._pick_files)
        top.addWidget(QLabel("Subject pictures"))
        top.addWidget(self.dataset, 1)
        top.addWidget(self.add_btn)
        lay.addLayout(top)
        self.strip = DropStrip()
        self.strip.dropped.connect(self.import_paths)
        lay.addWidget(self.strip)
        self.problems = QLabel("")
        self.problems.setWordWrap(True)
        lay.addWidget(self.problems)

        self.form = QFormLayout()
        lay.addLayout(self.form)
        self.model = QComboBox()
        self.model.setToolTip("The model to personalize; it stays as it is, the adapter goes on top")
        self.token = QLineEdit("sks")
        self.token.setToolTip("A rare word that will mean your subject; use it in prompts ('a sks circle on a striped background')")
        self.class_noun = QLineEdit("circle")
        self.class_noun.setToolTip("What the subject is: the class the prior holds in place")
        self.caption = QLabel("")
        self.prior = QCheckBox("Prior preservation")
        self.prior.setChecked(True)
        self.prior_kind = QComboBox()
        self.prior_kind.addItem("class images the base draws", "class_images")
        self.prior_kind.addItem("the frozen base's prediction (no images)", "frozen")
        self.prior_about = hint("")
        self.class_count = ispin(1, 5000, 100, 50)
        self.class_count.setToolTip("How many class images the base draws (100-300 is usual); drawn once, reused by later runs")
        self.form.addRow("Starting model", self._model_row(self.model))
        self.form.addRow("Identifier", self.token)
        self.form.addRow("Class noun", self.class_noun)
        self.form.addRow("Every picture is captioned", self.caption)
        self.form.addRow(self.prior, self.prior_kind)
        self.form.addRow("", self.prior_about)
        self.form.addRow("Class images", self.class_count)
        self.knobs: dict[str, Any] = {}
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        for w in (self.token, self.class_noun):
            w.textChanged.connect(self._words_changed)
        self.prior.toggled.connect(self._prior_changed)
        self.prior_kind.currentIndexChanged.connect(self._prior_changed)
        self.class_count.valueChanged.connect(lambda *_: self._review_timer.start())

        self._tail = self._make_tail("name of the personalization (optional)")

    # --- loading ---------------------------------------------------------------------------------

    def reload(self) -> None:
        """The default recipe and schema (once), the models, the datasets and the subject's pictures."""
        if self.recipe is None:
            self.link.call("default_recipe", "personalize", done=lambda text: self.link.call(
                "recipe_schema", "personalize", done=lambda schema: self._build(text, schema)))
        self.link.call("models", done=self._fill_models)
        self.link.call("datasets", done=self._fill_datasets)

    def _build(self, text: str, schema: dict) -> None:
        if self.recipe is not None:  # a second reload asked before the first answer came: the form is built once
            return
        self.recipe = tomllib.loads(text)
        self.schema = RecipeSchema(schema)
        r = self.recipe
        knobs = [
            ("prior.weight", "Prior weight λ", spin(*self.schema.limits("prior.weight", step=0.1), r["prior"]["weight"], 0.1, 2)),
            ("lora.rank", "LoRA rank (0 = every weight)", ispin(*self._limits("lora.rank"), r["lora"]["rank"], 4)),
            ("steps", "Steps", ispin(*self._limits("steps"), r["steps"], 50)),
            ("lr", "Learning rate", spin(*self.schema.limits("lr", step=1e-5), r["lr"], 1e-4, 5)),
            ("batch_size", "Pictures per step", ispin(*self._limits("batch_size"), r["batch_size"])),
            ("sample_every", "Previews every (steps)", ispin(*self._limits("sample_every"), r["sample_every"], 10)),
            ("eval_images", "Images per prompt (figures)", ispin(*self._limits("eval_images"), r["eval_images"], 4)),
        ]
        self._add_knobs(knobs)
        self.class_count.setValue(r["prior"]["class_images"])
        self.token.setText(r["token"])
        self.class_noun.setText(r["class_noun"])
        self.dataset.setCurrentText(r["dataset"])
        self._finish_build(self._tail)
        self._words_changed()
        self._prior_changed()

    def _fill_models(self, models: list[dict]) -> None:
        self._fill_model_combo(self.model, models, ("base", "tuned"))

    def _fill_datasets(self, datasets: list[dict]) -> None:
        typed = self.dataset.currentText() or "subject"
        self.dataset.blockSignals(True)
        self.dataset.clear()
        for d in datasets:
            self.dataset.addItem(d["name"])
        self.dataset.setCurrentText(typed)
        self.dataset.blockSignals(False)
        self._load_items()

    def _load_items(self) -> None:
        name = self.dataset.currentText().strip()
        if not name:
            return

        def got(page: dict, asked=name) -> None:
            if asked != self.dataset.currentText().strip() or not alive(self):
                return
            self._show_items(page.get("items", []))

        self.link.call("items", name, 0, 200, done=got, failed=lambda e, d: self._show_items([]))

    def _show_items(self, items: list[dict]) -> None:
        self.items = items
        self.strip.clear()
        self._strip_gen += 1  # thumbnails still on their way belong to the strip as it was

        def got(data: bytes, row: int, gen: int) -> None:
            if gen == self._strip_gen and alive(self.strip) and self.strip.item(row) is not None:
                self.strip.item(row).setIcon(QIcon(pixmap_from_bytes(data)))

        for row, it in enumerate(items):
            entry = QListWidgetItem(f"#{it['id']}")
            entry.setToolTip(f"{it.get('caption') or ''}\n{it['width']}x{it['height']}")
            self.strip.addItem(entry)
            self.link.call("thumb", it["hash"], done=lambda data, row=row, gen=self._strip_gen: got(data, row, gen))
        size = int((self.recipe or {}).get("sampler", {}).get("width", 64))
        problems = subject_problems(items, size)
        if not items:
            self.problems.setText(f"<span style='color:#c0392b'>No pictures in '{self.dataset.currentText()}' yet: drop the subject's "
                                  "pictures on the strip above or use Add pictures…</span>")
        elif problems:
            self.problems.setText("<span style='color:#c0392b'>" + "<br>".join(problems) + "</span>")
        else:
            self.problems.setText(f"<span style='color:#2e7d32'>{len(items)} pictures, no problems found</span>")

    # --- importing -------------------------------------------------------------------------------

    def _pick_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Pictures of the subject", "", "Images (*.png *.jpg *.jpeg *.webp *.bmp)")
        if files:
            self.import_paths(files)

    def import_paths(self, paths: list[str]) -> None:
        """Import dropped or picked files and folders into the subject's dataset (an ordinary import job)."""
        usable = [p for p in paths if Path(p).is_dir() or Path(p).suffix.lower() in IMAGE_SUFFIXES]
        if not usable:
            show_error(self, "Nothing to import.", "Drop image files (png, jpg, webp, bmp) or a folder of them.")
            return
        name = self.dataset.currentText().strip() or "subject"
        text = f'kind = "import"\ndataset = {json.dumps(name)}\nsources = {json.dumps(usable)}\ncategory_from = "none"\n'

        def started(job: dict) -> None:
            self._import_job = job["id"]
            self.problems.setText(f"importing {len(usable)} item(s) into '{name}'…")

        self.link.call("create_job", text, f"import {name}", done=started,
                       failed=lambda e, d: show_error(self, "The import did not start.", str(e), details=d))

    def on_jobs(self, jobs: list[dict]) -> None:
        """The import this page started has finished: show the new pictures."""
        if self._import_job is None:
            return
        job = next((j for j in jobs if j["id"] == self._import_job), None)
        if job and job["state"] in ("done", "failed", "stopped"):
            self._import_job = None
            if job["state"] != "done":
                show_error(self, "The import failed.", job.get("error") or "", "See the job's log in Runs.")
            self.link.call("datasets", done=self._fill_datasets)

    # --- editing ---------------------------------------------------------------------------------

    def _words_changed(self) -> None:
        token, cls = self.token.text().strip() or "sks", self.class_noun.text().strip() or "circle"
        self.caption.setText(f"'a {token} {cls}' · class prompt 'a {cls}'")
        self._prior_changed()

    def _prior_changed(self, *_: object) -> None:
        on = self.prior.isChecked()
        self.prior_kind.setEnabled(on)
        kind = self.prior_kind.currentData()
        self.form.setRowVisible(self.class_count, on and kind == "class_images")
        token, cls = self.token.text().strip() or "sks", self.class_noun.text().strip() or "circle"
        self.prior_about.setText(PRIOR_ABOUT.format(token=token, cls=cls, class_prompt=f"a {cls}") if on else
                                 f"Off: the model learns only 'a {token} {cls}'; expect 'a {cls}' to start looking like the subject.")
        if "prior.weight" in self.knobs:
            self.form.setRowVisible(self.knobs["prior.weight"], on)
        if self._built:
            self._review_timer.start()

    def collect(self) -> dict[str, Any]:
        assert self.recipe is not None
        r = {**self.recipe, **{k: dict(self.recipe[k]) for k in ("prior", "lora")}}
        if self.model.currentData():
            r["model"] = self.model.currentData()
        r["dataset"] = self.dataset.currentText().strip() or "subject"
        r["token"] = self.token.text().strip() or "sks"
        r["class_noun"] = self.class_noun.text().strip() or "circle"
        r["prior"]["mode"] = self.prior_kind.currentData() if self.prior.isChecked() else "none"
        r["prior"]["class_images"] = self.class_count.value()
        r["name"] = self.name.text().strip()
        for path, box in self.knobs.items():
            where, key = (r[path.split(".")[0]], path.split(".")[1]) if "." in path else (r, path)
            where[key] = box.value()
        return r

    def _show_estimate(self, est: dict) -> None:
        rank = self.knobs["lora.rank"].value() if "lora.rank" in self.knobs else 0
        what = f"LoRA rank {rank}" if rank else "every weight trains"
        drawn = f" · {est['class_images']} class images drawn first (once)" if est.get("class_images") else ""
        self.estimate.setText(f"{est['params'] / 1e6:.2f}M parameters, {what} · {est['steps']} steps{drawn} · about "
                              f"{duration_text(est['seconds'])} on this machine, measurements included")

    def start(self) -> None:
        problems = subject_problems(self.items, int((self.recipe or {}).get("sampler", {}).get("width", 64)))
        if len(self.items) < 3:
            show_error(self, "Not enough pictures of the subject.", problems[0] if problems else "", "Add 3-5 pictures first.")
            return
        self.submit(self.name.text().strip() or f"personalize {self.token.text().strip() or 'sks'}")
