"""What the one-page recipe forms (Align, Personalize, Distill) share: the model to start from (the
project's models, or any model folder by its path), render the recipe the widgets describe
through the backend, show its problems or its estimate and memory plan, and queue it as a job.

A form sets ``recipe`` (the default recipe as data), ``schema`` and ``estimate``, builds its name /
Review / Start row and recipe view with ``_make_tail``, and implements ``collect`` (the recipe as
the widgets say), ``_show_estimate`` and ``start``; the backend renders, validates and estimates,
so the Studio never parses a recipe's rules itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QWidget

from ..widgets import NO_MODEL, memory_text, show_error


class RecipeForm:
    recipe: dict[str, Any] | None
    text: str
    missing_model: str | None = None  # what to do when the project has no model to start from (set when the list fills)

    def _make_tail(self, name_hint: str) -> QHBoxLayout:
        """The name field, Review and Start buttons (returned as a row), the read-only recipe view and the
        timer that re-reviews once a knob settles; the form adds the row and ``recipe_text`` when built."""
        row = QHBoxLayout()
        self.name = QLineEdit()
        self.name.setPlaceholderText(name_hint)
        self.review_btn = QPushButton("Review recipe")
        self.review_btn.setToolTip("Render and check the recipe; shows the estimate")
        self.review_btn.clicked.connect(self.review)
        self.start_btn = QPushButton("Start run")
        self.start_btn.setShortcut("Ctrl+Return")
        self.start_btn.setToolTip("Queue the run (Ctrl+Return)")
        self.start_btn.clicked.connect(self.start)  # type: ignore[attr-defined]
        row.addWidget(self.name, 1)
        row.addWidget(self.review_btn)
        row.addWidget(self.start_btn)
        self.recipe_text = QPlainTextEdit()
        self.recipe_text.setReadOnly(True)
        self.recipe_text.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.recipe_text.setPlaceholderText("The recipe appears here when reviewed.")
        self._built = False
        self._review_timer = QTimer(self, singleShot=True, interval=400)  # type: ignore[call-overload]
        self._review_timer.timeout.connect(self.review)
        self.memory = QLabel("")
        self.memory.setWordWrap(True)
        self.memory.setToolTip("What training holds in memory: for a real model (SD3 / FLUX folder) the plan against this machine's "
                               "GPU or RAM, and what to turn when it does not fit")
        return row

    def _model_row(self, combo: QComboBox) -> QWidget:
        """The model list with a Folder… button beside it: a model outside the project (a local SD3 / SD3.5 or
        FLUX.1 release, another project's model) is taken by its path. Choosing a model re-reviews the recipe,
        since the estimate and the memory plan depend on it."""
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(combo, 1)
        self.folder_btn = QPushButton("Folder…")
        self.folder_btn.setToolTip("Start from a model folder outside the project: a local diffusers release of SD3 / SD3.5 or FLUX.1, "
                                   "or a model another project saved")
        self.folder_btn.clicked.connect(lambda: self._browse_model(combo))
        row.addWidget(self.folder_btn)
        combo.currentIndexChanged.connect(lambda *_: self._review_timer.start())
        return box

    def _browse_model(self, combo: QComboBox) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A model folder", str(Path.home()))  # type: ignore[arg-type]
        if folder:
            self.use_model_folder(combo, folder)

    def use_model_folder(self, combo: QComboBox, folder: str) -> None:
        """Offer ``folder`` (kept when the project's list refills) and choose it."""
        folder = str(Path(folder).resolve())
        folders: list[str] = self.__dict__.setdefault("_folders", [])
        if folder not in folders:
            folders.append(folder)
        self._add_folder_items(combo)
        combo.setCurrentIndex(combo.findData(folder))
        self._model_available(combo)

    def _add_folder_items(self, combo: QComboBox) -> None:
        for folder in self.__dict__.get("_folders", []):
            if combo.findData(folder) < 0:
                combo.addItem(f"folder: {Path(folder).name}", folder)
                combo.setItemData(combo.count() - 1, folder, Qt.ToolTipRole)

    def _model_available(self, combo: QComboBox) -> None:
        """An empty list says what to do instead of an empty choice and a failed estimate."""
        self.missing_model = NO_MODEL if combo.count() == 0 else None
        combo.setPlaceholderText("no model yet" if self.missing_model else "")
        if getattr(self, "start_btn", None) is not None:
            self.start_btn.setEnabled(self.missing_model is None)
        if self.missing_model and getattr(self, "estimate", None) is not None:
            self.estimate.setText(self.missing_model)  # type: ignore[attr-defined]

    def _limits(self, path: str, step: float = 1.0) -> tuple[Any, Any]:
        """A knob's range from the recipe's schema (integers stay integers)."""
        lo, hi = self.schema.limits(path, step=step)  # type: ignore[attr-defined]
        return (int(lo), int(hi)) if isinstance(lo, int) and isinstance(hi, int) else (lo, hi)

    def _fill_model_combo(self, combo, models: list[dict], kinds: tuple[str, ...] | None = None, default: str = "models/shapes-base") -> None:
        """The project's models (newest first; of ``kinds``, or every kind that draws) with their strict score,
        keeping the current choice; signals stay quiet while it refills."""
        current = combo.currentData()
        combo.blockSignals(True)
        combo.clear()
        for m in reversed(models):
            if (kinds is not None and m.get("kind") not in kinds) or m.get("kind") == "reward":
                continue
            overall = ((m.get("card") or {}).get("shapes_eval") or {}).get("overall")
            combo.addItem(f"#{m['id']} {m['name']} ({m['kind']})" + (f" · strict {overall:.2f}" if overall is not None else ""), m["path"])
        self._add_folder_items(combo)
        combo.setCurrentIndex(max(0, combo.findData(current or default)))
        combo.blockSignals(False)
        self._model_available(combo)

    def _add_knobs(self, knobs: list[tuple[str, str, Any]]) -> None:
        """Spin boxes for recipe fields: the schema's help as tooltip, a re-review when one moves, a form row each."""
        for path, label, box in knobs:
            box.setToolTip(self.schema.description(path))  # type: ignore[attr-defined]
            box.valueChanged.connect(lambda *_: self._review_timer.start())
            self.form.addRow(label, box)  # type: ignore[attr-defined]
            self.knobs[path] = box  # type: ignore[attr-defined]

    def _estimate_rows(self) -> None:
        self.form.addRow("Estimate", self.estimate)  # type: ignore[attr-defined]
        self.form.addRow("Memory", self.memory)  # type: ignore[attr-defined]

    def _finish_build(self, tail_row: QHBoxLayout) -> None:
        """The estimate and memory rows, then the name/Review/Start row and the recipe view under the form."""
        self._estimate_rows()
        lay = self.layout()  # type: ignore[attr-defined]
        lay.addLayout(tail_row)
        lay.addWidget(self.recipe_text, 1)
        self._built = True

    def collect(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def _show_estimate(self, est: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def review(self, then=None) -> None:
        """Render and check the recipe, then estimate it; ``then(text)`` runs on a valid recipe."""
        if self.recipe is None:
            return

        def rendered(text: str) -> None:
            self.text = text
            self.recipe_text.setPlainText(text)  # type: ignore[attr-defined]
            if self.missing_model:
                self.estimate.setText(self.missing_model)  # type: ignore[attr-defined]
                return  # nothing to estimate or start until there is a model
            self.link.call("estimate_recipe", text, done=self._estimated,  # type: ignore[attr-defined]
                           failed=self._not_estimated)
            if then:
                then(text)

        def failed(exc, details) -> None:
            detail = getattr(exc, "detail", None)
            issues = detail.get("issues", []) if isinstance(detail, dict) else []
            self.estimate.setText("the recipe has problems: " + ("; ".join(f"{i['path']}: {i['reason']}" for i in issues) or str(exc)))  # type: ignore[attr-defined]
            if then:
                show_error(self, "The recipe has problems.", self.estimate.text(), "Correct the fields named above.", details)  # type: ignore[attr-defined,arg-type]

        self.link.call("render_recipe", self.collect(), done=rendered, failed=failed)  # type: ignore[attr-defined]

    def _estimated(self, est: dict) -> None:
        self._show_estimate(est)
        self.memory.setText(memory_text(est.get("memory")))

    def _not_estimated(self, exc: Exception, details: str) -> None:
        self.estimate.setText(f"no estimate: {exc}")  # type: ignore[attr-defined]
        self.memory.setText("")

    def submit(self, name: str) -> None:
        """Review, then queue the recipe as a job named ``name``; ``job_started`` carries the new job."""
        def go(text: str) -> None:
            self.link.call("create_job", text, name, done=self.job_started.emit,  # type: ignore[attr-defined]
                           failed=lambda e, d: show_error(self, "The run did not start.", str(e), details=d))  # type: ignore[arg-type]

        self.review(then=go)
